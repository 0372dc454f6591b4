"""Stop after step k + resume == uninterrupted run (bitwise); SIGTERM saves and exits."""

import functools
import os
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from seamless_jax.train import checkpoint as ckpt_lib
from seamless_jax.train import loop
import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tiny_data):
  return tiny_data  # the session's photos (tests/conftest.py); read-only here


def _final_state(workdir, step):
  ckpt = ckpt_lib.Checkpointer(workdir)
  restored = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  ckpt.close()
  return restored["state"]


@pytest.mark.slow
def test_stop_and_resume_is_bitwise_identical(tiny_workdirs, tmp_path):
  """The session's two_step workdir trained steps 1 and 2 without a stop; the same config
  stopped after step 1 and resumed (optimizer, EMA, RNG and the data iterator's position from
  the checkpoint) saves the same step 2, bit for bit."""
  full = tiny_workdirs["two_step"]
  config = functools.partial(tiny.session_run_config, "two_step", tiny_workdirs["data"])
  split = str(tmp_path / "split")
  assert loop.train(config(stop_at_step=1), split)["step"] == 1
  assert ckpt_lib.Checkpointer(split).all_steps() == [1]
  assert loop.train(config(), split)["step"] == 2
  a, b = _final_state(full, 2), _final_state(split, 2)
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):  # params, EMA, optimizer, step, rng: bitwise
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # and the resumed run really trained: params moved away from the step-1 checkpoint
  mid = _final_state(split, 1)
  assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
             zip(jax.tree_util.tree_leaves(mid["params"]), jax.tree_util.tree_leaves(b["params"])))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  cmd = tiny.main_command(data_dir, workdir, "--config.total_steps=100000",
                          "--config.checkpoint_every=0", "--config.log_every=1")
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
      break
    time.sleep(1)
  assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err.decode()[-3000:]
  steps = ckpt_lib.Checkpointer(workdir).all_steps()
  assert len(steps) == 1 and 1 <= steps[0] < 100000
