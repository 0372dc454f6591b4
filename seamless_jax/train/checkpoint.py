"""Orbax checkpoints of the train state + the Grain iterator, and preemption handling.

Layout: ``workdir/checkpoints/<step>/{state, data}``; ``state`` is the ``TrainState`` (params,
optimizer, EMA, step, RNG, skip counters), ``data`` the Grain iterator state (one JSON per
process, grain's orbax handler). Orbax writes to a temporary directory and renames it when done,
so a checkpoint is either complete or absent; with ``async_checkpointing`` the write runs in the
background while training continues. Restore takes an abstract state whose ``ShapeDtypeStruct``s
carry the *current* mesh's shardings, so a checkpoint written on one mesh restores onto another.
"""

from __future__ import annotations

import os
import signal
import threading

import grain
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """``CheckpointManager`` for items ``state`` and ``data`` (keeps the newest ``keep``)."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
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

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class PreemptionSignal:
  """Sets ``requested`` on SIGTERM (cloud preemption / SLURM / ``kill``); the loop then saves.

  Only installs handlers from the main thread; restores the previous handlers on ``close``.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self.requested = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("received signal %d: saving a checkpoint and stopping", signum)
    self.requested = True

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
