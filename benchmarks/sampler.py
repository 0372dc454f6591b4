"""50-step BLD sampling latency: JAX (`make_bld_sampler`, one jit) vs the same loop in PyTorch.

  python benchmarks/sampler.py --unet=tiny --latent=16 --batch=1            # CPU-sized
  python benchmarks/sampler.py --unet=small --latent=32 --batch=1
  python benchmarks/sampler.py --unet=sd15 --latent=64 --batch=1,4          # SD-1.5 at 512²

Both sides run the UNet only (latents in, latents out; no VAE, no text encoder): DDIM with
diffusers' SD-1.5 scheduler settings (scaled-linear β, 'leading' spacing, steps_offset 1,
set_alpha_to_one False), classifier-free guidance as one 2B batch (uncond first), and blended
latent diffusion (paper Eq. 5: before every UNet call the known region is replaced by the known
latent noised to t; after the last step by the clean known latent).

* JAX: `seamless_jax.diffusion.sampler.make_bld_sampler` with the Flax UNet (`convert.read_unet`).
* PyTorch: the same loop written here with diffusers' `UNet2DConditionModel` and
  `DDIMScheduler` (`add_noise`, `step`).

Identical weights: a random diffusers UNet is saved to a temporary folder and loaded by
`convert.read_unet`. Identical noise: the JAX sampler draws its noise from the key (initial
latent from `split(key)[0]`, step i's blend noise from `split(fold_in(split(key)[1], i))[0]`);
the same arrays are drawn here and handed to the PyTorch loop, so the two final latents can be
compared (max abs diff printed). Timing: each framework is timed on its own after one warm-up
call (the JAX warm-up includes the compile, reported separately); median of `--repeats` calls.
Prints markdown rows for docs/benchmarks.md.

On a CPU host shared with other work, pin the run (`taskset -c 0 python benchmarks/sampler.py
...`): both frameworks then use the pinned cores (torch's thread count follows the affinity).
Unpinned on an oversubscribed host, PyTorch's OpenMP threads spin against each other and its
times grow by 10-100x, which measures the contention, not the sampler.
"""

import argparse
import datetime
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from seamless_jax import convert
from seamless_jax.diffusion import schedule as sched
from seamless_jax.diffusion.sampler import make_bld_sampler
from seamless_jax.models import presets

UNET_CONFIGS = {
    "tiny": presets.TINY_UNET,
    # SD-1.5's UNet at 1/5 of the width (as benchmarks/train_step.py 'small')
    "small": {**presets.SD15_UNET, "block_out_channels": [64, 128, 256, 256]},
    "sd15": presets.SD15_UNET,
}
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1,
                 timestep_spacing="leading", clip_sample=False)
TEXT_TOKENS = 77


