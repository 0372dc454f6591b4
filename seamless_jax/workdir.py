"""The training workdir format, owned here: layout, saved config, saved steps, partial restore.

A workdir is a folder with::

    config.json                 the training config (written by process 0 at start)
    checkpoints/<step>/state    the TrainState (orbax; params, optimizer, EMA, step, RNG, ...)
    checkpoints/<step>/data     the Grain iterator state
    checkpoints/damaged/<step>  steps that failed to restore (moved aside, never deleted)
    metrics.jsonl, tensorboard/, samples/, xla_cache/

Training writes it (:mod:`seamless_jax.train`); loading, inference, export and evaluation read
it through this module. Reading never needs a device mesh: :func:`restore_arrays` reads only the
named ``TrainState`` fields into host numpy, so a checkpoint written on any mesh loads on one
host.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
DAMAGED = "damaged"  # sub-folder of checkpoints/ for steps that failed to restore


class SourceError(ValueError):
  """A model source (folder or workdir) that cannot be loaded; the message names it."""


def is_workdir(path: str) -> bool:
  """True for a training workdir (``config.json`` + ``checkpoints/``)."""
  return (os.path.isfile(os.path.join(path, CONFIG_FILE))
          and os.path.isdir(os.path.join(path, CHECKPOINTS)))


def checkpoint_dir(workdir: str) -> str:
  """``workdir/checkpoints`` (absolute for local paths, unchanged for ``gs://...``)."""
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  return os.path.join(workdir, CHECKPOINTS)


def saved_steps(workdir: str) -> list[int]:
  """Finalized checkpoint steps (ascending), from the folder names only: cheap, builds nothing.

  Orbax's own listing (temporary folders of unfinished saves and ``damaged/`` are not steps);
  ``[]`` when there is no ``checkpoints/`` folder.
  """
  directory = checkpoint_dir(workdir)
  if "://" not in directory and not os.path.isdir(directory):
    return []
  return sorted(int(s) for s in ocp.step.checkpoint_steps(directory))


def write_config(config, workdir: str) -> None:
  """Saves the training config as ``workdir/config.json`` (call on process 0 only)."""
  with open(os.path.join(workdir, CONFIG_FILE), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The training config saved in ``workdir/config.json``."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  except FileNotFoundError as e:
    raise SourceError(f"{workdir} is not a training workdir: no {CONFIG_FILE}") from e
  except json.JSONDecodeError as e:
    raise SourceError(f"{path} is not valid JSON: {e}") from e


def choose_step(workdir: str, step: int | None) -> int:
  """``step`` if it was saved, else the latest saved step; a clear error otherwise."""
  steps = saved_steps(workdir)
  if not steps:
    raise SourceError(f"{workdir} has no checkpoints (nothing in {CHECKPOINTS}/)")
  if step is None:
    return steps[-1]
  if int(step) not in steps:
    raise SourceError(f"{workdir} has no checkpoint for step {step}; saved steps: "
                      f"{', '.join(map(str, steps))}")
  return int(step)


def restore_arrays(workdir: str, step: int, names: tuple[str, ...]) -> dict[str, Any]:
  """Reads only the TrainState fields ``names`` of ``step`` into host numpy arrays."""
  path = os.path.join(checkpoint_dir(workdir), str(step), "state")
  try:
    with _orbax_warnings_off():
      checkpointer = ocp.PyTreeCheckpointer()
      metadata = checkpointer.metadata(path)
      tree = getattr(metadata, "item_metadata", metadata)
      tree = getattr(tree, "tree", tree)
      item = {name: tree[name] for name in names}
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True))
  except Exception as e:  # noqa: BLE001  orbax raises many kinds; the file is what matters
    raise SourceError(f"checkpoint {path} is damaged or unreadable "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
  return {name: restored[name] for name in names}


@contextlib.contextmanager
def _orbax_warnings_off():
  """Reading ``<step>/state`` on its own makes orbax warn that the step's
  ``_CHECKPOINT_METADATA`` (one folder up) is missing: true, and not the user's concern."""
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(previous)


def resolve_path(path: str, workdir: str) -> str:
  """A path from a workdir's config: as saved if it exists, else relative to the workdir's
  parent folder (a relative path saved by a run started elsewhere)."""
  if not path or os.path.isabs(path) or os.path.exists(path):
    return path
  for base in (os.path.dirname(os.path.abspath(workdir)), os.path.abspath(workdir)):
    candidate = os.path.join(base, path)
    if os.path.exists(candidate):
      return candidate
  return path
