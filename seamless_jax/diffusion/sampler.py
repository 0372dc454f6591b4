"""Blended Latent Diffusion (BLD) sampling with DDIM and classifier-free guidance.

The whole denoising loop is one ``lax.scan``; :func:`make_bld_sampler` wraps it in a single
``jax.jit`` (model function and step count static, everything else traced), so repeated
calls with same-shaped inputs reuse one compilation.

Model function
--------------
``model_fn(params, z_in, t, context) -> output``:
  * ``params``: any pytree (traced; passed through untouched — e.g. ``unet.apply`` with its
    variables, so weights are not baked into the compiled program as constants);
  * ``z_in``: (2B, h, w, C_in) — the uncond half first, then the cond half (diffusers order);
  * ``t``: (2B,) int32; ``context``: (2B, L, D) = ``concat([uncond, cond])``;
  * returns (2B, h, w, 4): ε or v according to ``prediction_type``.
For 4-channel UNets ``z_in`` is the current latent. For 9-channel inpainting UNets
(``inpaint_channels=True``) it is ``concat([z_t, mask, z0_known], -1)`` with ``mask = 1 − keep``
(1 = hole) at latent size — diffusers' StableDiffusionInpaintPipeline channel order.

Blending (paper Eq. 5)
----------------------
Before every model call, ``z_t ← z_t·(1 − keep) + q(z0_known, t)·keep`` where
``q(z0_known, t) = √ā_t z0_known + √(1−ā_t) ε`` uses fresh noise each step. After the last DDIM
step the result is blended with the clean ``z0_known``, so the returned latent equals
``z0_known`` exactly where ``keep = 1``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from seamless_jax.diffusion import schedule as sched
from seamless_jax.diffusion.blending import blend


def bld_sample(model_fn: Callable, params, z0_known, keep, cond, uncond, key, alphas_cumprod,
               *, num_inference_steps: int = 50, guidance_scale: float = 3.0,
               prediction_type: str = sched.TRAINED_PREDICTION_TYPE, eta: float = 0.0,
               inpaint_channels: bool = False, set_alpha_to_one: bool = False,
               steps_offset: int = 1, spacing: str = "leading", init_latent=None,
               step_callback: Callable[[jax.Array], None] | None = None):
  """Runs BLD/DDIM sampling and returns the final blended latent (B, h, w, 4) float32.

  Args:
    model_fn, params: see module doc.
    z0_known: latent of the masked image E(x·keep), scaled, (B, h, w, 4).
    keep: latent-size keep mask (B, h, w, 1), 1 = known.
    cond, uncond: text embeddings (B, L, D) (uncond may also be (1, L, D), broadcast).
    key: PRNG key; the result is a deterministic function of it. Split into the initial
      noise, and per step (``fold_in(step)``) the blend noise and the DDIM η-noise.
    guidance_scale: ``out = out_u + g·(out_c − out_u)``; 1.0 still evaluates both halves.
    set_alpha_to_one: final step's ā_prev = 1 (returns the predicted x0) instead of ā_0
      (diffusers' SD-1.5 default, False).
    init_latent: optional starting z_T (B, h, w, 4) instead of N(0, I) noise.
    step_callback: called on the host with the index (int32 scalar, 0-based) of each DDIM step
      as the device runs it (``jax.debug.callback``, for progress reports: it may come before
      that step's work ends, and out of order); None adds nothing to the program.
  """
  T = alphas_cumprod.shape[0]
  timesteps = sched.ddim_timesteps(num_inference_steps, T, steps_offset, spacing)
  prev_timesteps = sched.ddim_prev_timesteps(timesteps, T)
  ac = jnp.asarray(alphas_cumprod, jnp.float32)
  z0_known = z0_known.astype(jnp.float32)
  keep = keep.astype(jnp.float32)
  batch = z0_known.shape[0]
  uncond = jnp.broadcast_to(uncond, (batch,) + uncond.shape[1:]).astype(cond.dtype)
  context = jnp.concatenate([uncond, cond], axis=0)
  hole = jnp.concatenate([1.0 - keep] * 2, axis=0)
  known2 = jnp.concatenate([z0_known] * 2, axis=0)
  final_alpha = 1.0 if set_alpha_to_one else None

  init_key, loop_key = jax.random.split(key)
  z = (jax.random.normal(init_key, z0_known.shape, jnp.float32) if init_latent is None
       else init_latent.astype(jnp.float32))

  def step(z, inputs):
    i, t, t_prev = inputs
    blend_key, eta_key = jax.random.split(jax.random.fold_in(loop_key, i))
    noised_known = sched.add_noise(z0_known, jax.random.normal(blend_key, z.shape), t, ac)
    z = blend(z, noised_known, keep)
    z_in = jnp.concatenate([z, z], axis=0)
    if inpaint_channels:
      z_in = jnp.concatenate([z_in, hole, known2], axis=-1)
    out = model_fn(params, z_in, jnp.full((2 * batch,), t, jnp.int32), context)
    out_u, out_c = jnp.split(out.astype(jnp.float32), 2, axis=0)
    guided = out_u + guidance_scale * (out_c - out_u)
    noise = jax.random.normal(eta_key, z.shape) if eta > 0 else None
    z = sched.ddim_step(z, guided, t, t_prev, ac, prediction_type=prediction_type, eta=eta,
                        noise=noise, final_alpha_cumprod=final_alpha)
    if step_callback is not None:
      jax.debug.callback(step_callback, i)
    return z, None

  xs = (jnp.arange(num_inference_steps), jnp.asarray(timesteps), jnp.asarray(prev_timesteps))
  z, _ = jax.lax.scan(step, z, xs)
  return blend(z, z0_known, keep)


def make_bld_sampler(model_fn: Callable, *, num_inference_steps: int = 50,
                     prediction_type: str = sched.TRAINED_PREDICTION_TYPE, eta: float = 0.0,
                     inpaint_channels: bool = False, set_alpha_to_one: bool = False,
                     steps_offset: int = 1, spacing: str = "leading"):
  """Returns ``sample(params, z0_known, keep, cond, uncond, key, alphas_cumprod,
  guidance_scale=3.0, init_latent=None)``: :func:`bld_sample` under one ``jax.jit``.

  ``guidance_scale`` is traced (changing it does not recompile); shapes/dtypes and the options
  given here are static.
  """
  fn = functools.partial(bld_sample, model_fn, num_inference_steps=num_inference_steps,
                         prediction_type=prediction_type, eta=eta,
                         inpaint_channels=inpaint_channels, set_alpha_to_one=set_alpha_to_one,
                         steps_offset=steps_offset, spacing=spacing)

  @jax.jit
  def sample(params, z0_known, keep, cond, uncond, key, alphas_cumprod, guidance_scale=3.0,
             init_latent=None):
    return fn(params, z0_known, keep, cond, uncond, key, alphas_cumprod,
              guidance_scale=guidance_scale, init_latent=init_latent)

  return sample
