"""Training on 8 forced CPU devices, once per test session (``eight_device_runs`` in conftest).

Two tiny two_step runs of 2 steps through :func:`seamless_jax.train.loop.train`, on the same
data and seed as the session's one-device two_step workdir (``tiny_workdirs``, trained in a
process with one device: the reference): a data=2 x fsdp=4 mesh, and ``shard_map`` over 8
devices. Then the 2x4 run's step-2 checkpoint is read back as saved (sharded) and restored onto
an 8x1 mesh and onto one device. ``tests/test_train_sharding.py`` and the sharded-checkpoint
export test of ``tests/test_export.py`` assert on what this writes, so the 8-device programs
compile once per session.

XLA_FLAGS must be set before JAX starts, hence a script run in a subprocess
(``tiny.run_on_cpu_devices``)::

    python tests/eight_devices.py DATA_DIR ONE_DEVICE_WORKDIR OUT_DIR

ONE_DEVICE_WORKDIR: a finished ``two_step:tiny`` run on DATA_DIR (2 steps, a loss logged at each
step, step 2 saved); its losses and step-2 params are the one-device reference. OUT_DIR gets
``report.json``, the workdirs ``runs/<layout>/`` and ``data2_fsdp4_ema.npz`` (the
2x4 run's EMA UNet params as saved, flattened with '/', and ``__sharded__``: how many of them
were sharded over several devices).
"""

import json
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization
from flax import traverse_util

import tiny
from seamless_jax.runtime import sharding as shd
from seamless_jax.train import checkpoint as ckpt_lib
from seamless_jax.train import loop
from seamless_jax.train import state as state_lib
from seamless_jax.train import trainer as trainer_lib

STEPS = 2
LAYOUTS = {"data2_fsdp4": (2, 4, "jit"), "shard_map_8": (8, 1, "shard_map")}
SAVED_ON = "data2_fsdp4"  # the run whose checkpoint is restored elsewhere and exported


def _config(data_dir: str, data: int, fsdp: int, parallelism: str):
  config = tiny.tiny_config("two_step", data_dir, total_steps=STEPS, checkpoint_every=STEPS,
                            log_every=1, parallelism=parallelism)
  config.mesh.data, config.mesh.fsdp = data, fsdp
  return config


def _losses(workdir: str) -> list[float]:
  """The training losses logged (the reference run also logs its sample grid's seam metrics)."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [row["loss"] for row in rows if "loss" in row]


def _as_saved(workdir: str) -> dict:
  """The step's train state as saved: a dict of arrays in their saved (sharded) layout."""
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  state = ckpt.manager.restore(STEPS, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  ckpt.close()
  return state


def _sharded(tree) -> int:
  return sum(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
             for x in jax.tree_util.tree_leaves(tree))


def _restored_onto(config, workdir: str, data: int, fsdp: int):
  """The saved step restored onto a ``data`` x ``fsdp`` mesh (a TrainState)."""
  mesh = shd.make_mesh(data, fsdp)
  config.mesh.data, config.mesh.fsdp = data, fsdp
  trainer = trainer_lib.shapes_only_setup(config, mesh)
  target = state_lib.abstract_with_shardings(trainer.state, trainer.state_shardings)
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  restored = ckpt.restore(STEPS, target)
  ckpt.close()
  return restored, mesh


def _flat(tree) -> dict:
  """``{'params/…/kernel': array}``; the saved dict also keeps the optimizer's empty states."""
  return traverse_util.flatten_dict(serialization.to_state_dict(tree), sep="/")


def _run_report(workdir: str) -> tuple[dict, list[np.ndarray]]:
  """A finished run's losses and how many params its step-2 checkpoint shards; its params."""
  saved = _as_saved(workdir)
  params = [np.asarray(x) for x in jax.tree_util.tree_leaves(saved["params"])]
  return {"losses": _losses(workdir), "sharded_params": _sharded(saved["params"])}, params


def run(data_dir: str, one_device_workdir: str, out: str) -> dict:
  assert jax.device_count() == 8, jax.devices()
  report = {"runs": {}}
  report["runs"]["one_device"], reference = _run_report(one_device_workdir)
  for name, (data, fsdp, parallelism) in LAYOUTS.items():
    workdir = os.path.join(out, "runs", name)
    loop.train(_config(data_dir, data, fsdp, parallelism), workdir)
    report["runs"][name], params = _run_report(workdir)
    report["runs"][name]["max_param_diff"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(reference, params))

  workdir = os.path.join(out, "runs", SAVED_ON)
  saved = _as_saved(workdir)
  saved_flat = _flat(saved)
  for target, (data, fsdp) in (("restore_8x1", (8, 1)), ("restore_1", (1, 1))):
    restored, mesh = _restored_onto(_config(data_dir, *LAYOUTS[SAVED_ON]), workdir, data, fsdp)
    restored_flat = _flat(restored)
    report[target] = {
        "equal": len(restored_flat) == len(jax.tree_util.tree_leaves(saved)) and all(
            k in saved_flat and np.array_equal(np.asarray(saved_flat[k]), np.asarray(v))
            for k, v in restored_flat.items()),
        "on_mesh": all(x.sharding.mesh.devices.size == mesh.size
                       for x in jax.tree_util.tree_leaves(restored)),
        "step": int(restored.step)}
  ema = {"/".join(k): np.asarray(v)
         for k, v in traverse_util.flatten_dict(saved["ema_params"]).items()}
  np.savez(os.path.join(out, f"{SAVED_ON}_ema.npz"),
           __sharded__=np.int64(_sharded(saved["ema_params"])), **ema)
  return report


if __name__ == "__main__":
  result = run(*sys.argv[1:4])
  with open(os.path.join(sys.argv[3], "report.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
