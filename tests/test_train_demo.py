"""End to end: ``python -m seamless_jax.main --config=configs/two_step.py:demo`` on CPU."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_run_end_to_end_loss_falls(tmp_path):
  workdir = str(tmp_path / "demo")
  proc = subprocess.run(
      [sys.executable, "-m", "seamless_jax.main", "--config=configs/two_step.py:demo",
       f"--workdir={workdir}", "--config.total_steps=40", "--config.sample_every=40"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  rows = [r for r in lines if "loss" in r]
  assert [r["step"] for r in rows] == [10, 20, 30, 40]
  seam = [r for r in lines if "seam/cd_inpaint" in r]  # the sampler's seam quality at step 40
  assert [r["step"] for r in seam] == [40]
  for key in ("seam/cd_inpaint", "seam/excess_cd_inpaint", "seam/cd_outpaint",
              "seam/excess_cd_outpaint"):
    assert key in seam[0] and abs(seam[0][key]) < 442, seam  # 442 ~ the RGB cube's diagonal
  assert rows[-1]["loss"] < 0.6 * rows[0]["loss"], rows
  assert all(r["skipped_total"] == 0 for r in rows)
  assert os.path.exists(os.path.join(workdir, "samples", "step_00000040.png"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["30", "40"]
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
