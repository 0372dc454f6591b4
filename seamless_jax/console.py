"""The console of this project's commands: JAX plugins' start-up chatter kept off it.

With the ``[aot]`` extra installed (libtpu, the CUDA PJRT plugin) on a machine without TPU or
GPU, ``import jax`` and the first ``jax.devices()`` make those C++ libraries print lines such as
``cudart_stub.cc:31] Could not find cuda drivers`` straight to file descriptor 2, which read as
errors. The command-line entry points import JAX through :func:`import_jax_quietly` and start
its backends inside :func:`chatter_filtered` and :func:`absent_gpu_plugin_quiet` (the CUDA
plugin's logged error on a machine without a GPU); anything else the libraries print is passed
on.
Long phases (set-up, compiling) are announced with :func:`phase`, which keeps saying so.
This module imports nothing from JAX, so it can run before JAX loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator

# What the plugins print when their hardware is absent: information, not errors.
START_UP_CHATTER = re.compile(
    r"All log messages before absl::InitializeLog|Logging before InitGoogle|cudart_stub\.cc|"
    r"Could not find cuda drivers|TPU_WORKER_HOSTNAMES|TPU_ACCELERATOR_TYPE|libtpu\.so may not|"
    r"Source Location Trace|libtpu_init_utils|Failed to find host bounds|^=+\s*$")


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[list]:
  """Redirects file descriptor 2 (where C++ libraries write) to a temporary file; the yielded
  list receives that text when the block ends, also when it raises."""
  sys.stderr.flush()
  saved = os.dup(2)
  captured: list[str] = []
  with tempfile.TemporaryFile(mode="w+b") as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield captured
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      sink.seek(0)
      captured.append(sink.read().decode("utf-8", "replace"))


def without_chatter(text: str) -> str:
  """``text`` without the lines :data:`START_UP_CHATTER` matches."""
  return "".join(line for line in text.splitlines(keepends=True)
                 if line.strip() and not START_UP_CHATTER.search(line))


@contextlib.contextmanager
def chatter_filtered() -> Iterator[None]:
  """Within this block native stderr output reaches the console without the start-up chatter."""
  with native_stderr_captured() as captured:
    yield
  kept = without_chatter("".join(captured))
  if kept:
    sys.stderr.write(kept if kept.endswith("\n") else kept + "\n")


class _AbsentGpuPluginErrors(logging.Filter):
  """Drops JAX's "Jax plugin configuration error" records about the CUDA plugin (a traceback
  ending in "Unable to load CUDA"): what the [aot] extra's plugin logs on a machine without an
  NVIDIA GPU, where it has nothing to do."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("plugin configuration error" in message and "xla_cuda" in message)


def has_nvidia_device() -> bool:
  """Whether the machine shows an NVIDIA GPU (``/dev/nvidia0``, ``/dev/nvidia1``...)."""
  if not os.path.isdir("/dev"):
    return False
  return any(name.startswith("nvidia") and name[len("nvidia"):].isdigit()
             for name in os.listdir("/dev"))


@contextlib.contextmanager
def absent_gpu_plugin_quiet() -> Iterator[None]:
  """Within this block, on a machine without an NVIDIA GPU, the CUDA plugin's start-up error
  (:class:`_AbsentGpuPluginErrors`) is not logged; with a GPU every record passes."""
  if has_nvidia_device():
    yield
    return
  quiet, logger = _AbsentGpuPluginErrors(), logging.getLogger("jax._src.xla_bridge")
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def import_jax_quietly() -> None:
  """``import jax`` (and its plugins' start-up) without their chatter on the console."""
  with chatter_filtered():
    import jax  # pylint: disable=import-outside-toplevel,unused-import


@contextlib.contextmanager
def phase(what: str, log: Callable[[str], None], *, every: float = 10.0,
          note: str = "") -> Iterator[None]:
  """Says ``what...`` (+ ``note``) now and ``still <what>: N s`` every ``every`` seconds while
  the block runs (from a helper thread: the block may sit in one long C++ call, such as XLA
  compiling), so a console never stays silent through a long phase. ``log`` prints one line."""
  log(f"{what}...{' ' + note if note else ''}")
  done = threading.Event()
  start = time.perf_counter()

  def beat():
    while not done.wait(every):
      log(f"still {what}: {time.perf_counter() - start:.0f} s")

  ticker = threading.Thread(target=beat, name=f"phase: {what}", daemon=True)
  ticker.start()
  try:
    yield
  finally:
    done.set()
    ticker.join()
