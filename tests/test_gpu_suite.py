"""benchmarks/gpu_suite.py --tiny: the GPU suite's code runs end to end on CPU and prints its rows."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

SUITE = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_suite.py")
PARTS = ("jax_step", "torch_step", "jax_sampler", "torch_sampler")  # torch.compile: too slow here
BUDGET_S = 240  # about 50 s on 2 idle cores; generous for shared CI hosts


@pytest.mark.slow
def test_tiny_suite_prints_a_row_per_part(tmp_path):
  proc = subprocess.run(
      [sys.executable, SUITE, "--tiny", "--budget", str(BUDGET_S), "--parts", ",".join(PARTS),
       "--workdir", str(tmp_path)],
      capture_output=True, text=True, timeout=BUDGET_S + 30, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  rows = [line for line in proc.stdout.splitlines()
          if line.startswith("| ") and not line.startswith("| part |")]
  assert {row.split(" | ")[0][2:] for row in rows} == set(PARTS), proc.stdout
  step = next(r for r in rows if r.startswith("| jax_step"))
  cells = [c.strip() for c in step.strip("|").split("|")]
  assert float(cells[6]) > 0        # img/s
  assert float(cells[8]) > 0        # TFLOP/img, the analytic count
  assert os.listdir(tmp_path / "xla_cache")  # the step went through the persistent cache
