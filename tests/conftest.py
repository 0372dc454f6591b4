"""Session fixtures: tiny trained workdirs shared by the loading, inference and export tests.

``tiny_workdirs`` trains once per test session (tiny random models, 32² demo photos, CPU):
a ``vae_finetune`` run (Eq. 6 decoder) and a ``two_step`` run, each saving steps 1 and 2 and
sampling a 2-image grid at step 2.
"""

import os

# Before JAX loads: the CPU is the backend of every test (with the [aot] extra installed, the
# CUDA plugin then registers without a driver, so tests can compile for GPU targets).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# LLVM at -O1 for every program the tests compile, here and in their subprocesses (they inherit
# the environment): the tiny programs run a few times each, so compile time is most of the suite.
# The tiny two-step step compiles in 16.8 instead of 21.5 s and runs as fast (0.51 vs 0.55 s);
# -O0 compiles faster still but runs slower where a test runs more (in a suite run, the
# quickstart notebook took 287 instead of 67 s, the VAE fine-tune step test 45 instead of 9
# CPU-s: the suite's total CPU time did not drop). XLA's HLO optimizations are the same at
# every level; the generated code differs in the last bits of some results. Training itself compiles at the default level (-O0 only for the random init,
# ``compilation.run_once_options``).
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=1"]).strip()

import functools  # pylint: disable=wrong-import-position
import tempfile  # pylint: disable=wrong-import-position

# One persistent XLA cache for the session, its subprocesses, notebook kernels and xdist
# workers (they inherit the environment; training honours JAX_COMPILATION_CACHE_DIR): the tiny
# programs every training test builds compile once. Entries are keyed by their HLO, compile
# options, devices and jax version, so a hit is the same executable.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="seamless_jax_xla_cache_")

import filelock  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

import tiny  # pylint: disable=wrong-import-position

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from seamless_jax.train import loop  # pylint: disable=wrong-import-position


def _train(mode: str, data_dir: str, workdir: str) -> None:
  """A tiny 2-step run saving steps 1 and 2, with a 2-image sample grid at step 2."""
  loop.train(tiny.session_run_config(mode, data_dir), workdir)


def _built_once(tmp_path_factory, name: str, build) -> str:
  """``build(folder)`` once per test run, also across xdist workers (they share the parent of
  their base temp folders; a file lock makes the others wait and reuse the result)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  folder = os.path.join(str(root), name)
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  with filelock.FileLock(folder + ".lock"):
    if not os.path.exists(os.path.join(folder, ".built")):
      build(folder)
      open(os.path.join(folder, ".built"), "w", encoding="utf-8").close()
  return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
  """The bundled photos at 32² (+ tokenizer), read-only for every test."""
  return _built_once(tmp_path_factory, "tiny_data", tiny.write_tiny_data)


@pytest.fixture(scope="session")
def tiny_workdirs(tiny_data, tmp_path_factory):
  """``{'data', 'vae_finetune', 'two_step'}``: folders of two tiny 2-step training runs.

  Each run has its own lock and odd-numbered xdist workers start with the other one, so the
  first two workers that need them train both at once instead of one after the other.
  """
  modes = ["vae_finetune", "two_step"]
  if int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0) % 2:
    modes.reverse()
  folders = {mode: _built_once(tmp_path_factory, os.path.join("workdirs", mode),
                               functools.partial(_train, mode, tiny_data)) for mode in modes}
  return {"data": tiny_data, **folders}


@pytest.fixture(scope="session")
def cli_run(tiny_data, tmp_path_factory):
  """``(workdir, stderr)`` of the session's ``python -m seamless_jax.main`` run
  (:func:`tiny.run_cli_training`), read-only for every test: copy it to resume it."""
  folder = _built_once(tmp_path_factory, "cli_run",
                       functools.partial(tiny.run_cli_training, tiny_data))
  with open(os.path.join(folder, "stderr.txt"), encoding="utf-8") as f:
    return os.path.join(folder, "run"), f.read()


def _run_on_eight_devices(data_dir: str, one_device_workdir: str, folder: str) -> None:
  os.makedirs(folder, exist_ok=True)
  proc = tiny.run_on_cpu_devices(8, [os.path.join(os.path.dirname(__file__), "eight_devices.py"),
                                     data_dir, one_device_workdir, folder])
  assert proc.returncode == 0, proc.stderr[-5000:]


@pytest.fixture(scope="session")
def eight_device_runs(tiny_workdirs, tmp_path_factory):
  """The folder ``tests/eight_devices.py`` wrote (tiny two_step runs on 8 CPU devices in two
  layouts compared with the one-device ``tiny_workdirs['two_step']``, the 2x4 run's checkpoint
  restored elsewhere): built once per test session."""
  return _built_once(tmp_path_factory, "eight_devices", functools.partial(
      _run_on_eight_devices, tiny_workdirs["data"], tiny_workdirs["two_step"]))


def pytest_collection_modifyitems(items):
  """A test that needs the trained workdirs or the 8-device runs is slow: ``-m "not slow"``
  trains nothing.

  Files with slow tests run first (a stable sort, the same on every xdist worker): the workers
  start on the long files and the quick ones fill the gaps at the end, instead of one long file
  started last keeping the run going on one core.
  """
  for item in items:
    if {"tiny_workdirs", "eight_device_runs", "cli_run"} & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.slow)
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)
