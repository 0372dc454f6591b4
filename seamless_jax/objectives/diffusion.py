"""The UNet objectives: ``two_step`` (paper Alg. 1) and ``standard`` (plain v-prediction).

Both train the UNet params on latents of the frozen VAE with the frozen text encoder's context,
and sample with BLD (:func:`seamless_jax.diffusion.bld.inpaint`, the function inference uses).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seamless_jax.diffusion import blending
from seamless_jax.diffusion import bld
from seamless_jax.diffusion import losses
from seamless_jax.diffusion import schedule as schedule_lib
from seamless_jax.objectives.base import Grads, Objective, Sample


def encode_for_diffusion(models, frozen, batch, keep_method: str):
  """Frozen encoders -> ``(z0, z0_known, keep_latent, context)``, gradient-stopped.

  The image and the masked image (hole = 0) go through the VAE as one 2B batch; latents are the
  posterior means times ``scaling_factor``.
  """
  vae, text = models.vae, models.text
  image, keep = batch["image"], batch["keep"]
  context = text.apply({"params": frozen["text"]}, batch["input_ids"])
  both = jnp.concatenate([image, image * keep], axis=0)
  mean, _ = vae.apply({"params": frozen["vae"]}, both, method=vae.encode)
  latents = mean.astype(jnp.float32) * models.scaling_factor
  z0, z0_known = jnp.split(latents, 2, axis=0)
  keep_latent = blending.latent_keep(keep, z0.shape[1:3], keep_method)
  return jax.lax.stop_gradient((z0, z0_known, keep_latent, context))


class _UNetObjective(Objective):
  """What both UNet objectives share: params, the first noise and timestep, samples."""

  # (stride, min_t) of the timestep draw t ~ U{stride + min_t, ..., T − 1}.
  def timestep_floor(self, config) -> tuple[int, int]:
    del config
    return 0, 0

  def init_params(self, config, models, key):
    k_unet, k_vae, k_text, _ = jax.random.split(key, 4)
    vae = (models.vae_params if models.vae_params is not None
           else models.vae.init(k_vae, *models.vae.dummy_inputs())["params"])
    text = (models.text_params if models.text_params is not None
            else models.text.init(k_text, *models.text.dummy_inputs())["params"])
    unet = (models.unet_params if models.unet_params is not None
            else models.unet.init(k_unet, *models.unet.dummy_inputs())["params"])
    return unet, {"vae": vae, "text": text}

  def random_inputs(self, config, key, batch_size, latent_hwc):
    k_t, k1, k2 = jax.random.split(key, 3)
    stride, min_t = self.timestep_floor(config)
    t = losses.sample_timesteps(k_t, batch_size, stride=stride, min_t=min_t,
                                num_train_timesteps=int(config.schedule.num_train_timesteps))
    shape = (batch_size,) + tuple(latent_hwc)
    return self._with_second_noise(
        {"t": t, "noise1": jax.random.normal(k1, shape, jnp.float32)}, k2, shape)

  def _with_second_noise(self, rand: dict, key, shape) -> dict:
    del key, shape
    return rand

  def loss(self, config, v_fn, encoded, rand, alphas_cumprod) -> tuple[jax.Array, dict]:
    """``(loss, metrics)`` of one batch given its encoding (:func:`encode_for_diffusion`)."""
    raise NotImplementedError

  def make_grads(self, config, models, alphas_cumprod, lpips_fn_factory) -> Grads:
    del lpips_fn_factory
    unet, keep_method = models.unet, config.two_step.keep_method

    def loss_fn(params, frozen, batch, rand):
      encoded = encode_for_diffusion(models, frozen, batch, keep_method)
      context = encoded[3]
      v_fn = lambda z, t: unet.apply({"params": params}, z, t, context)
      return self.loss(config, v_fn, encoded, rand, alphas_cumprod)

    def grads(params, frozen, batch, rand, key, step):
      del key, step
      (_, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, batch, rand)
      return g, metrics

    return grads

  def make_sample(self, config, models, alphas_cumprod) -> Sample:
    sc = config.sample

    def sample(params, frozen, batch, cond_ids, uncond_ids, keys):
      all_params = {"unet": params, "vae": frozen["vae"], "text": frozen["text"]}
      return bld.inpaint(models.unet, models.vae, models.text, all_params, batch["image"],
                         batch["keep"], cond_ids, uncond_ids, keys, alphas_cumprod,
                         float(sc.guidance_scale),
                         num_inference_steps=int(sc.num_inference_steps),
                         scaling_factor=models.scaling_factor,
                         keep_method=config.two_step.keep_method,
                         sampler_options={"prediction_type": schedule_lib.TRAINED_PREDICTION_TYPE})
    return sample


class TwoStep(_UNetObjective):
  """Paper Alg. 1: ``L1 + λ·L2`` over a step from t and a second one from the blended
  ``ẑ_t'`` at ``t' = t − stride`` (:func:`seamless_jax.diffusion.losses.two_step_loss`)."""

  name = "two_step"
  metric_names = ("loss_first_step", "loss_second_step")

  def config_problem(self, config, *, shapes_only):
    del shapes_only
    lowest = config.two_step.stride + config.two_step.min_t  # both second_t options: t − stride
    if lowest >= config.schedule.num_train_timesteps:
      return (f"config.two_step.stride + config.two_step.min_t = {lowest} leaves no timestep "
              f"below {config.schedule.num_train_timesteps}", False)
    return None

  def timestep_floor(self, config):
    return int(config.two_step.stride), int(config.two_step.min_t)

  def _with_second_noise(self, rand, key, shape):
    return dict(rand, noise2=jax.random.normal(key, shape, jnp.float32))

  def loss(self, config, v_fn, encoded, rand, alphas_cumprod):
    ts = config.two_step
    z0, z0_known, keep_latent, _ = encoded
    loss, aux = losses.two_step_loss(
        v_fn, z0, z0_known, keep_latent, rand["t"], rand["noise1"], rand["noise2"],
        alphas_cumprod, stride=int(ts.stride), weight=float(ts.weight),
        stop_grad=bool(ts.stop_grad), second_t=ts.second_t, min_t=int(ts.min_t),
        scan_calls=bool(ts.get("scan_calls", True)))
    return loss, {"loss": loss, "loss_first_step": aux["loss1"],
                  "loss_second_step": aux["loss2"]}


class Standard(_UNetObjective):
  """The usual v-prediction loss at one timestep (the paper's baseline fine-tune)."""

  name = "standard"

  def loss(self, config, v_fn, encoded, rand, alphas_cumprod):
    del config
    loss, _ = losses.standard_loss(v_fn, encoded[0], rand["t"], rand["noise1"], alphas_cumprod)
    return loss, {"loss": loss}