def hardware() -> str:
  devices = jax.devices()
  if devices[0].platform == "cpu":
    return (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{len(os.sched_getaffinity(0))} usable, torch threads {torch.get_num_threads()}")
  return f"{devices[0].device_kind} x{len(devices)}"


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def make_inputs(batch: int, latent: int, context_dim: int, seed: int = 0):
  """NHWC float32 numpy: known latent, latent keep (left half known), cond, uncond."""
  rng = np.random.default_rng(seed)
  z0_known = rng.standard_normal((batch, latent, latent, 4)).astype(np.float32)
  keep = np.zeros((batch, latent, latent, 1), np.float32)
  keep[:, :, : latent // 2] = 1.0
  cond = rng.standard_normal((batch, TEXT_TOKENS, context_dim)).astype(np.float32)
  uncond = rng.standard_normal((1, TEXT_TOKENS, context_dim)).astype(np.float32)
  return z0_known, keep, cond, uncond


def sampler_noise(key, shape, steps: int):
  """The initial latent and the per-step blend noise the JAX sampler draws from ``key``."""
  init_key, loop_key = jax.random.split(key)
  init = jax.random.normal(init_key, shape, jnp.float32)
  blend = [jax.random.normal(jax.random.split(jax.random.fold_in(loop_key, i))[0], shape)
           for i in range(steps)]
  return np.asarray(init), [np.asarray(n) for n in blend]


def torch_bld(unet, scheduler, z0_known, keep, cond, uncond, init, blend_noise, guidance):
  """The BLD loop in PyTorch (NCHW tensors); returns the final blended latent."""
  batch = z0_known.shape[0]
  context = torch.cat([uncond.expand(batch, -1, -1), cond], dim=0)
  z = init
  for i, t in enumerate(scheduler.timesteps):
    noised_known = scheduler.add_noise(z0_known, blend_noise[i], t.reshape(1))
    z = z * (1 - keep) + noised_known * keep
    out = unet(torch.cat([z, z]), t, encoder_hidden_states=context).sample
    out_u, out_c = out.chunk(2)
    z = scheduler.step(out_u + guidance * (out_c - out_u), t, z).prev_sample
  return z * (1 - keep) + z0_known * keep


def build(config: dict, prediction_type: str, steps: int, device: str):
  """Random diffusers UNet + the same weights in Flax; the JAX sampler; the diffusers scheduler."""
  import diffusers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  reference = diffusers.UNet2DConditionModel(**config).eval()
  with tempfile.TemporaryDirectory() as folder:
    reference.save_pretrained(folder, safe_serialization=True)
    module, params = convert.read_unet(folder)
  scheduler = diffusers.DDIMScheduler(prediction_type=prediction_type, **SCHEDULER)
  scheduler.set_timesteps(steps)

  def model_fn(p, z_in, t, context):
    return module.apply({"params": p}, z_in, t, context)

  sample = make_bld_sampler(model_fn, num_inference_steps=steps, prediction_type=prediction_type)
  return reference.to(device), jax.device_put(params), sample, scheduler


def compare(reference, params, sample, scheduler, *, batch: int, latent: int, context_dim: int,
            steps: int, guidance: float, repeats: int, device: str = "cpu") -> dict:
  """Times both samplers on the same inputs and noise; returns seconds and the max abs diff."""
  z0_known, keep, cond, uncond = make_inputs(batch, latent, context_dim)
  key = jax.random.PRNGKey(batch)
  jax_args = [jnp.asarray(x) for x in (z0_known, keep, cond, uncond)]
  alphas_cumprod = sched.make_schedule().alphas_cumprod

  def run_jax():
    return jax.block_until_ready(sample(params, *jax_args, key, alphas_cumprod, guidance))

  start = time.perf_counter()
  jax_out = np.asarray(run_jax())  # compile + first run
  first_call = time.perf_counter() - start
  jax_s = median_seconds(run_jax, repeats)

  init, blend_noise = sampler_noise(key, z0_known.shape, steps)
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(device)
  torch_args = (nchw(z0_known), nchw(keep), torch.from_numpy(cond).to(device),
                torch.from_numpy(uncond).to(device), nchw(init), [nchw(n) for n in blend_noise])

  def run_torch():
    with torch.no_grad():
      out = torch_bld(reference, scheduler, *torch_args, guidance)
    if device == "cuda":
      torch.cuda.synchronize()
    return out

  torch_out = run_torch().cpu().numpy().transpose(0, 2, 3, 1)  # warm-up
  torch_s = median_seconds(run_torch, repeats)
  return dict(compile_s=first_call - jax_s, jax_s=jax_s, torch_s=torch_s,
              max_abs_diff=float(np.max(np.abs(jax_out - torch_out))),
              output_scale=float(np.max(np.abs(torch_out))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--unet", default="tiny", choices=sorted(UNET_CONFIGS))
  parser.add_argument("--latent", type=int, default=16, help="latent side (image side / 8)")
  parser.add_argument("--batch", default="1", help="comma list of batch sizes")
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--guidance", type=float, default=3.0)
  parser.add_argument("--prediction_type", default="v_prediction",
                      choices=["v_prediction", "epsilon"])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  import diffusers  # pylint: disable=import-outside-toplevel
  config = UNET_CONFIGS[args.unet]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  models = build(config, args.prediction_type, args.steps, device)
  print(f"# BLD {args.steps} steps, UNet '{args.unet}', latent {args.latent}x{args.latent} "
        f"(image {8 * args.latent}²), guidance {args.guidance}, {args.prediction_type}, float32, "
        f"{hardware()}, jax {jax.__version__}, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, {datetime.date.today()}")
  print("| batch | JAX compile (s) | JAX (s) | PyTorch (s) | PyTorch / JAX | max abs diff |")
  print("|---|---|---|---|---|---|")
  for batch in [int(b) for b in args.batch.split(",")]:
    row = compare(*models, batch=batch, latent=args.latent,
                  context_dim=config["cross_attention_dim"], steps=args.steps,
                  guidance=args.guidance, repeats=args.repeats, device=device)
    print(f"| {batch} | {row['compile_s']:.2f} | {row['jax_s']:.3f} | {row['torch_s']:.3f} | "
          f"{row['torch_s'] / row['jax_s']:.2f}x | {row['max_abs_diff']:.1e} |", flush=True)


if __name__ == "__main__":
  main()
