"""XLA's temporary buffer size of a gradient, per remat policy (`config.remat_policy`).

  python benchmarks/remat_memory.py                   # tiny and 'small' UNet, and an MLP control
  python benchmarks/remat_memory.py --unets=sd15 --batch=8 --latent=64   # on an accelerator

For each policy the UNet's ``jax.grad`` of a mean-square loss is compiled (nothing runs) and
``compiled.memory_analysis().temp_size_in_bytes`` is printed. The control is a 20-layer tanh MLP
with and without per-layer ``jax.checkpoint(policy=nothing_saveable)``: on a backend whose
scheduler honours rematerialisation the checkpointed version needs less; XLA's CPU backend
needs more (docs/benchmarks.md). Prints Markdown rows.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from seamless_jax.models import UNet2DConditionModel, presets
from seamless_jax.models.layers import REMAT_POLICIES

UNETS = {"tiny": presets.TINY_UNET,
         "small": {**presets.SD15_UNET, "block_out_channels": [64, 128, 256, 256]},
         "sd15": presets.SD15_UNET}


def temp_mib(fn, *args) -> float:
  """Temporary buffer size of ``jax.jit(fn)`` compiled for ``args``, in MiB."""
  stats = jax.jit(fn).lower(*args).compile().memory_analysis()
  return stats.temp_size_in_bytes / 2 ** 20


def unet_grad_temp(config: dict, remat, batch: int, latent: int) -> float:
  unet = UNet2DConditionModel.from_config(config, remat=remat)
  z = jax.ShapeDtypeStruct((batch, latent, latent, config["in_channels"]), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.int32)
  context = jax.ShapeDtypeStruct((batch, 77, config["cross_attention_dim"]), jnp.float32)
  params = jax.eval_shape(unet.init, jax.random.key(0), z, t, context)
  loss = lambda p, z, t, c: jnp.mean(unet.apply(p, z, t, c) ** 2)
  return temp_mib(jax.grad(loss), params, z, t, context)


def mlp_grad_temp(checkpointed: bool, layers: int = 20, rows: int = 4096, width: int = 512) -> float:
  def layer(w, x):
    return jnp.tanh(x @ w)
  if checkpointed:
    layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.nothing_saveable)

  def loss(weights, x):
    for w in weights:
      x = layer(w, x)
    return jnp.sum(x ** 2)
  weights = [jax.ShapeDtypeStruct((width, width), jnp.float32)] * layers
  return temp_mib(jax.grad(loss), weights, jax.ShapeDtypeStruct((rows, width), jnp.float32))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--unets", default="tiny,small", help=f"comma list of {sorted(UNETS)}")
  parser.add_argument("--batch", type=int, default=0, help="0: 8 for tiny, 2 otherwise")
  parser.add_argument("--latent", type=int, default=0, help="0: 16 for tiny, 32 otherwise")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, device {jax.devices()[0].device_kind}")
  print("| model | remat_policy | XLA temp (MiB) |")
  print("|---|---|---|")
  for name in args.unets.split(","):
    batch = args.batch or (8 if name == "tiny" else 2)
    latent = args.latent or (16 if name == "tiny" else 32)
    for remat in (False, *REMAT_POLICIES):
      mib = unet_grad_temp(UNETS[name], remat, batch, latent)
      print(f"| {name} UNet grad, batch {batch}, {latent}² | {remat or 'off'} | {mib:.1f} |")
  for checkpointed in (False, True):
    print(f"| 20-layer tanh MLP grad, 4096×512 | {'nothing_saveable' if checkpointed else 'off'} "
          f"| {mlp_grad_temp(checkpointed):.1f} |")


if __name__ == "__main__":
  main()
