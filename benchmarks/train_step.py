"""Two-step train step: JAX (seamless_jax.train.steps) vs the same step in PyTorch/diffusers.

  python benchmarks/train_step.py --model=tiny --batch=8 --resolution=32
  python benchmarks/train_step.py --model=small --batch=2 --resolution=256 --steps=3
  python benchmarks/train_step.py --model=sd15 --batch=8 --resolution=512 --dtype=bfloat16  # GPU

Same batch (random images/masks/ids), same model sizes with random weights, same run. Each step:
frozen VAE encode of image and masked image, frozen text encoder, UNet twice (two-step loss with
blending), backward, clipping, AdamW (the JAX step also keeps an EMA). Prints phase times of the
JAX side (set-up, lowering, compile), steps/s of both (median over ``--repeats`` timed windows),
their ratio and the JAX MFU by the analytic FLOP count (:mod:`seamless_jax.runtime.flops`).

The JAX side is built exactly as training builds it (``trainer_lib.setup`` + ``trainer_lib.compile_step``);
``benchmarks/gpu_suite.py`` imports :func:`jax_step_benchmark` and :func:`torch_step_benchmark`.
On a GPU the PyTorch peer runs bf16 autocast, SDPA attention and fused AdamW.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # seamless_jax from the checkout, installed or not
sys.path.insert(0, os.path.join(ROOT, "tests"))  # tiny.py: the tests' tiny configs

import tiny  # pylint: disable=wrong-import-position
from seamless_jax.data import transforms  # pylint: disable=wrong-import-position
from seamless_jax.models import presets  # pylint: disable=wrong-import-position
from seamless_jax.train import trainer as trainer_lib  # pylint: disable=wrong-import-position
from seamless_jax import build as models_lib  # pylint: disable=wrong-import-position
from seamless_jax.runtime import sharding as shd  # pylint: disable=wrong-import-position

# UNet, VAE, text configs per --model. 'small' is SD-1.5's UNet at 1/5 of the width (35M params)
# with the real-size frozen VAE and text encoder: big enough not to be dispatch-bound, small
# enough that two fp32 AdamW trainers fit a 24 GB CPU host (full SD-1.5 does not).
SMALL_UNET = {**presets.SD15_UNET, "block_out_channels": [64, 128, 256, 256]}
MODEL_CONFIGS = {
    "tiny": (presets.TINY_UNET, presets.TINY_VAE, presets.TINY_TEXT),
    "small": (SMALL_UNET, presets.SD15_VAE, presets.SD15_TEXT),
    "sd15": (presets.SD15_UNET, presets.SD15_VAE, presets.SD15_TEXT),
}


def random_batch(batch: int, resolution: int, seed: int = 0) -> dict:
  """uint8 images, a centre hole (keep = 0) and token ids, as the data pipeline gives them."""
  rng = np.random.default_rng(seed)
  r = resolution
  keep = np.ones((batch, r, r, 1), np.uint8)
  keep[:, r // 4: 3 * r // 4, r // 4: 3 * r // 4] = 0
  return {"image": rng.integers(0, 256, (batch, r, r, 3), dtype=np.uint8), "keep": keep,
          "input_ids": rng.integers(0, 990, (batch, 77)).astype(np.int32)}


def bench_config(model: str, batch: int, resolution: int, dtype: str, data_dir: str,
                 **overrides):
  """The ``two_step:tiny`` config at this size; ``model != 'tiny'`` builds random models of that
  size (:func:`random_models`), so no pretrained folder is needed."""
  data_dir = tiny.write_tiny_data(data_dir, resolution=32)
  config = tiny.tiny_config("two_step", data_dir, batch_size=batch, dtype=dtype, **overrides)
  config.data.resolution = config.data.min_side = resolution
  if model != "tiny":
    config.fsdp_min_size = 2 ** 18
  return config


def random_models(model: str):
  """``build_models`` replacement: modules of ``model``'s size, params left to the random init."""
  from seamless_jax.models import AutoencoderKL, CLIPTextModel, UNet2DConditionModel  # pylint: disable=import-outside-toplevel

  def build(cfg, vocab_size=None):
    rt = models_lib.runtime_options(cfg)
    unet_cfg, vae_cfg, text_cfg = MODEL_CONFIGS[model]
    if model == "tiny":
      text_cfg = models_lib.tiny_text_config(vocab_size)
    return models_lib.Models(vae=AutoencoderKL.from_config(vae_cfg, **rt),
                             text=CLIPTextModel.from_config(text_cfg, **rt),
                             unet=UNet2DConditionModel.from_config(unet_cfg, **rt))
  return build


def peak_memory_gb() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return peak / 2 ** 30 if peak else None


def temp_memory_gb(compiled) -> float | None:
  """XLA's temporary buffer size of an AOT-compiled step (``compilation.Compiled``), in GiB."""
  stats = compiled.fn.memory_analysis()
  return stats.temp_size_in_bytes / 2 ** 30 if stats is not None else None


