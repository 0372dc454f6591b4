"""``vae_finetune``: the VAE decoder trained to decode blended latents (paper Eq. 6).

Trainable params: ``{'vae': decoder + post_quant_conv (+ encoder + quant_conv with
vae.train_encoder), 'logvar': scalar, 'disc': PatchGAN}``; frozen: ``{'vae': the rest}``
(+ ``'lpips'`` added by training). Generator: Eq. 6 reconstruction with LDM's loss and adaptive
GAN weight, the decoder split at its last layer (``losses.generator_loss_and_grads``: one
backward pass through the VAE, the weight from ∇ of ``decoder.conv_out.kernel`` only);
discriminator: hinge loss on ``x`` vs ``sg(x̂)`` with its own Adam. Before ``vae.disc_start``
(or with ``vae.disc_factor=0``) a ``lax.cond`` skips all discriminator and adaptive-weight work:
g_loss, d_weight, d_loss are 0 and the discriminator's gradient is zero.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from seamless_jax.diffusion import losses
from seamless_jax.models import layers
from seamless_jax.models.discriminator import NLayerDiscriminator
from seamless_jax.objectives.base import Grads, Objective, Sample

VAE_DECODER_PARTS = ("decoder", "post_quant_conv")
_LAST_LAYER = ("decoder", "conv_out")  # LDM's ``last_layer``: decoder.conv_out


def split_vae_params(vae_params: dict, train_encoder: bool) -> tuple[dict, dict]:
  """VAE param tree -> (trainable, frozen) by top-level module name."""
  trainable_names = set(vae_params) if train_encoder else set(VAE_DECODER_PARTS)
  missing = set(VAE_DECODER_PARTS) - set(vae_params)
  if missing:
    raise ValueError(f"VAE params lack {sorted(missing)}; top-level names: {sorted(vae_params)}")
  trainable = {k: v for k, v in vae_params.items() if k in trainable_names}
  frozen = {k: v for k, v in vae_params.items() if k not in trainable_names}
  return trainable, frozen


def make_discriminator(config) -> NLayerDiscriminator:
  return NLayerDiscriminator(n_layers=int(config.vae.disc_layers))


def _stop_at_decoder_last_layer(next_fun, args, kwargs, context):
  """Flax method interceptor: the decoder's ``conv_out`` returns its input instead, so
  ``vae.decode`` yields the last layer's input ``h`` (B, H, W, C_h)."""
  if context.method_name == "__call__" and tuple(context.module.path[-2:]) == _LAST_LAYER:
    return args[0]
  return next_fun(*args, **kwargs)


def decoder_last_layer_input(vae, vae_params, z):
  """``h`` with ``vae.decode(z) == decoder_last_layer(vae, conv_out_params, h)``."""
  with nn.intercept_methods(_stop_at_decoder_last_layer):
    return vae.apply({"params": vae_params}, z, method=vae.decode)


def decoder_last_layer(vae, conv_out_params, h):
  """The decoder's last layer (``conv3x3`` to ``out_channels``, as ``Decoder.head`` builds it)."""
  return layers.conv3x3(vae.out_channels, vae.dtype, "conv_out").apply(
      {"params": conv_out_params}, h)


