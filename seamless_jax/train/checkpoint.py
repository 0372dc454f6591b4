"""Orbax checkpoints of the train state + the Grain iterator; damaged steps; stop signals.

Layout: ``workdir/checkpoints/<step>/{state, data}``; ``state`` is the ``TrainState`` (params,
optimizer, EMA, step, RNG, skip counters), ``data`` the Grain iterator state (one JSON per
process, grain's orbax handler). Orbax writes to a temporary directory and renames it when done,
so a checkpoint is either complete or absent; with ``async_checkpointing`` the write runs in the
background while training continues. Restore takes an abstract state whose ``ShapeDtypeStruct``s
carry the *current* mesh's shardings, so a checkpoint written on one mesh restores onto another.

A step that was finalized but later damaged (a truncated or deleted file) cannot be restored:
:meth:`Checkpointer.restore_latest` then falls back to the newest step that restores and moves
the damaged folder to ``checkpoints/damaged/<step>`` (never deleted; orbax ignores that folder).

Stopping: :class:`StopSignal` turns SIGTERM and the first Ctrl-C (SIGINT) into a flag the loop
checks once per step; :func:`any_process` makes that decision the same on every JAX process.
"""

from __future__ import annotations

import signal
import threading
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from seamless_jax import workdir as workdir_lib

try:  # the store orbax's own jax.Array handler is built with (a private module)
  from orbax.checkpoint._src.metadata import array_metadata_store
except ImportError:  # moved in another orbax version: Checkpointer keeps orbax's handler
  array_metadata_store = None


class CheckpointError(RuntimeError):
  """No checkpoint in the workdir can be restored; the message is one line for the user."""


def any_process(*flags: bool) -> tuple[bool, ...]:
  """Each flag OR-ed over all JAX processes (one tiny all-gather; local values on one process).

  Every process must call it at the same point, so all take the same branch afterwards."""
  local = tuple(bool(f) for f in flags)
  if jax.process_count() == 1:
    return local
  gathered = multihost_utils.process_allgather(np.asarray(local, np.int32))
  return tuple(bool(x) for x in np.asarray(gathered).reshape(-1, len(local)).max(axis=0))


def _summary(error: BaseException, limit: int = 160) -> str:
  """``Type: first line of the message`` (orbax/TensorStore messages run to pages)."""
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ""
  if len(text) > limit:
    text = text[:limit] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


# Replica-parallel saving (orbax's default off GPU: the replicas of an array each write a part of
# it) slices every replicated array with a small compiled program per shape: on a mesh with a
# data axis, hundreds of compiles at the first save (464 and 19 s for the two tiny runs of
# tests/eight_devices.py on 8 CPU devices) for arrays whose write takes microseconds. Arrays
# whose part per replica is smaller than this are written whole by one replica instead; the
# files are the same.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _register_array_handler() -> None:
  """orbax's ``jax.Array`` handler (its global registry, read by ``StandardSave``) with
  :data:`MIN_REPLICA_SLICE_BYTES`, otherwise as orbax registers it (where its metadata store
  is not found, an orbax version that moved it: orbax's handler is kept as it is)."""
  if array_metadata_store is None:
    return
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(
          array_metadata_store=array_metadata_store.Store(),
          min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES), override=True)


class Checkpointer:
  """``CheckpointManager`` for items ``state`` and ``data`` (keeps the newest ``keep``)."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    _register_array_handler()
    self.directory = workdir_lib.checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(keep), create=True, enable_async_checkpointing=bool(async_save))
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    saved = self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores ``step`` into ``abstract_state``'s shardings; advances ``data_iterator``."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(int(step), args=ocp.args.Composite(**items))
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return restored["state"]

  def restore_latest(self, abstract_state, data_iterator=None):
    """``(step, state)`` of the newest checkpoint that restores; ``(None, None)`` without any.

    Newer steps that fail while an older one restores are damaged: each is moved to
    ``checkpoints/damaged/`` with a one-line warning. A failure of every step is more likely a
    config that no longer matches (other model, other mesh rules): nothing is moved and a
    :class:`CheckpointError` names the newest step and its error. On several processes a step
    counts as restored only when it restored on all of them.
    """
    steps = sorted(self.all_steps(), reverse=True)
    failed = []
    for step in steps:
      try:
        state, error = self.restore(step, abstract_state, data_iterator), None
      except Exception as e:  # pylint: disable=broad-except  (orbax/TensorStore raise many types)
        state, error = None, e
      if any_process(error is not None)[0]:
        failed.append((step, error))
        logging.warning("checkpoint: step %d in %s does not restore (%s); trying an older one",
                        step, self.directory,
                        _summary(error) if error else "failed on another process")
        continue
      for bad_step, bad_error in failed:
        self._move_aside(bad_step, bad_error, resumed=step)
      return step, state
    if not steps:
      return None, None
    newest, newest_error = failed[0]
    raise CheckpointError(
        f"no checkpoint in {self.directory} restores (steps {sorted(steps)}); the newest, step "
        f"{newest}, fails with {_summary(newest_error) if newest_error else 'an error'}. If the "
        f"config changed, restore it; to start afresh use a new --workdir")

  def _move_aside(self, step: int, error, *, resumed: int) -> None:
    """Moves ``checkpoints/<step>`` to ``checkpoints/damaged/<step>[-<time>]`` (process 0)."""
    source = epath.Path(self.directory) / str(step)
    target = epath.Path(self.directory) / workdir_lib.DAMAGED / str(step)
    if target.exists():
      target = target.parent / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      source.rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_move_damaged_{step}")
    self.manager.reload()
    logging.warning("checkpoint: step %d is damaged (%s); moved it to %s and resumed from step %d",
                    step, _summary(error) if error else "failed on another process", target,
                    resumed)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class StopSignal:
  """SIGTERM (preemption, SLURM, ``kill``) and the first Ctrl-C set ``requested``; the loop then
  saves a checkpoint at the current step and returns normally (exit status 0). Before the first
  step there is nothing to save: the loop sets ``note`` to :attr:`NOTHING_TO_SAVE` meanwhile.

  A second Ctrl-C raises ``KeyboardInterrupt`` at once (nothing more is saved). Handlers are
  installed from the main thread only and the previous ones come back on :meth:`close`.
  """

  SAVING = "saving a checkpoint after this step and stopping"
  NOTHING_TO_SAVE = "stopping: nothing is trained yet, so there is nothing to save"

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.requested = False
    self.signum = None
    self.note = self.SAVING  # what the first signal says the run will do (the loop sets it)
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt("second Ctrl-C: stopped without saving")
    if not self.requested:
      name = signal.Signals(signum).name
      again = " (Ctrl-C again aborts without saving)" if signum == signal.SIGINT else ""
      logging.warning("%s: %s%s", name, self.note, again)
    self.requested = True
    self.signum = self.signum or signum

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