def jax_step_benchmark(config, batch: dict, steps: int, repeats: int = 3,
                       build_models=None) -> dict:
  """Phase times and throughput of the JAX step built as training builds it.

  ``build_models``: replaces ``loading.build_models`` (e.g. :func:`random_models`).

  Returns ``setup_s`` (``trainer_lib.setup``: models, random init, optimizer, EMA), ``lower_s``,
  ``compile_s``, ``first_step_s`` (set-up + lowering + compile + one step), ``steps_per_s``
  (median of ``repeats`` windows of ``steps`` steps), ``flops`` per step (all devices),
  ``mfu`` (None without a known peak), ``peak_gb``, ``temp_gb`` (the compiled step's XLA temporary
  buffers, activations kept for the backward pass included: what remat policies change; known on
  every backend, also where ``peak_gb`` is not).
  """
  if build_models is not None:
    trainer_lib.loading.build_models = build_models
  t0 = time.perf_counter()
  trainer = trainer_lib.setup(config)
  jax.block_until_ready(trainer.state)
  setup_s = time.perf_counter() - t0
  compiled = trainer_lib.compile_step(trainer)
  device_batch = shd.shard_batch(batch, trainer.mesh)
  carry = {"state": None}
  carry["state"], metrics = compiled(trainer.state, trainer.frozen, device_batch)
  jax.block_until_ready(metrics)
  first_step_s = time.perf_counter() - t0

  def run_window(n: int) -> float:
    """Runs ``n`` steps; returns steps/s."""
    t = time.perf_counter()
    for _ in range(n):
      carry["state"], m = compiled(carry["state"], trainer.frozen, device_batch)
    jax.block_until_ready(m)
    return n / (time.perf_counter() - t)

  rates = [run_window(steps) for _ in range(repeats)]
  flops_per_device = trainer_lib.compiled_flops(compiled, trainer.mesh.size)
  peak = trainer_lib.peak_flops(config)
  sps = statistics.median(rates) if rates else None
  return {"setup_s": setup_s, "lower_s": compiled.lower_s, "compile_s": compiled.compile_s,
          "first_step_s": first_step_s, "steps_per_s": sps, "rates": rates,
          "flops": compiled.flops, "flops_per_device": flops_per_device, "peak_flops": peak,
          "mfu": flops_per_device * sps / peak if sps and flops_per_device and peak else None,
          "peak_gb": peak_memory_gb(), "temp_gb": temp_memory_gb(compiled),
          "loss": float(metrics["loss"]), "run_window": run_window}


