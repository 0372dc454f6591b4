"""benchmarks/attention.py and benchmarks/remat_memory.py run and print what docs/benchmarks.md
quotes (tiny shapes; the numbers themselves are the benchmarks' business)."""

import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


def run(script: str, *args: str) -> list[str]:
  proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *args],
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return [line for line in proc.stdout.splitlines() if line.startswith("| ")]


def test_attention_benchmark_rows_carry_times_and_a_small_gradient_difference():
  pytest.importorskip("torch")
  rows = run("attention.py", "--shapes=2x16x16x2x8,2x16x5x2x8", "--calls=2", "--repeats=1")
  data = [r.strip("| ").split(" | ") for r in rows[1:]]
  assert [d[0] for d in data] == ["2x16x16x2x8", "2x16x5x2x8"]
  for d in data:
    assert all(float(x) > 0 for x in d[1:7])  # ours / jax.nn / torch, fwd and fwd+bwd (ms)
    assert float(d[7]) < 1e-4                 # max abs gradient difference to jax.nn


def test_remat_memory_prints_every_policy_for_the_unet_and_the_control():
  rows = run("remat_memory.py", "--unets=tiny", "--batch=1", "--latent=8")
  policies = [r.strip("| ").split(" | ")[1] for r in rows[1:]]
  assert policies == ["off", "nothing_saveable", "dots_with_no_batch_dims_saveable",
                      "dots_saveable", "off", "nothing_saveable"]
  assert all(float(r.strip("| ").split(" | ")[2]) > 0 for r in rows[1:])
