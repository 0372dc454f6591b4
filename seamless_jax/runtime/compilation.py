"""Compilation helpers: the persistent XLA cache and ahead-of-time compiled steps.

* :func:`enable_cache` turns JAX's persistent compilation cache on (by default in
  ``WORKDIR/xla_cache``), so a restarted run loads its init, train step and sampler programs
  from disk instead of compiling them again.
* :func:`aot_compile` is the one place that lowers and compiles a jitted function for given
  (abstract) arguments, timing both phases and counting its FLOPs by
  :mod:`seamless_jax.runtime.flops`; the training loop and the benchmarks both use it.
* :func:`run_once_options`: compiler options for programs that run once (the random init),
  which XLA then compiles in less than half the time.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from typing import Any, Callable

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache

from seamless_jax.runtime import flops as flops_lib

CACHE_SUBDIR = "xla_cache"
# LLVM's -O0 for the CPU and GPU backends. A random init is ~one threefry + truncated-normal
# fusion per parameter leaf, run once: at -O0 the tiny config's init compiles in 9 instead of
# 19 CPU s and still runs in 0.1 s (benchmarks/init_compile.py). The train step and the sampler
# keep the default level.
RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 0}


def run_once_options(platform: str | None = None) -> dict:
  """Compiler options for a program that runs once (``{}`` where they do not apply: TPU)."""
  platform = platform or jax.default_backend()
  return dict(RUN_ONCE_OPTIONS) if platform in ("cpu", "gpu", "cuda", "rocm") else {}


def cache_dir(config, workdir: str | None) -> str | None:
  """The cache folder: ``config.compilation_cache_dir``, else JAX's own
  ``$JAX_COMPILATION_CACHE_DIR`` when set (one cache for all runs), else ``workdir/xla_cache``;
  ``None`` when ``config.compilation_cache`` is off or there is no folder to use."""
  if not config.get("compilation_cache", True):
    return None
  configured = str(config.get("compilation_cache_dir", "")) or os.environ.get(
      "JAX_COMPILATION_CACHE_DIR", "")
  if configured:
    return configured
  return os.path.join(workdir, CACHE_SUBDIR) if workdir else None


def enable_cache(path: str | None, min_compile_secs: float = 1.0) -> str | None:
  """Points JAX's persistent compilation cache at ``path`` (created if missing).

  Programs that took at least ``min_compile_secs`` to compile are written there (any size);
  later processes with the same program, jax version and devices read them back.
  Returns the folder in use (``None``: left as it was).
  """
  if not path:
    return None
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update("jax_compilation_cache_dir", path)
    # The cache object is created on the first compile; a new folder needs a fresh one.
    compilation_cache.reset_cache()
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  logging.info("persistent compilation cache: %s", path)
  return path


def enable_cache_for(config, workdir: str | None) -> str | None:
  """:func:`enable_cache` with the folder and threshold from ``config``."""
  return enable_cache(cache_dir(config, workdir),
                      float(config.get("compilation_cache_min_secs", 1.0)))


@dataclasses.dataclass
class Compiled:
  """An ahead-of-time compiled function and what it cost to get it.

  fn: the ``jax.stages.Compiled`` (call it like the jitted function).
  flops: FLOPs of one call (whole program, all devices; :func:`flops_lib.count_flops`), or
    ``None`` when counting was skipped.
  lower_s / compile_s: seconds spent tracing+lowering and compiling (or loading from cache).
  """
  fn: Any
  flops: float | None
  lower_s: float
  compile_s: float

  def __call__(self, *args):
    return self.fn(*args)


def aot_compile(jitted: Callable, *args, count_flops: bool = True, name: str = "",
                compiler_options: dict | None = None, release_trace: bool = False) -> Compiled:
  """Lowers and compiles ``jitted`` for ``args`` (arrays or ``jax.ShapeDtypeStruct``s).

  The FLOP count walks the traced jaxpr (convolutions included, on every backend) and reuses
  the trace made for lowering. ``compiler_options``: XLA debug options for this program only
  (e.g. :func:`run_once_options`); they are part of the persistent cache's key.
  ``release_trace``: drop the jaxpr and JAX's trace caches before XLA compiles (processes that
  compile one big program and exit: an SD-1.5 step's trace holds gigabytes of host memory).
  """
  t0 = time.perf_counter()
  traced = jitted.trace(*args)
  lowered = traced.lower()
  flops = flops_lib.jaxpr_flops(traced.jaxpr) if count_flops else None
  if release_trace:
    del traced
    jax.clear_caches()
    gc.collect()
  t1 = time.perf_counter()
  compiled = lowered.compile(compiler_options or None)
  t2 = time.perf_counter()
  if name:
    logging.info("%s: lowered in %.1fs, compiled in %.1fs, %s", name, t1 - t0, t2 - t1,
                 f"{flops / 1e9:.1f} GFLOP per call" if flops else "FLOPs not counted")
  return Compiled(compiled, flops, t1 - t0, t2 - t1)
