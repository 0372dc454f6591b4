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


@pytest.mark.slow
def test_remat_memory_prints_every_policy_for_the_unet_and_the_control():
  rows = run("remat_memory.py", "--unets=tiny", "--batch=1", "--latent=8")
  policies = [r.strip("| ").split(" | ")[1] for r in rows[1:]]
  assert policies == ["off", "nothing_saveable", "dots_with_no_batch_dims_saveable",
                      "dots_saveable", "off", "nothing_saveable"]
  assert all(float(r.strip("| ").split(" | ")[2]) > 0 for r in rows[1:])


def test_conv_backward_prints_six_times_per_shape():
  pytest.importorskip("torch")
  rows = run("conv_backward.py", "--shapes=1x8x8x4x4", "--calls=1", "--repeats=1")
  cells = rows[1].strip("| ").split(" | ")
  assert cells[0] == "1x8x8x4x4" and len(cells) == 7


@pytest.mark.slow
def test_profile_unet_attributes_time_to_modules_and_primitives():
  proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "profile_unet.py"),
                         "--batch=1", "--latent=8", "--calls=1", "--top=50"],
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  modules = proc.stdout.split("| module |")[1].split("| primitive |")[0]
  primitives = proc.stdout.split("| primitive |")[1]
  assert "attn1" in modules and "resnets/conv1" in modules
  assert "bwd conv_general_dilated" in primitives and "fwd dot_general" in primitives