def torch_step_benchmark(model: str, batch: dict, steps: int, repeats: int = 3,
                         device: str = "cpu", bf16: bool = False, stride: int = 20,
                         weight: float = 0.5) -> dict:
  """The same two-step step with diffusers/transformers modules (no EMA).

  ``device='cuda'``: fused AdamW; ``bf16``: autocast to bfloat16. Attention is diffusers'
  default (``F.scaled_dot_product_attention``). Returns ``setup_s``, ``first_step_s``,
  ``steps_per_s`` (median of ``repeats`` windows), ``peak_gb`` (CUDA only).
  """
  import diffusers, torch, transformers  # pylint: disable=import-outside-toplevel,multiple-imports
  t0 = time.perf_counter()
  torch.manual_seed(0)
  unet_cfg, vae_cfg, text_cfg = MODEL_CONFIGS[model]
  unet = diffusers.UNet2DConditionModel(**unet_cfg).train().to(device)
  vae = diffusers.AutoencoderKL(**vae_cfg).eval().requires_grad_(False).to(device)
  text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**dict(text_cfg))).eval()
  text = text.requires_grad_(False).to(device)
  opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=device == "cuda")
  sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012)
  ac = sched.alphas_cumprod.float().to(device)
  inputs = transforms.model_inputs(batch)  # float32 image in [-1, 1] and keep, on the host
  image = torch.from_numpy(inputs["image"]).permute(0, 3, 1, 2).to(device)
  keep = torch.from_numpy(inputs["keep"]).permute(0, 3, 1, 2).to(device)
  ids = torch.from_numpy(batch["input_ids"]).long().clamp(max=text_cfg["vocab_size"] - 1)
  ids = ids.to(device)
  autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)

  def step():
    with torch.no_grad(), autocast:
      ctx = text(ids)[0]
      lat = vae.encode(torch.cat([image, image * keep])).latent_dist.mean.float() * 0.18215
      z0, z0k = lat.chunk(2)
      kl = torch.nn.functional.interpolate(keep, size=z0.shape[-2:], mode="nearest")
    t = torch.randint(stride, 1000, (z0.shape[0],), device=device)
    e1, e2 = torch.randn_like(z0), torch.randn_like(z0)
    a1 = ac[t].view(-1, 1, 1, 1)
    zt = a1.sqrt() * z0 + (1 - a1).sqrt() * e1
    v1 = a1.sqrt() * e1 - (1 - a1).sqrt() * z0
    with autocast:
      vp = unet(zt, t, ctx).sample.float()
    loss1 = ((vp - v1) ** 2).mean()
    z0h = (a1.sqrt() * zt - (1 - a1).sqrt() * vp).detach()
    z0h = z0h * (1 - kl) + z0k * kl
    a2 = ac[t - stride].view(-1, 1, 1, 1)
    ztp = a2.sqrt() * z0h + (1 - a2).sqrt() * e2
    e2s = e2 + a2.sqrt() * (z0h - z0) / (1 - a2).sqrt()
    v2 = a2.sqrt() * e2s - (1 - a2).sqrt() * z0
    with autocast:
      v2p = unet(ztp, t - stride, ctx).sample.float()
    loss = loss1 + weight * ((v2p - v2) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()
    return loss

  def sync():
    if device == "cuda":
      torch.cuda.synchronize()

  setup_s = time.perf_counter() - t0
  step()
  sync()
  first_step_s = time.perf_counter() - t0

  def run_window(n: int) -> float:
    """Runs ``n`` steps; returns steps/s."""
    t = time.perf_counter()
    for _ in range(n):
      step()
    sync()
    return n / (time.perf_counter() - t)

  rates = [run_window(steps) for _ in range(repeats)]
  peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None
  return {"setup_s": setup_s, "first_step_s": first_step_s,
          "steps_per_s": statistics.median(rates) if rates else None, "rates": rates,
          "peak_gb": peak, "run_window": run_window}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="tiny", choices=sorted(MODEL_CONFIGS))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--resolution", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5, help="steps per timed window")
  parser.add_argument("--repeats", type=int, default=3, help="timed windows (median reported)")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--remat", default="", help="'' (off) or a config.remat_policy: "
                      "nothing_saveable, dots_with_no_batch_dims_saveable, dots_saveable")
  parser.add_argument("--data_dir", default="/tmp/seamless_bench_data")
  parser.add_argument("--cache_dir", default="none",
                      help="persistent compilation cache ('none' = cold compile every run)")
  args = parser.parse_args()
  config = bench_config(args.model, args.batch, args.resolution, args.dtype, args.data_dir,
                        remat=bool(args.remat), remat_policy=args.remat or "nothing_saveable",
                        compilation_cache_dir=args.cache_dir)
  batch = random_batch(args.batch, args.resolution)
  jx = jax_step_benchmark(config, batch, args.steps, 0,
                          build_models=random_models(args.model) if args.model != "tiny" else None)
  on_gpu = jax.default_backend() == "gpu"
  pt = torch_step_benchmark(args.model, batch, args.steps, 0,
                            device="cuda" if on_gpu else "cpu",
                            bf16=args.dtype == "bfloat16" and on_gpu)
  # Alternate timed windows so both frameworks see the same machine load (shared hosts).
  for _ in range(args.repeats):
    jx["rates"].append(jx["run_window"](args.steps))
    pt["rates"].append(pt["run_window"](args.steps))
  jax_sps, torch_sps = statistics.median(jx["rates"]), statistics.median(pt["rates"])
  ratios = [a / b for a, b in zip(jx["rates"], pt["rates"])]
  mfu = (f"{100 * jx['flops_per_device'] * jax_sps / jx['peak_flops']:.1f}%"
         if jx["flops_per_device"] and jx["peak_flops"] else "n/a")
  r = args.resolution
  side = r // 2 ** (len(MODEL_CONFIGS[args.model][1]["block_out_channels"]) - 1)
  dev = jax.devices()[0]
  print(f"JAX phases: set-up {jx['setup_s']:.1f}s, lowering {jx['lower_s']:.1f}s, compile "
        f"{jx['compile_s']:.1f}s, first step after {jx['first_step_s']:.1f}s; "
        f"{(jx['flops'] or 0) / 1e9:.2f} GFLOP/step; XLA temp buffers "
        f"{jx['temp_gb'] or 0:.3f} GiB; windows (steps/s) JAX "
        f"{np.round(jx['rates'], 3)}, PyTorch {np.round(pt['rates'], 3)}, per-window ratio "
        f"{np.round(ratios, 2)}")
  print(f"| {args.model} | {args.batch} | {r}² ({side}² latents) | {args.dtype} | "
        f"{dev.device_kind} x{jax.device_count()} | {jax_sps:.3f} | {torch_sps:.3f} | "
        f"{jax_sps / torch_sps:.2f}x (median window ratio {statistics.median(ratios):.2f}x) | "
        f"{mfu} |")


if __name__ == "__main__":
  main()
