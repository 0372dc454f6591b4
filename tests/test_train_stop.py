"""Stopping and restarting a real (tiny) run through ``python -m seamless_jax.main``: a finished
run exits in seconds, a damaged newest checkpoint falls back to the previous one, Ctrl-C saves,
bad data saves before the error, and with two processes a SIGTERM to one of them stops both at
the same step. Each test trains a tiny model on CPU (marked slow)."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from seamless_jax import workdir as workdir_lib

import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = tiny.CLI_RUN_STEPS  # the session's command-line run (cli_run in conftest)
pytestmark = pytest.mark.slow
# Each of the two processes compiles its own (2-device) programs; the tiny VAE fine-tune's step
# compiles in about half the time of the two-step's, and stopping does not depend on the mode.
TWO_PROCESS_CONFIG = "configs/vae_finetune.py:tiny"


@pytest.fixture(scope="module")
def data_dir(tiny_data):
  return tiny_data  # the session's photos (tests/conftest.py); read-only here


def _run(data_dir, workdir, *overrides, timeout=600):
  return subprocess.run(tiny.main_command(data_dir, workdir, *overrides), cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def _steps_logged(workdir):
  """The steps of the training rows of metrics.jsonl (a sample grid's row has no loss)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [row["step"] for row in rows if "loss" in row]


def _wait_for_a_logged_step(proc, workdir, deadline_s=400):
  deadline = time.time() + deadline_s
  while time.time() < deadline and proc.poll() is None and not _steps_logged(workdir):
    time.sleep(0.5)
  assert proc.poll() is None, proc.communicate()[1][-3000:]
  assert _steps_logged(workdir), "no step logged in time"


def _stop(*procs):
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()


def test_console_shows_no_orbax_internals(cli_run):
  _, stderr = cli_run
  lines = stderr.splitlines()
  assert any(f"step {STEPS}/{STEPS}" in line for line in lines)
  internal = [line for line in lines if "[process=0]" in line or "orbax-checkpoint-tmp" in line
              or "checkpoint_manager.py" in line or "atomicity.py" in line]
  assert not internal, internal[:5]


def test_finished_run_exits_before_building_anything(cli_run, data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(cli_run[0], workdir)
  start = time.time()
  proc = _run(data_dir, workdir, f"--config.total_steps={STEPS}", timeout=120)
  elapsed = time.time() - start
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "nothing to do" in proc.stderr
  assert "compiled" not in proc.stderr and "trainable params" not in proc.stderr
  assert elapsed < 60, elapsed  # import time only (was: model build + compile first)


def test_damaged_newest_checkpoint_resumes_from_the_previous(cli_run, data_dir, tmp_path):
  """A truncated file in the newest step (test_checkpoint.py also deletes ``_METADATA``)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(cli_run[0], workdir)
  assert workdir_lib.saved_steps(workdir) == [STEPS - 2, STEPS]
  newest = os.path.join(workdir, "checkpoints", str(STEPS), "state")
  files = [f for f in glob.glob(os.path.join(newest, "**", "*"), recursive=True)
           if os.path.isfile(f) and not os.path.basename(f).startswith("_")]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 3)
  proc = _run(data_dir, workdir, f"--config.total_steps={STEPS + 1}",
              "--config.checkpoint_every=1", "--config.log_every=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [line for line in proc.stderr.splitlines() if "is damaged" in line]
  assert len(warnings) == 1, warnings
  assert f"step {STEPS}" in warnings[0] and f"resumed from step {STEPS - 2}" in warnings[0]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "damaged", str(STEPS)))
  # steps STEPS-1 .. STEPS+1 trained again from STEPS-2 (the newest 3 checkpoints kept)
  assert workdir_lib.saved_steps(workdir) == [STEPS - 1, STEPS, STEPS + 1]
  assert _steps_logged(workdir) == [2, 4, 3, 4, 5]  # the first run logged every 2 steps


def test_ctrl_c_saves_and_exits_0(data_dir, tmp_path):
  """Ctrl-C in a terminal reaches the whole process group, Grain workers included."""
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(
      tiny.main_command(data_dir, workdir, "--config.total_steps=100000",
                        "--config.checkpoint_every=0", "--config.log_every=1",
                        "--config.data.worker_count=1"),
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
      start_new_session=True)
  try:
    _wait_for_a_logged_step(proc, workdir)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=180)
  finally:
    _stop(proc)
    try:
      os.killpg(proc.pid, signal.SIGKILL)  # workers, should any be left
    except ProcessLookupError:
      pass
  assert proc.returncode == 0, stderr[-3000:]
  assert "KeyboardInterrupt" not in stderr and "SIGINT" in stderr
  steps = workdir_lib.saved_steps(workdir)
  assert len(steps) == 1 and steps[0] >= 1
  assert max(_steps_logged(workdir)) <= steps[0]


def _corrupt_copy(data_dir, folder):
  """``data_dir`` plus a truncated JPEG, a non-image and a listed file that does not exist."""
  shutil.copytree(data_dir, folder)
  with open(os.path.join(folder, "metadata.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  with open(os.path.join(folder, rows[0]["file_name"]), "rb") as f:
    good = f.read()
  with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
    f.write(good[: len(good) // 3])
  with open(os.path.join(folder, "garbage.jpg"), "wb") as f:
    f.write(b"this is not an image")
  rows += [{"file_name": "truncated.jpg", "text": "t"}, {"file_name": "garbage.jpg", "text": "g"},
           {"file_name": "missing_file.jpg", "text": "m"}]
  with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return len(rows)


def test_bad_data_limit_saves_first_and_lists_each_bad_file_once(data_dir, tmp_path):
  bad_dir = str(tmp_path / "bad_data")
  records = _corrupt_copy(data_dir, bad_dir)
  workdir = str(tmp_path / "run")
  # Checked from the second epoch on: every bad file has been read at least twice by then.
  proc = _run(bad_dir, workdir, "--config.total_steps=100000", "--config.checkpoint_every=0",
              "--config.log_every=1", "--config.data.max_bad_fraction=0.01",
              f"--config.data.bad_check_min_records={records + 8}")
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  message = proc.stderr[proc.stderr.rindex("error: "):]
  steps = workdir_lib.saved_steps(workdir)
  assert len(steps) == 1 and steps[0] >= 1 and f"stopped at step {steps[0]}" in message
  for name in ("truncated.jpg", "garbage.jpg", "missing_file.jpg"):
    assert message.count(name) == 1, message
  assert "data skipped" in proc.stderr  # the step line shows the skipped records


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  port = _free_port()
  procs = []
  try:
    for index in range(2):
      env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                 JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(index))
      procs.append(subprocess.Popen(
          tiny.main_command(data_dir, workdir, "--config.total_steps=100000",
                            "--config.checkpoint_every=0", "--config.log_every=1",
                            config=TWO_PROCESS_CONFIG),
          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    _wait_for_a_logged_step(procs[0], workdir, deadline_s=500)
    procs[1].send_signal(signal.SIGTERM)  # process 0 gets nothing
    errs = [p.communicate(timeout=240)[1] for p in procs]
  finally:
    _stop(*procs)
  for proc, err in zip(procs, errs):
    assert proc.returncode == 0, err[-3000:]
  stops = [[line.split("stopping at step ")[1].split()[0] for line in err.splitlines()
            if "stopping at step " in line] for err in errs]
  assert stops[0] == stops[1] and len(stops[0]) == 1, stops
  steps = workdir_lib.saved_steps(workdir)
  assert steps == [int(stops[0][0])]
  data = os.listdir(os.path.join(workdir, "checkpoints", str(steps[0]), "data"))
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data)
