"""Two-step train step: JAX (seamless_jax.train.steps) vs the same step in PyTorch/diffusers.

  python benchmarks/train_step.py --model=tiny --batch=8 --resolution=32
  python benchmarks/train_step.py --model=sd15 --batch=1 --resolution=256   # 32x32 latents

Same batch (random images/masks/ids), same random init sizes, same run. Each step: frozen VAE
encode of image and masked image, frozen text encoder, UNet twice (two-step loss with blending),
backward, AdamW. Prints steps/s of both and their ratio; on an accelerator also the JAX MFU.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/
sys.path.insert(0, os.path.join(ROOT, "tests"))  # tiny.py: the tests' tiny configs

import tiny  # pylint: disable=wrong-import-position
from seamless_jax.models import presets
from seamless_jax.train import loop
from seamless_jax.train import sharding as shd


def jax_steps_per_sec(config, batch, steps):
  trainer = loop.setup(config)
  compiled = trainer.step_fn.lower(trainer.state, trainer.frozen,
                                   loop.abstract_batch(config, trainer.mesh)).compile()
  flops = loop.compiled_flops(compiled)
  b = shd.shard_batch(batch, trainer.mesh)
  state, m = compiled(trainer.state, trainer.frozen, b)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, trainer.frozen, b)
  jax.block_until_ready(m)
  sps = steps / (time.perf_counter() - t)
  peak = loop.peak_flops(config)
  return sps, (flops * sps / peak if flops and peak else None)


# UNet, VAE, text configs per --model. 'small' is SD-1.5's UNet at 1/5 of the width (35M params)
# with the real-size frozen VAE and text encoder: big enough not to be dispatch-bound, small
# enough that two fp32 AdamW trainers fit a 24 GB CPU host (full SD-1.5 does not).
SMALL_UNET = {**presets.SD15_UNET, "block_out_channels": [64, 128, 256, 256]}
MODEL_CONFIGS = {
    "tiny": (presets.TINY_UNET, presets.TINY_VAE, presets.TINY_TEXT),
    "small": (SMALL_UNET, presets.SD15_VAE, presets.SD15_TEXT),
    "sd15": (presets.SD15_UNET, presets.SD15_VAE, presets.SD15_TEXT),
}


def torch_steps_per_sec(model, batch, steps, stride=20, weight=0.5):
  import diffusers, torch, transformers  # pylint: disable=import-outside-toplevel,multiple-imports
  torch.manual_seed(0)
  unet_cfg, vae_cfg, text_cfg = MODEL_CONFIGS[model]
  text_cfg = dict(text_cfg)
  unet = diffusers.UNet2DConditionModel(**unet_cfg).train()
  vae = diffusers.AutoencoderKL(**vae_cfg).eval().requires_grad_(False)
  text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_cfg)).eval()
  text.requires_grad_(False)
  opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
  sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012)
  ac = sched.alphas_cumprod.float()
  image = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2)
  keep = torch.from_numpy(batch["keep"]).permute(0, 3, 1, 2)
  ids = torch.from_numpy(batch["input_ids"]).long().clamp(max=text_cfg["vocab_size"] - 1)

  def step():
    with torch.no_grad():
      ctx = text(ids)[0]
      lat = vae.encode(torch.cat([image, image * keep])).latent_dist.mean * 0.18215
      z0, z0k = lat.chunk(2)
      kl = torch.nn.functional.interpolate(keep, size=z0.shape[-2:], mode="nearest")
    t = torch.randint(stride, 1000, (z0.shape[0],))
    e1, e2 = torch.randn_like(z0), torch.randn_like(z0)
    a1 = ac[t].view(-1, 1, 1, 1)
    zt = a1.sqrt() * z0 + (1 - a1).sqrt() * e1
    v1 = a1.sqrt() * e1 - (1 - a1).sqrt() * z0
    vp = unet(zt, t, ctx).sample
    loss1 = ((vp - v1) ** 2).mean()
    z0h = (a1.sqrt() * zt - (1 - a1).sqrt() * vp).detach()
    z0h = z0h * (1 - kl) + z0k * kl
    a2 = ac[t - stride].view(-1, 1, 1, 1)
    ztp = a2.sqrt() * z0h + (1 - a2).sqrt() * e2
    e2s = e2 + a2.sqrt() * (z0h - z0) / (1 - a2).sqrt()
    v2 = a2.sqrt() * e2s - (1 - a2).sqrt() * z0
    loss = loss1 + weight * ((unet(ztp, t - stride, ctx).sample - v2) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()

  step()
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  return steps / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="tiny", choices=sorted(MODEL_CONFIGS))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--resolution", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--data_dir", default="/tmp/seamless_bench_data")
  args = parser.parse_args()
  data_dir = tiny.write_tiny_data(args.data_dir, resolution=max(args.resolution, 32))
  config = tiny.tiny_config("two_step", data_dir, batch_size=args.batch, dtype=args.dtype)
  config.data.resolution = config.data.min_side = args.resolution
  if args.model != "tiny":
    # Random models of --model's size: benchmark only (no pretrained folder needed).
    from seamless_jax.train import models as models_lib  # pylint: disable=import-outside-toplevel

    def random_models(cfg, vocab_size=None):
      from seamless_jax.models import (AutoencoderKL, CLIPTextModel,  # pylint: disable=import-outside-toplevel
                                       UNet2DConditionModel)
      rt = models_lib.runtime_options(cfg)
      unet_cfg, vae_cfg, text_cfg = MODEL_CONFIGS[args.model]
      return models_lib.Models(
          vae=AutoencoderKL.from_config(vae_cfg, **rt),
          text=CLIPTextModel.from_config(text_cfg, **rt),
          unet=UNet2DConditionModel.from_config(unet_cfg, **rt))
    loop.models_lib.build_models = random_models
    config.fsdp_min_size = 2 ** 18
  rng = np.random.default_rng(0)
  r = args.resolution
  keep = np.ones((args.batch, r, r, 1), np.float32)
  keep[:, r // 4: 3 * r // 4, r // 4: 3 * r // 4] = 0
  batch = {"image": rng.uniform(-1, 1, (args.batch, r, r, 3)).astype(np.float32), "keep": keep,
           "input_ids": rng.integers(0, 990, (args.batch, 77)).astype(np.int32)}
  jax_sps, mfu = jax_steps_per_sec(config, batch, args.steps)
  torch_sps = torch_steps_per_sec(args.model, batch, args.steps)
  dev = jax.devices()[0]
  print(f"| {args.model} | {args.batch} | {r}² ({r // 8}² latents) | {args.dtype} | "
        f"{dev.device_kind} x{jax.device_count()} | {jax_sps:.3f} | {torch_sps:.3f} | "
        f"{jax_sps / torch_sps:.2f}x | {'%.1f%%' % (100 * mfu) if mfu else 'n/a'} |")


if __name__ == "__main__":
  main()
