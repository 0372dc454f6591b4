"""What ``python -m seamless_jax.main`` tells a user (issue 19 §2): each long phase announced and
repeated while it lasts, no TPU/cache lines on a CPU machine, a summary at the end, a labelled
and enlarged sample grid, and a Ctrl-C during the compilation that stops at once without
writing an untrained checkpoint."""

import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

import tiny

from seamless_jax import console
from seamless_jax import pictures
from seamless_jax import workdir as workdir_lib
from seamless_jax.train import samples
from seamless_jax.train import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = tiny.CLI_RUN_STEPS
ABSL_TIME = re.compile(r"^[IWEF]\d{4} (\d\d):(\d\d):(\d\d\.\d+)")
# What a CPU machine's log must not show (they read as errors): the TPU backend JAX cannot
# start, the compilation cache's reset, the [aot] extra's CUDA plugin without a GPU.
NOT_ERRORS = re.compile(r"libtpu|Unable to initialize backend|Resetting cache|"
                        r"plugin configuration error|Traceback|^WARNING")


# ------------------------------------------------------------------ without training

def test_phase_says_what_it_does_and_keeps_saying_it():
  lines = []
  with console.phase("compiling the step", lines.append, every=0.05, note="(first run only)"):
    time.sleep(0.32)
  count = len(lines)
  time.sleep(0.15)
  assert len(lines) == count  # silent once the block is over
  assert lines[0] == "compiling the step... (first run only)"
  assert len(lines) >= 4 and all(re.fullmatch(r"still compiling the step: \d+ s", line)
                                 for line in lines[1:])


def test_sample_grid_is_enlarged_and_labelled():
  rng = np.random.default_rng(0)
  image = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  keep = np.ones((2, 32, 32, 1), np.float32)
  keep[:, 8:20, 8:20] = 0
  grid = samples.sample_grid(image, keep, image)
  tile = samples.GRID_TILE
  assert grid.shape == (pictures.LABEL_HEIGHT + 2 * tile, 4 * tile, 3)
  strip, body = grid[:pictures.LABEL_HEIGHT], grid[pictures.LABEL_HEIGHT:]
  assert all(strip[:, c * tile:(c + 1) * tile].min() < 100 for c in range(4))  # 4 labels
  np.testing.assert_array_equal(body[:tile:4, :tile:4], body[1:tile:4, 1:tile:4])  # nearest x4
  assert np.all(body[32, 3 * tile + 40] == [255, 0, 0])  # the border column draws the border


def test_summary_of_a_run_that_saved_nothing(tmp_path):
  lines = summary.summary_lines(str(tmp_path), "pipeline", 0, "signal")
  assert lines[0] == "stopped at step 0 (signal); nothing was saved"
  assert not any(line.startswith("next:") for line in lines)


# ------------------------------------------------------------------ a real tiny run

def _seconds(line: str) -> float | None:
  match = ABSL_TIME.match(line)
  if not match:
    return None
  hours, minutes, seconds = match.groups()
  return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.mark.slow
def test_no_tpu_or_cache_lines_on_a_cpu_machine(cli_run):
  _, stderr = cli_run
  lines = stderr.splitlines()
  assert not [line for line in lines if NOT_ERRORS.search(line)]
  assert "JAX process 0/1" in lines[0]  # the first line says what runs


@pytest.mark.slow
def test_every_long_phase_is_announced_and_no_gap_is_long(cli_run):
  _, stderr = cli_run
  for announced in ("setting up (mesh, data, models, train state)...",
                    "compiling the two_step train step... (the first run only",
                    "sampling 2 images for the grid", f"step {STEPS}/{STEPS}"):
    assert announced in stderr, announced
  times = [t for t in map(_seconds, stderr.splitlines()) if t is not None]
  gaps = np.diff(times) % 86400
  assert len(times) > 10 and gaps.max() <= 15, gaps.max()


@pytest.mark.slow
def test_each_logged_step_has_one_progress_line(cli_run):
  """The sample grid's seam scores go to metrics.jsonl without a second, loss-less
  ``step N/N (100.0%)`` line on the console (the hook logs its own ``samples:`` line)."""
  _, stderr = cli_run
  progress = [line.split("] ", 1)[1] for line in stderr.splitlines()
              if re.search(r"\] step \d+/\d+ ", line)]
  assert [line.split()[1] for line in progress] == ["2/4", "4/4"], progress
  assert all("| loss " in line for line in progress), progress


@pytest.mark.slow
def test_the_log_ends_with_where_everything_is_and_what_to_run_next(cli_run):
  workdir, stderr = cli_run
  tail = stderr[stderr.index(f"finished at step {STEPS}"):]
  for expected in (workdir_lib.checkpoint_dir(workdir), f"(steps {STEPS // 2}, {STEPS})",
                   os.path.join(workdir, "metrics.jsonl"),
                   f"tensorboard --logdir {os.path.join(workdir, 'tensorboard')}",
                   os.path.join(workdir, "samples", f"step_{STEPS:08d}.png"),
                   "loss ", f"(step {STEPS})", "seam CD inpaint", "outpaint", "next:",
                   f"python -m seamless_jax.inpaint --model {workdir}",
                   f"python -m seamless_jax.app --model {workdir}",
                   f"python -m seamless_jax.export --workdir {workdir}"):
    assert expected in tail, expected


@pytest.mark.slow
def test_the_sample_grid_file_is_enlarged_and_labelled(cli_run):
  workdir, _ = cli_run
  grid = np.asarray(Image.open(os.path.join(workdir, "samples", f"step_{STEPS:08d}.png")))
  assert grid.shape == (pictures.LABEL_HEIGHT + 2 * 128, 4 * 128, 3)  # 32-px tiles x 4


@pytest.mark.slow
def test_ctrl_c_while_compiling_stops_at_once_and_saves_nothing(tiny_data, tmp_path):
  """A learning rate no other test uses makes the step a program the session's compilation
  cache lacks (the random init, which does not depend on it, comes from the cache), so the step
  compiles for a while; the first Ctrl-C then ends the run within 5 s, with exit status 0 and
  no checkpoint."""
  workdir, log_path = str(tmp_path / "run"), str(tmp_path / "stderr.txt")
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen(
        tiny.main_command(tiny_data, workdir, "--config.total_steps=3",
                          "--config.learning_rate=0.000123"),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=tiny.cpu_user_env())
  try:
    deadline = time.monotonic() + 600
    while "compiling the two_step train step" not in open(log_path, encoding="utf-8").read():
      assert proc.poll() is None and time.monotonic() < deadline, open(log_path).read()[-3000:]
      time.sleep(0.2)
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    returncode = proc.wait(timeout=60)
    took = time.monotonic() - sent
  finally:
    if proc.poll() is None:
      proc.kill()
  stderr = open(log_path, encoding="utf-8").read()
  assert returncode == 0, stderr[-3000:]
  assert took <= 5, took
  assert "nothing is trained yet, so there is nothing to save" in stderr
  assert "stopped while compiling" in stderr and "compiled the two_step step" not in stderr
  assert workdir_lib.saved_steps(workdir) == []
