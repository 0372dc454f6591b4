"""The end of a training log: where the run's files are, how it ended, what to run next.

:func:`summary_lines` reads only the workdir (:mod:`seamless_jax.workdir` layout): the saved
checkpoint steps, the last ``loss`` and seam scores in ``metrics.jsonl`` and the newest sample
grid, so it says what is on disk, whatever the loop did before.
"""

from __future__ import annotations

import glob
import json
import os

from seamless_jax import workdir as workdir_lib

SEAM_KINDS = ("inpaint", "outpaint")


def last_metrics(workdir: str) -> dict:
  """The newest value of each scalar in ``workdir/metrics.jsonl`` (``{}`` without the file),
  with ``<name>@step``: the step that logged it."""
  path = os.path.join(workdir, "metrics.jsonl")
  latest: dict = {}
  if not os.path.isfile(path):
    return latest
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # a line cut by a crash: the others still count
        continue
      for name, value in row.items():
        if name not in ("step", "time"):
          latest[name], latest[f"{name}@step"] = value, row.get("step")
  return latest


def _scores(latest: dict) -> str:
  """'loss 0.1612 (step 60); seam CD inpaint 12.3 (excess +1.2), outpaint ...' or ''."""
  parts = []
  if "loss" in latest:
    parts.append(f"loss {latest['loss']:.4g} (step {latest['loss@step']})")
  seams = [f"{kind} {latest[f'seam/cd_{kind}']:.1f} (excess "
           f"{latest.get(f'seam/excess_cd_{kind}', float('nan')):+.1f})"
           for kind in SEAM_KINDS if f"seam/cd_{kind}" in latest]
  if seams:
    parts.append("seam CD " + ", ".join(seams))
  return "; ".join(parts)


def next_commands(workdir: str, exports: str) -> list[str]:
  """What to run with a workdir whose objective exports ``exports`` ('pipeline' or 'vae')."""
  name = os.path.basename(os.path.normpath(workdir)) or "run"
  if exports == "vae":  # an Eq. 6 decoder: used beside a model, exported as a VAE folder
    return [f"python -m seamless_jax.inpaint --model SD15_OR_WORKDIR --vae {workdir} "
            "--image photo.png --mask mask.png --out outputs/",
            f"python -m seamless_jax.export --workdir {workdir} --out exports/{name}_vae"]
  return [f"python -m seamless_jax.inpaint --model {workdir} --image photo.png --mask mask.png "
          "--out outputs/",
          f"python -m seamless_jax.app --model {workdir}   (pip install -e \".[app]\")",
          f"python -m seamless_jax.export --workdir {workdir} --out exports/{name}"]


def summary_lines(workdir: str, exports: str, step: int, stopped: str) -> list[str]:
  """The summary as log lines (module doc); ``stopped``: '' (finished) or why it stopped."""
  steps = workdir_lib.saved_steps(workdir)
  if stopped:
    head = (f"stopped at step {step} ({stopped}); rerun the same command to resume"
            if steps else f"stopped at step {step} ({stopped}); nothing was saved")
  else:
    head = f"finished at step {step}"
  lines = [head, f"  checkpoints  {workdir_lib.checkpoint_dir(workdir)}  (steps "
           f"{', '.join(map(str, steps)) or 'none'})"]
  if os.path.isfile(os.path.join(workdir, "metrics.jsonl")):
    lines.append(f"  metrics      {os.path.join(workdir, 'metrics.jsonl')}  (TensorBoard: "
                 f"tensorboard --logdir {os.path.join(workdir, 'tensorboard')})")
  grids = sorted(glob.glob(os.path.join(workdir, "samples", "step_*.png")))
  if grids:
    lines.append(f"  samples      {grids[-1]}")
  scores = _scores(last_metrics(workdir))
  if scores:
    lines.append(f"  last logged  {scores}")
  if steps:
    lines += ["next:"] + [f"  {command}" for command in next_commands(workdir, exports)]
  return lines
