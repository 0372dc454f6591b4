"""Metrics to TensorBoard event files (tensorboardX), ``metrics.jsonl`` and stdout.

Only process 0 writes files. Every ``log_every`` steps the loop passes averaged scalars to
:meth:`MetricWriter.write`, which also prints one progress line
``step 120/1000 (12.0%) loss 0.1234 ... 3.1 steps/s ETA 0:04:44`` (plus ``data skipped N`` once
bad records were skipped). :func:`quiet_library_logs` keeps orbax's and jax's internal INFO lines
(temporary folders, renames, the TPU backend a CPU machine cannot start) off the console at the
default verbosity.
"""

from __future__ import annotations

import datetime
import json
import logging as py_logging
import os
import time

import jax
import numpy as np
from absl import logging

# Their INFO lines are internals (orbax: temporary folders, renames; jax: backends it could not
# start on this machine, "Resetting cache at <empty>"); warnings and errors still show.
QUIET_PACKAGES = ("orbax", "jax")


class _LibraryInfoFilter(py_logging.Filter):
  """Drops INFO (and lower) records logged from inside ``QUIET_PACKAGES`` unless ``-v 1``+."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING or logging.get_verbosity() > logging.INFO:
      return True
    path = record.pathname.replace(os.sep, "/")
    return not any(f"/{package}/" in path for package in QUIET_PACKAGES)


def quiet_library_logs() -> None:
  """Installs the filter on absl's handler (idempotent); ``--verbosity=1`` shows everything."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())


class MetricWriter:
  """Writes scalars to ``workdir/tensorboard`` (tensorboardX), ``workdir/metrics.jsonl``, stdout."""

  def __init__(self, workdir: str, total_steps: int, *, terms: tuple[str, ...] = ()):
    """``terms``: the objective's loss terms the progress line shows after ``loss``. Only
    process 0 writes."""
    self.enabled = jax.process_index() == 0
    self.total_steps = int(total_steps)
    self.terms = tuple(terms)
    self.workdir = workdir
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      # Imported here: tensorboardX imports torch when it is installed; training must not.
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write(self, step: int, scalars: dict[str, float], *, progress: bool = True) -> None:
    """``scalars`` to TensorBoard and ``metrics.jsonl``; ``progress``: also the console's
    progress line (off for callers that log their own line, e.g. the sample hook)."""
    scalars = {k: float(v) for k, v in scalars.items() if v is not None}
    if progress:
      logging.info("%s", progress_line(step, self.total_steps, scalars, self.terms))
    if not self.enabled:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(f"train/{name}", value, step)
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()
    self._tb.flush()

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def write_image(self, tag: str, image: np.ndarray, step: int) -> None:
    """A uint8 (H, W, 3) or (H, W) image to TensorBoard under ``tag``."""
    if self.enabled:
      image = np.asarray(image)
      self._tb.add_image(tag, image, step, dataformats="HWC" if image.ndim == 3 else "HW")
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def progress_line(step: int, total: int, scalars: dict[str, float],
                  terms: tuple[str, ...] = ()) -> str:
  """``step n/N (p%) | loss x | <terms> | grad_norm | lr | speed | ETA | MFU | skips``."""
  parts = [f"step {step}/{total} ({100.0 * step / max(total, 1):.1f}%)"]
  for name in ("loss",) + tuple(terms) + ("grad_norm", "lr"):
    if name in scalars:
      parts.append(f"{name} {scalars[name]:.4g}")
  if "steps_per_sec" in scalars:
    parts.append(f"{scalars['steps_per_sec']:.2f} steps/s")
    parts.append(f"{scalars.get('examples_per_sec', 0.0):.1f} ex/s")
    if scalars["steps_per_sec"] > 0:
      eta = (total - step) / scalars["steps_per_sec"]
      parts.append(f"ETA {datetime.timedelta(seconds=int(eta))}")
  if scalars.get("mfu"):
    parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
  if scalars.get("skipped_total"):
    parts.append(f"skipped {int(scalars['skipped_total'])}")
  if scalars.get("data_skipped"):
    parts.append(f"data skipped {int(scalars['data_skipped'])}")
  return " | ".join(parts)
