"""Damaged checkpoints: restore falls back to the newest intact step and moves the damaged one
aside (never deletes it); with none intact, one clear error. Stop agreement on one process."""

import glob
import logging
import os
import signal

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from seamless_jax import workdir as workdir_lib
from seamless_jax.train import checkpoint as ckpt_lib


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict


def _state(step: int) -> _State:
  return _State(step=jnp.asarray(step, jnp.int32),
                params={"w": jnp.full((64, 64), float(step)), "b": jnp.arange(8.0) + step})


def _data_iterator():
  return iter(grain.MapDataset.range(1000).to_iter_dataset())


def _workdir_with_steps(tmp_path, steps=(1, 2, 3)) -> str:
  """Saves ``steps``; the data iterator has read ``step`` elements at each saved step."""
  workdir = str(tmp_path / "run")
  ckpt = ckpt_lib.Checkpointer(workdir, keep=5, async_save=False)
  it = _data_iterator()
  read = 0
  for step in steps:
    while read < step:
      next(it)
      read += 1
    ckpt.save(step, _state(step), it, force=True)
  ckpt.close()
  return workdir


def _restore_latest(workdir):
  ckpt = ckpt_lib.Checkpointer(workdir, keep=5, async_save=False)
  it = _data_iterator()
  try:
    step, state = ckpt.restore_latest(jax.eval_shape(lambda: _state(0)), it)
    return step, state, (next(it) if step is not None else None), ckpt.all_steps()
  finally:
    ckpt.close()


def _truncate_largest_file(step_dir: str) -> None:
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(f) and not os.path.basename(f).startswith("_")]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 3)


@pytest.mark.parametrize("damage", ["truncate_a_file", "delete_METADATA"])
def test_damaged_newest_step_falls_back_and_is_moved_aside(tmp_path, damage, caplog):
  workdir = _workdir_with_steps(tmp_path)
  newest = os.path.join(workdir, "checkpoints", "3")
  if damage == "truncate_a_file":
    _truncate_largest_file(newest)
  else:
    os.remove(os.path.join(newest, "state", "_METADATA"))
  with caplog.at_level(logging.WARNING, logger="absl"):  # whatever earlier tests set it to
    step, state, next_element, steps_after = _restore_latest(workdir)
  assert step == 2 and int(state.step) == 2
  np.testing.assert_array_equal(state.params["w"], np.full((64, 64), 2.0))
  assert next_element == 2  # the data iterator continues from step 2's position
  assert steps_after == [1, 2]  # orbax no longer lists the damaged step...
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "damaged", "3", "state"))  # kept
  assert workdir_lib.saved_steps(workdir) == [1, 2]
  warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert len(warnings) == 1 and "step 3" in warnings[0] and "damaged/3" in warnings[0]
  assert "\n" not in warnings[0]


def test_second_damage_of_the_same_step_keeps_both_copies(tmp_path):
  workdir = _workdir_with_steps(tmp_path)
  os.makedirs(os.path.join(workdir, "checkpoints", "damaged", "3"))  # from an earlier failure
  os.remove(os.path.join(workdir, "checkpoints", "3", "state", "_METADATA"))
  assert _restore_latest(workdir)[0] == 2
  moved = os.listdir(os.path.join(workdir, "checkpoints", "damaged"))
  assert len(moved) == 2 and "3" in moved and any(m.startswith("3-") for m in moved)


def test_no_intact_step_is_one_clear_error_and_moves_nothing(tmp_path):
  workdir = _workdir_with_steps(tmp_path, steps=(1, 2))
  for step in ("1", "2"):
    os.remove(os.path.join(workdir, "checkpoints", step, "state", "_METADATA"))
  with pytest.raises(ckpt_lib.CheckpointError) as info:
    _restore_latest(workdir)
  message = str(info.value)
  assert "\n" not in message and "step 2" in message and "checkpoints" in message
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


def test_empty_workdir_restores_nothing(tmp_path):
  assert workdir_lib.saved_steps(str(tmp_path / "new")) == []
  assert _restore_latest(str(tmp_path / "new"))[:2] == (None, None)


def test_any_process_on_one_process_is_the_local_value():
  assert ckpt_lib.any_process(True, False) == (True, False)


def test_first_ctrl_c_requests_a_stop_and_the_second_aborts():
  before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
  stop = ckpt_lib.StopSignal()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100):  # Python runs the handler between bytecodes of the main thread
      if stop.requested:
        break
    assert stop.requested and stop.signum == signal.SIGINT  # no KeyboardInterrupt so far
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      for _ in range(100):
        pass
  finally:
    stop.close()
  assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_requests_a_stop_and_repeats_are_harmless():
  stop = ckpt_lib.StopSignal()
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):
      pass
    assert stop.requested and stop.signum == signal.SIGTERM
  finally:
    stop.close()


def test_small_replicated_arrays_are_saved_whole_by_one_replica(tmp_path):
  """A Checkpointer sets orbax's jax.Array handler to slice an array across replicas only where
  each part is at least MIN_REPLICA_SLICE_BYTES (no slice program compiled per small leaf)."""
  ckpt_lib.Checkpointer(str(tmp_path), async_save=False).close()
  handler = ocp.type_handlers.get_type_handler(jax.Array)
  # pylint: disable=protected-access  (orbax keeps the setting private)
  assert handler._min_slice_bytes_for_replica_parallel == ckpt_lib.MIN_REPLICA_SLICE_BYTES
  assert handler._array_metadata_store is not None  # as orbax builds its own handler
