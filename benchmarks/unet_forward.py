"""SD-1.5 UNet forward: Flax (jit) vs diffusers PyTorch, same weights, same inputs, same run.

  python benchmarks/unet_forward.py --batch_sizes=1,8 --latent=64 [--dtype=bfloat16]

Both models get identical random weights (the diffusers model is built from
the SD-1.5 config, written to a temporary folder and loaded through
`seamless_jax.convert.read_unet`). The outputs are compared first, so the
timing is of two implementations of the same function. Prints one markdown
table row per batch size, ready for docs/benchmarks.md.
"""

import argparse
import datetime
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch

from seamless_jax import convert
from seamless_jax.models import presets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sampler import hardware, median_seconds  # pylint: disable=wrong-import-position  (benchmarks/)


def time_call(fn, repeats):
  fn()  # warm-up / compile
  return median_seconds(fn, repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_sizes", default="1,8")
  parser.add_argument("--latent", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
  parser.add_argument("--config", default="SD15_UNET", help="a dict name in models/presets.py")
  args = parser.parse_args()

  import diffusers  # pylint: disable=import-outside-toplevel
  config = getattr(presets, args.config)
  torch.manual_seed(0)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}[args.dtype]
  reference = diffusers.UNet2DConditionModel(**config).eval()
  with tempfile.TemporaryDirectory() as folder:
    reference.save_pretrained(folder, safe_serialization=True)
    module, params = convert.read_unet(folder, dtype=jnp.dtype(args.dtype))
  reference = reference.to(device=device, dtype=torch_dtype)
  params = jax.device_put(params)
  forward = jax.jit(module.apply)

  print(f"# {args.config} forward, latent {args.latent}x{args.latent}, {args.dtype}, "
        f"{hardware()}, jax {jax.__version__}, torch {torch.__version__}, "
        f"{datetime.date.today()}")
  print("| batch | Flax jit (s) | diffusers (s) | speed-up (diffusers / Flax) | max abs diff |")
  print("|---|---|---|---|---|")
  for batch in [int(b) for b in args.batch_sizes.split(",")]:
    rng = np.random.RandomState(batch)
    sample = rng.randn(batch, args.latent, args.latent, config["in_channels"]).astype(np.float32)
    timesteps = rng.randint(0, 1000, size=(batch,))
    context = rng.randn(batch, 77, config["cross_attention_dim"]).astype(np.float32)
    jax_inputs = [jnp.asarray(x) for x in (sample, timesteps, context)]
    torch_inputs = (torch.from_numpy(sample).permute(0, 3, 1, 2).to(device, torch_dtype),
                    torch.from_numpy(timesteps).to(device),
                    torch.from_numpy(context).to(device, torch_dtype))

    def run_flax():
      return forward({"params": params}, *jax_inputs).block_until_ready()

    def run_torch():
      with torch.inference_mode():
        out = reference(*torch_inputs).sample
      if device == "cuda":
        torch.cuda.synchronize()
      return out

    diff = np.abs(np.asarray(run_flax(), np.float32)
                  - run_torch().float().permute(0, 2, 3, 1).cpu().numpy()).max()
    flax_s, torch_s = time_call(run_flax, args.repeats), time_call(run_torch, args.repeats)
    print(f"| {batch} | {flax_s:.3f} | {torch_s:.3f} | {torch_s / flax_s:.2f}x | {diff:.1e} |",
          flush=True)


if __name__ == "__main__":
  main()
