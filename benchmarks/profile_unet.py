"""Where a UNet's forward+backward spends its time, per module and per primitive (JAX profiler).

  python benchmarks/profile_unet.py                       # tiny UNet, batch 8, 16² latents
  python benchmarks/profile_unet.py --unet=small --batch=2 --latent=32

Traces ``--calls`` calls of the jitted ``grad`` of a mean-square loss with ``jax.profiler``
(perfetto trace), maps every executed XLA op back to the JAX code it came from through the
compiled HLO's ``op_name`` metadata, and prints the milliseconds per call of the most expensive
modules (last two name components, e.g. ``transformer_blocks/attn1``) and primitives
(``fwd``/``bwd`` + the primitive, e.g. ``bwd reduce_sum``). This is how the attention softmax was
found to be the CPU step's gap (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from seamless_jax.models import UNet2DConditionModel, presets

UNETS = {"tiny": presets.TINY_UNET,
         "small": {**presets.SD15_UNET, "block_out_channels": [64, 128, 256, 256]}}


def op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> the ``op_name`` metadata (the JAX call path) of a compiled HLO text."""
  pattern = r"^\s*%?([\w.\-]+) = [^\n]*?metadata=\{op_name=\"([^\"]+)\""
  return {m.group(1): m.group(2) for m in re.finditer(pattern, hlo_text, re.M)}


def trace_events(folder: str) -> list[dict]:
  path = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)
  return events["traceEvents"] if isinstance(events, dict) else events


def attribute(events: list[dict], names: dict[str, str], calls: int):
  """(ms per call by module, ms per call by direction + primitive)."""
  by_module, by_primitive = collections.Counter(), collections.Counter()
  for event in events:
    if event.get("ph") != "X" or event["name"] not in names:
      continue
    path = names[event["name"]]
    parts = path.split("/")
    direction = "bwd" if "transpose(" in path else "fwd"
    by_primitive[f"{direction} {parts[-1]}"] += event["dur"] / 1e3 / calls
    scopes = [p for p in parts[1:-1] if not p.startswith(("jvp(", "transpose(", "vmap("))]
    module = re.sub(r"_\d+", "", "/".join(scopes[-2:]))
    by_module[module] += event["dur"] / 1e3 / calls
  return by_module, by_primitive


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--unet", default="tiny", choices=sorted(UNETS))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--latent", type=int, default=16)
  parser.add_argument("--calls", type=int, default=10)
  parser.add_argument("--top", type=int, default=12)
  args = parser.parse_args()
  config = UNETS[args.unet]
  unet = UNet2DConditionModel.from_config(config)
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal((args.batch, args.latent, args.latent, 4)), jnp.float32)
  t = jnp.full((args.batch,), 500, jnp.int32)
  context = jnp.asarray(rng.standard_normal((args.batch, 77, config["cross_attention_dim"])),
                        jnp.float32)
  params = jax.jit(unet.init)(jax.random.key(0), z, t, context)
  grad = jax.jit(jax.grad(lambda p: jnp.mean(unet.apply(p, z, t, context) ** 2)))
  compiled = grad.lower(params).compile()
  for _ in range(3):
    jax.block_until_ready(compiled(params))
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(args.calls):
        jax.block_until_ready(compiled(params))
    events = trace_events(folder)
  by_module, by_primitive = attribute(events, op_names(compiled.as_text()), args.calls)
  print(f"{args.unet} UNet forward+backward, batch {args.batch}, {args.latent}² latents, "
        f"{jax.devices()[0].device_kind}: {sum(by_module.values()):.1f} ms of XLA ops per call")
  for title, counts in (("module", by_module), ("primitive", by_primitive)):
    print(f"| {title} | ms per call |\n|---|---|")
    for name, ms in counts.most_common(args.top):
      print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
  main()