class VaeFinetune(Objective):
  """Paper Eq. 6: decode ``blend(E(x), E(x·keep), keep)`` back to ``x`` (module doc)."""

  name = "vae_finetune"
  pretrained_parts = ("vae", "text_encoder")
  exports = "vae"
  metric_names = ("rec_loss", "d_loss", "l1", "lpips", "kl", "g_loss", "d_weight", "logvar")

  def config_problem(self, config, *, shapes_only):
    vc = config.vae
    if vc.lpips_weight > 0 and not vc.lpips_path and not shapes_only:
      return ("config.vae.lpips_weight > 0 needs config.vae.lpips_path (converted LPIPS "
              "weights, tools/convert_lpips.py); set lpips_weight=0 to train without LPIPS",
              False)
    if vc.lpips_path and not shapes_only and not os.path.isfile(vc.lpips_path):
      return f"config.vae.lpips_path={vc.lpips_path!r} does not exist", True
    if config.parallelism == "shard_map":
      return ("config.parallelism='shard_map' supports the diffusion modes only; the VAE "
              "discriminator uses whole-batch statistics: use 'jit'", False)
    return None

  def init_params(self, config, models, key):
    _, k_vae, _, k_disc = jax.random.split(key, 4)
    vae_params = (models.vae_params if models.vae_params is not None
                  else models.vae.init(k_vae, *models.vae.dummy_inputs())["params"])
    trainable, frozen_vae = split_vae_params(vae_params, bool(config.vae.train_encoder))
    size = int(config.data.resolution)
    disc = make_discriminator(config).init(k_disc, jnp.zeros((1, size, size, 3)))["params"]
    params = {"vae": trainable, "logvar": jnp.zeros((), jnp.float32), "disc": disc}
    return params, {"vae": frozen_vae}

  def optimizer(self, config, adamw, schedule):
    """The generator (VAE + logvar) on the run's schedule, the discriminator on its own Adam
    (``vae.disc_learning_rate``), through ``optax.multi_transform``."""
    return optax.multi_transform(
        {"gen": adamw(schedule), "disc": adamw(float(config.vae.disc_learning_rate))},
        lambda params: {k: ("disc" if k == "disc" else "gen") for k in params})

  def uses_lpips(self, config) -> bool:
    return float(config.vae.lpips_weight) > 0

  def vae_params(self, params, frozen):
    return {**frozen["vae"], **params["vae"]}

  def make_grads(self, config, models, alphas_cumprod, lpips_fn_factory) -> Grads:
    """``lpips_fn_factory(frozen) -> lpips_fn`` (``None``: no LPIPS term)."""
    del alphas_cumprod
    vc = config.vae
    vae = models.vae
    disc = make_discriminator(config)
    disc_factor, disc_start = float(vc.disc_factor), int(vc.disc_start)

    def grads(params, frozen, batch, rand, key, step):
      del rand
      x, keep = batch["image"], batch["keep"]
      if not vc.get("blend", True):  # plain reconstruction: Eq. 6 with keep = 1 is D(E(x))
        keep = jnp.ones_like(keep)
      lpips_fn = (lpips_fn_factory(frozen) if lpips_fn_factory is not None  # lpips_weight = 0
                  else lambda a, b: jnp.zeros((a.shape[0],), jnp.float32))
      disc_params = jax.lax.stop_gradient(params["disc"])
      gan_on = losses.gan_active(step, disc_start, disc_factor)

      def features_fn(p):
        full = {**frozen["vae"], **p["vae"]}
        encode = lambda img: vae.apply({"params": full}, img, method=vae.encode)
        h, post = losses.blend_reconstruct(
            encode, lambda z: decoder_last_layer_input(vae, full, z), x, keep, key,
            bool(vc.sample_posterior), keep_method=config.two_step.keep_method, return_aux=True)
        return h, losses.posterior_kl(post)

      def x_hat_of(kernel, h, p):
        bias = p["vae"]["decoder"]["conv_out"]["bias"]
        return decoder_last_layer(vae, {"kernel": kernel, "bias": bias}, h)

      def rec_fn(kernel, h, p):
        x_hat = x_hat_of(kernel, h, p)
        terms = losses.reconstruction_nll(x, x_hat, lpips_fn=lpips_fn, logvar=p["logvar"],
                                          lpips_weight=float(vc.lpips_weight))
        return terms["nll_loss"], dict(terms, x_hat=x_hat)

      def adv_fn(kernel, h, p):
        return losses.adversarial_g_loss(lambda img: disc.apply({"params": disc_params}, img),
                                         x_hat_of(kernel, h, p))

      gen_params = {"vae": params["vae"], "logvar": params["logvar"]}
      kernel = gen_params["vae"]["decoder"]["conv_out"]["kernel"]
      loss, (gen_grads, kernel_grad), terms = losses.generator_loss_and_grads(
          features_fn, rec_fn, adv_fn, gen_params, kernel, gan_on=gan_on,
          kl_weight=float(vc.kl_weight), disc_weight=float(vc.disc_weight),
          disc_factor=disc_factor)
      kernel_path = ("vae",) + _LAST_LAYER + ("kernel",)
      gen_grads = jax.tree_util.tree_map_with_path(
          lambda path, g: kernel_grad if tuple(k.key for k in path) == kernel_path else g,
          gen_grads)
      x_hat = jax.lax.stop_gradient(terms["x_hat"])

      def d_loss_fn(dp):
        return losses.discriminator_loss(lambda img: disc.apply({"params": dp}, img), x, x_hat,
                                         step=step, disc_factor=disc_factor,
                                         disc_start=disc_start)[0]

      d_loss, disc_grads = jax.lax.cond(
          gan_on, lambda dp: jax.value_and_grad(d_loss_fn)(dp),
          lambda dp: (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, dp)),
          params["disc"])
      g = {"vae": gen_grads["vae"], "logvar": gen_grads["logvar"], "disc": disc_grads}
      metrics = {"loss": loss, "rec_loss": terms["rec_loss"], "d_loss": d_loss,
                 "l1": terms["l1_loss"], "lpips": terms["lpips_loss"], "kl": terms["kl_loss"],
                 "g_loss": terms["g_loss"], "d_weight": terms["d_weight"],
                 "logvar": params["logvar"]}
      return g, metrics

    return grads

  def make_sample(self, config, models, alphas_cumprod) -> Sample:
    """The Eq. 6 blend reconstruction of the batch with the trained VAE (no diffusion)."""
    del config, alphas_cumprod
    vae = models.vae

    def sample(params, frozen, batch, cond_ids, uncond_ids, keys):
      del cond_ids, uncond_ids, keys
      full = {**frozen["vae"], **params["vae"]}
      encode = lambda img: vae.apply({"params": full}, img, method=vae.encode)
      decode = lambda z: vae.apply({"params": full}, z, method=vae.decode)
      x = losses.blend_reconstruct(encode, decode, batch["image"], batch["keep"],
                                   sample_posterior=False)
      return jnp.clip(x.astype(jnp.float32), -1, 1)
    return sample

