"""``python -m seamless_jax.main`` as a user meets it: --help, and config mistakes reported in one
line naming the field (no traceback, no workdir left behind). Nothing here trains."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "seamless_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def test_help_exits_0_and_lists_configs_and_variants():
  proc = _main("--help")
  assert proc.returncode == 0, proc.stderr[-2000:]
  for name in ("configs/two_step.py", "configs/standard.py", "configs/vae_finetune.py",
               ":sd15", ":tiny", ":demo", "--workdir", "--config"):
    assert name in proc.stdout, name


def _assert_one_line_error(proc, *expected):
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), proc.stderr[-3000:]
  for text in expected:
    assert text in last, last


@pytest.mark.parametrize("override,expected", [
    ("--config.batchsize=3", ("--config.batchsize", "did you mean --config.batch_size?")),
    ("--config.data.tokenzier_dir=x", ("--config.data.tokenzier_dir",
                                       "did you mean --config.data.tokenizer_dir?")),
    ("--config.mode=twostep", ("config.mode='twostep'", "'two_step'")),
    ("--config.batch_size=0", ("config.batch_size must be > 0",)),
])
def test_config_mistakes_are_one_line_and_leave_no_workdir(tmp_path, override, expected):
  workdir = tmp_path / "run"
  proc = _main("--config=configs/two_step.py:tiny", f"--workdir={workdir}",
               f"--config.data.path={tmp_path}", override)
  _assert_one_line_error(proc, *expected)
  assert not workdir.exists()


def test_data_folder_without_tokenizer_gets_the_flag_to_set(tmp_path):
  (tmp_path / "data").mkdir()
  proc = _main("--config=configs/two_step.py:tiny", f"--workdir={tmp_path / 'run'}",
               f"--config.data.path={tmp_path / 'data'}")
  _assert_one_line_error(proc, "has no tokenizer/ folder", "--config.data.tokenizer_dir=")
  assert not (tmp_path / "run").exists()


def test_folder_that_is_not_stable_diffusion_is_named(tmp_path):
  (tmp_path / "photos").mkdir()
  proc = _main("--config=configs/two_step.py:sd15", f"--workdir={tmp_path / 'run'}",
               f"--config.pretrained={tmp_path / 'photos'}", f"--config.data.path={tmp_path}")
  _assert_one_line_error(proc, f"config.pretrained='{tmp_path / 'photos'}'",
                         "not a diffusers SD-1.5 folder", "unet/")
  assert not (tmp_path / "run").exists()


def test_missing_config_file_is_one_line(tmp_path):
  proc = _main("--config=configs/nope.py", f"--workdir={tmp_path / 'run'}")
  _assert_one_line_error(proc, "no such file", "configs/two_step.py")
