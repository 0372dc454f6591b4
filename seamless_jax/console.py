"""The console of this project's commands: JAX plugins' start-up chatter kept off it.

With the ``[aot]`` extra installed (libtpu, the CUDA PJRT plugin) on a machine without TPU or
GPU, ``import jax`` and the first ``jax.devices()`` make those C++ libraries print lines such as
``cudart_stub.cc:31] Could not find cuda drivers`` straight to file descriptor 2, which read as
errors. The command-line entry points import JAX through :func:`import_jax_quietly` and start
its backends inside :func:`chatter_filtered`; anything else the libraries print is passed on.
This module imports nothing from JAX, so it can run before JAX loads.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

# What the plugins print when their hardware is absent: information, not errors.
START_UP_CHATTER = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|Could not find cuda drivers|"
    r"TPU_WORKER_HOSTNAMES|TPU_ACCELERATOR_TYPE|libtpu\.so may not|Source Location Trace|"
    r"libtpu_init_utils|Failed to find host bounds|^=+\s*$")


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


def import_jax_quietly() -> None:
  """``import jax`` (and its plugins' start-up) without their chatter on the console."""
  with chatter_filtered():
    import jax  # pylint: disable=import-outside-toplevel,unused-import
