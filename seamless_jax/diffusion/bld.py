"""Inpainting end to end with BLD: encode the known pixels, sample, decode.

One function, :func:`inpaint`, serves the sample grids logged during training (the diffusion
objectives) and :class:`seamless_jax.inpaint.Inpainter`, so the seam CD that training logs is
the one ``Inpainter`` gives for the same model, inputs and keys. It is :func:`decode` of
:func:`sample_latents`; the two halves let a caller render the same latents with another decoder
(the web app's base-vs-Eq. 6 comparison).

Conventions: images NHWC float in [−1, 1], ``keep`` (N, H, W, 1) = 1 on known pixels; latents
are ``(E(x·keep) − shift_factor)·scaling_factor`` (diffusers' convention; SD-1.5 has no shift).
Each image has its own key, so a result does not depend on the batch it was sampled in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from seamless_jax.diffusion import blending
from seamless_jax.diffusion import sampler


def per_image_keys(seed: int, count: int) -> np.ndarray:
  """(count, 2) uint32: the key of sample ``j`` for ``seed`` is ``fold_in(PRNGKey(seed), j)``."""
  base = jax.random.PRNGKey(int(seed))
  return np.stack([np.asarray(jax.random.fold_in(base, j)) for j in range(count)])


def inpaint(unet, vae, text, params: dict, image, keep, cond_ids, uncond_ids, keys,
            alphas_cumprod, guidance_scale, *, num_inference_steps: int,
            scaling_factor: float, shift_factor: float = 0.0, keep_method: str = "nearest",
            sampler_options: dict | None = None):
  """BLD inpainting of a batch -> (N, H, W, 3) float32 in [−1, 1] (traceable): the decoded
  :func:`sample_latents` (same arguments)."""
  z = sample_latents(unet, vae, text, params, image, keep, cond_ids, uncond_ids, keys,
                     alphas_cumprod, guidance_scale, num_inference_steps=num_inference_steps,
                     scaling_factor=scaling_factor, shift_factor=shift_factor,
                     keep_method=keep_method, sampler_options=sampler_options)
  return decode(vae, params["vae"], z, scaling_factor=scaling_factor, shift_factor=shift_factor)


def sample_latents(unet, vae, text, params: dict, image, keep, cond_ids, uncond_ids, keys,
                   alphas_cumprod, guidance_scale, *, num_inference_steps: int,
                   scaling_factor: float, shift_factor: float = 0.0,
                   keep_method: str = "nearest", sampler_options: dict | None = None):
  """The final blended BLD latents of a batch, (N, H/f, W/f, 4) float32, scaled (traceable).

  Args:
    unet, vae, text: the Flax modules; ``params``: ``{'unet', 'vae', 'text'}`` param trees.
    image: (N, H, W, 3) in [−1, 1], H and W multiples of the UNet's size step.
    keep: (N, H, W, 1), 1 = known pixel.
    cond_ids, uncond_ids: (N, L) int32 token ids of the prompt and the negative prompt.
    keys: (N, 2) uint32, one PRNG key per image (:func:`per_image_keys`).
    alphas_cumprod: (T,) of the training schedule; guidance_scale: CFG scale (may be traced).
    sampler_options: further :func:`seamless_jax.diffusion.sampler.bld_sample` options
      (``prediction_type``, ``steps_offset``, ``inpaint_channels``, ``step_callback``...).
  """
  mean, _ = vae.apply({"params": params["vae"]}, image * keep, method=vae.encode)
  z0_known = (mean.astype(jnp.float32) - shift_factor) * scaling_factor
  keep_latent = blending.latent_keep(keep, z0_known.shape[1:3], keep_method)
  cond = text.apply({"params": params["text"]}, cond_ids)
  uncond = text.apply({"params": params["text"]}, uncond_ids)

  def model_fn(unet_params, z_in, t, context):
    return unet.apply({"params": unet_params}, z_in, t, context)

  def one(z0k, kl, c, u, key):  # one image at a time: results independent of the batch
    z = sampler.bld_sample(model_fn, params["unet"], z0k[None], kl[None], c[None], u[None],
                           key, alphas_cumprod, num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale, **(sampler_options or {}))
    return z[0]

  return jax.vmap(one)(z0_known, keep_latent, cond, uncond, keys)


def decode(vae, vae_params: dict, z, *, scaling_factor: float, shift_factor: float = 0.0):
  """Scaled latents (N, h, w, 4) -> images (N, h·f, w·f, 3) float32 in [−1, 1] (traceable)."""
  x = vae.apply({"params": vae_params}, z / scaling_factor + shift_factor, method=vae.decode)
  return jnp.clip(x.astype(jnp.float32), -1.0, 1.0)
