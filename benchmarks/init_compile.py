"""Compile time of the random init (tiny UNet + VAE + text encoder) per PRNG and XLA options.

  python benchmarks/init_compile.py

The init is what ``train/state.py`` compiles when nothing is pretrained (``:tiny``/``:demo``,
benchmarks with random weights): one program with a threefry + truncated-normal fusion per
parameter leaf. Each case runs in a fresh process (no in-memory compile cache) and prints CPU
seconds of lowering, compiling and running it. ``-O0`` is ``compilation.run_once_options()``,
what training uses for this program.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

CASES = (("threefry2x32", "default"), ("threefry2x32", "-O0"), ("rbg", "default"),
         ("unsafe_rbg", "default"))


def measure(impl: str, level: str) -> dict:
  """CPU seconds of lowering / compiling / running the tiny random init (this process)."""
  import jax  # pylint: disable=import-outside-toplevel
  from seamless_jax.models import AutoencoderKL, CLIPTextModel, UNet2DConditionModel, presets  # pylint: disable=import-outside-toplevel
  from seamless_jax.runtime import compilation  # pylint: disable=import-outside-toplevel
  from seamless_jax import build as models_lib  # pylint: disable=import-outside-toplevel
  modules = (UNet2DConditionModel.from_config(presets.TINY_UNET),
             AutoencoderKL.from_config(presets.TINY_VAE),
             CLIPTextModel.from_config(models_lib.tiny_text_config(1000)))

  def init(key):
    keys = jax.random.split(key, len(modules))
    return [m.init(k, *m.dummy_inputs()) for m, k in zip(modules, keys)]

  key = jax.random.key(0, impl=impl)
  options = compilation.run_once_options() if level == "-O0" else None
  t0 = time.process_time()
  lowered = jax.jit(init).lower(key)
  t1 = time.process_time()
  compiled = lowered.compile(options)
  t2 = time.process_time()
  jax.block_until_ready(compiled(key))
  t3 = time.process_time()
  leaves = len(jax.tree_util.tree_leaves(compiled(key)))
  return {"lower": t1 - t0, "compile": t2 - t1, "run": t3 - t2, "leaves": leaves}


def main():
  if len(sys.argv) == 3:  # one case, in this process
    print(json.dumps(measure(sys.argv[1], sys.argv[2])))
    return
  print("| PRNG | XLA options | lower (CPU s) | compile (CPU s) | run (CPU s) | leaves |")
  print("|---|---|---|---|---|---|")
  for impl, level in CASES:
    out = subprocess.run([sys.executable, __file__, impl, level], capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    print(f"| {impl} | {level} | {r['lower']:.1f} | {r['compile']:.1f} | {r['run']:.2f} "
          f"| {r['leaves']} |")


if __name__ == "__main__":
  main()
