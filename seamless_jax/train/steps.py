"""One jit-compiled train step per mode: encode (frozen) -> loss -> grads -> update -> EMA.

``make_train_step(...)`` returns ``step(state, frozen, batch) -> (state, metrics)``, a
``jax.jit`` with explicit in/out shardings and the state donated. Inside it, in order:

1. randomness from ``fold_in(state.rng, state.step)``: timesteps and noises drawn for the GLOBAL
   batch (so the result does not depend on the device count or on ``parallelism``);
2. per micro-batch (``grad_accum_steps`` of them, a ``lax.scan``): text encoding and VAE
   encoding of the image and of the masked image (frozen, ``stop_gradient``), the two-step (or
   standard, or VAE Eq. 6) loss, its gradient;
3. global-norm clipping + AdamW (+ the discriminator's Adam), EMA;
4. a non-finite loss or gradient norm keeps params, optimizer state and EMA unchanged (the step
   counter advances, ``skipped``/``nonfinite_streak`` count it).

``parallelism='jit'``: GSPMD partitions the step from the batch/param shardings; library
attention kernels (Pallas, cuDNN) run inside a shard_map over the mesh (``models/attention.py``).
``parallelism='shard_map'``: step 2 runs under ``jax.shard_map`` on each device's slice of the
batch with replicated params, and gradients/metrics are ``lax.pmean``-ed over ('data', 'fsdp').
Both compute the same function (tests/test_train_sharding.py).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from seamless_jax.data import transforms
from seamless_jax.diffusion import blending
from seamless_jax.diffusion import losses
from seamless_jax.models import attention
from seamless_jax.models import layers
from seamless_jax.runtime import sharding as shd
from seamless_jax.train import state as state_lib

Batch = dict[str, jax.Array]


def latent_shape(models, batch: int, resolution: int) -> tuple[int, ...]:
  """(B, h, w, C) of the VAE latent of (B, R, R, 3) images, from the VAE config alone.

  Each of the ``len(block_out_channels) - 1`` stride-2 downsamplers maps a side ``n`` to
  ``n // 2``, so ``h = w = R // vae.downscale``; nothing is traced or initialised.
  """
  vae = models.vae
  side = int(resolution) // int(vae.downscale)
  return (int(batch), side, side, int(vae.latent_channels))


# ============================================================================ per-mode losses

def encode_for_diffusion(models, frozen, batch: Batch, keep_method: str):
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


def make_diffusion_grads(config, models, alphas_cumprod) -> Callable:
  """``grads(params, frozen, batch, rand, key, step) -> (grads, metrics)`` for two_step/standard."""
  ts = config.two_step
  unet = models.unet

  def loss_fn(params, frozen, batch, rand):
    z0, z0_known, keep_latent, context = encode_for_diffusion(models, frozen, batch,
                                                              ts.keep_method)

    def v_fn(z, t):
      return unet.apply({"params": params}, z, t, context)

    if config.mode == "two_step":
      loss, aux = losses.two_step_loss(
          v_fn, z0, z0_known, keep_latent, rand["t"], rand["noise1"], rand["noise2"],
          alphas_cumprod, stride=int(ts.stride), weight=float(ts.weight),
          stop_grad=bool(ts.stop_grad), second_t=ts.second_t, min_t=int(ts.min_t),
          scan_calls=bool(ts.get("scan_calls", True)))
      return loss, {"loss": loss, "loss1": aux["loss1"], "loss2": aux["loss2"]}
    loss, _ = losses.standard_loss(v_fn, z0, rand["t"], rand["noise1"], alphas_cumprod)
    return loss, {"loss": loss, "loss1": loss, "loss2": jnp.zeros_like(loss)}

  def grads(params, frozen, batch, rand, key, step):
    del key, step
    (_, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, batch, rand)
    return g, metrics

  return grads


_LAST_LAYER = ("decoder", "conv_out")  # LDM's ``last_layer``: decoder.conv_out


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


def make_vae_grads(config, models, lpips_fn_factory: Callable) -> Callable:
  """``grads(params, frozen, batch, rand, key, step) -> (grads, metrics)`` for vae_finetune.

  Generator: Eq. 6 reconstruction with LDM's loss and adaptive GAN weight, the decoder split at
  its last layer (``losses.generator_loss_and_grads``: one backward pass through the VAE, the
  weight from ∇ of ``decoder.conv_out.kernel`` only); discriminator: hinge loss on ``x`` vs
  ``sg(x̂)``. Before ``vae.disc_start`` (or with ``vae.disc_factor=0``) a ``lax.cond`` skips
  all discriminator and adaptive-weight work: g_loss, d_weight, d_loss are 0 and the
  discriminator's gradient is zero.
  """
  vc = config.vae
  vae = models.vae
  disc = state_lib.make_discriminator(config)
  disc_factor, disc_start = float(vc.disc_factor), int(vc.disc_start)

  def grads(params, frozen, batch, rand, key, step):
    del rand
    x, keep = batch["image"], batch["keep"]
    if not vc.get("blend", True):  # plain reconstruction: Eq. 6 with keep = 1 is D(E(x))
      keep = jnp.ones_like(keep)
    lpips_fn = lpips_fn_factory(frozen)
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
    metrics = {"loss": loss, "loss1": terms["rec_loss"], "loss2": d_loss,
               "l1": terms["l1_loss"], "lpips": terms["lpips_loss"], "kl": terms["kl_loss"],
               "g_loss": terms["g_loss"], "d_weight": terms["d_weight"],
               "logvar": params["logvar"]}
    return g, metrics

  return grads


# ============================================================================ accumulation

def accumulate(grads_fn: Callable, num_micro: int) -> Callable:
  """Wraps ``grads_fn`` to average over ``num_micro`` micro-batches with a ``lax.scan``.

  Micro-batch i holds rows ``i, i + A, i + 2A, ...`` of the batch, so each spans every device's
  shard. Gradients and metrics are averaged in float32.
  """
  if num_micro == 1:
    return grads_fn

  def split(x):
    return jnp.swapaxes(x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]), 0, 1)

  def wrapped(params, frozen, batch, rand, key, step):
    micro = (jax.tree.map(split, batch), jax.tree.map(split, rand),
             jax.random.split(key, num_micro))
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    _, m_shape = jax.eval_shape(
        grads_fn, params, frozen, *jax.tree.map(lambda x: x[0], micro[:2]), key, step)
    m_zeros = jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), m_shape)

    def body(carry, xs):
      g_acc, m_acc = carry
      b, r, k = xs
      g, m = grads_fn(params, frozen, b, r, k, step)
      add = lambda a, v: a + v.astype(jnp.float32)
      return (jax.tree.map(add, g_acc, g), jax.tree.map(add, m_acc, m)), None

    (g, m), _ = jax.lax.scan(body, (zeros, m_zeros), micro)
    return jax.tree.map(lambda v: v / num_micro, (g, m))

  return wrapped


# ============================================================================ the step

def make_random_inputs(config, key, batch_size: int, latent_hw_c) -> dict:
  """Timesteps and noises for the global batch (mode-dependent; empty for vae_finetune)."""
  if config.mode == "vae_finetune":
    return {}
  k_t, k1, k2 = jax.random.split(key, 3)
  ts = config.two_step
  # Both second_t options re-noise at t' = t − stride, so t starts at stride + min_t.
  stride = int(ts.stride) if config.mode == "two_step" else 0
  min_t = int(ts.min_t) if config.mode == "two_step" else 0
  t = losses.sample_timesteps(k_t, batch_size, stride=stride, min_t=min_t,
                              num_train_timesteps=int(config.schedule.num_train_timesteps))
  shape = (batch_size,) + tuple(latent_hw_c)
  rand = {"t": t, "noise1": jax.random.normal(k1, shape, jnp.float32)}
  if config.mode == "two_step":
    rand["noise2"] = jax.random.normal(k2, shape, jnp.float32)
  return rand


def make_train_step(config, models, tx: optax.GradientTransformation, mesh,
                    state_shardings, frozen_shardings, *, alphas_cumprod=None,
                    lpips_fn_factory: Callable | None = None, donate: bool = True):
  """The jitted ``step(state, frozen, batch) -> (state, metrics)`` (see module doc).

  ``batch``: ``image`` (B,R,R,3), ``keep`` (B,R,R,1) (uint8 as the pipeline gives them, or
  float32 in [-1, 1] / {0, 1}), ``input_ids`` (B,77) global arrays sharded over the batch axes.
  ``metrics``: replicated float32 scalars.
  """
  batch_size = int(config.batch_size)
  num_micro = int(config.grad_accum_steps)
  lat = latent_shape(models, 1, int(config.data.resolution))[1:]
  if config.mode == "vae_finetune":
    grads_fn = make_vae_grads(config, models, lpips_fn_factory)
  else:
    grads_fn = make_diffusion_grads(config, models, alphas_cumprod)
  grads_fn = accumulate(grads_fn, num_micro)
  schedule = state_lib.learning_rate_schedule(config)
  ema_decay = float(config.ema_decay)
  batch_spec = NamedSharding(mesh, P(shd.BATCH_AXES))

  if config.parallelism == "shard_map":
    local = grads_fn

    def device_grads(params, frozen, batch, rand, key, step):
      g, m = local(params, frozen, batch, rand, key, step)
      return jax.lax.pmean((g, m), shd.BATCH_AXES)

    def grads_fn(params, frozen, batch, rand, key, step):  # pylint: disable=function-redefined
      return jax.shard_map(
          device_grads, mesh=mesh,
          in_specs=(P(), P(), P(shd.BATCH_AXES), P(shd.BATCH_AXES), P(), P()),
          out_specs=(P(), P()), check_vma=False)(params, frozen, batch, rand, key, step)

  def step(state: state_lib.TrainState, frozen, batch: Batch):
    # Attention kernels for the mesh's devices (a TPU topology compiled on a CPU machine too).
    with attention.kernel_target(mesh, per_device=config.parallelism == "shard_map"):
      return update(state, frozen, batch)

  def update(state: state_lib.TrainState, frozen, batch: Batch):
    key = jax.random.fold_in(state.rng, state.step)
    k_rand, k_loss = jax.random.split(key)
    rand = make_random_inputs(config, k_rand, batch_size, lat)
    rand = jax.lax.with_sharding_constraint(rand, batch_spec)
    model_batch = transforms.model_inputs(batch)  # uint8 from the host -> float32
    grads, metrics = grads_fn(state.params, frozen, model_batch, rand, k_loss, state.step)

    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA warm-up counts applied updates only (this one included): step − skipped + 1.
    ema = state_lib.ema_update(state.ema_params, params, ema_decay,
                               state.step - state.skipped + 1)
    keep_old = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    skipped = (~finite).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1, params=keep_old(params, state.params),
        opt_state=keep_old(opt_state, state.opt_state),
        ema_params=keep_old(ema, state.ema_params), skipped=state.skipped + skipped,
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
    # The optimizer's own count advances only on applied updates: step - skipped.
    metrics = dict(metrics, grad_norm=grad_norm, lr=schedule(state.step - state.skipped),
                   skipped=skipped, skipped_total=new_state.skipped,
                   nonfinite_streak=new_state.nonfinite_streak)
    return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)

  batch_in = {"image": batch_spec, "keep": batch_spec, "input_ids": batch_spec}
  return jax.jit(step, in_shardings=(state_shardings, frozen_shardings, batch_in),
                 out_shardings=(state_shardings, NamedSharding(mesh, P())),
                 donate_argnums=(0,) if donate else ())


# ============================================================================ samples

def make_sample_fn(config, models, alphas_cumprod=None, mesh=None) -> Callable:
  """Jitted ``sample(params, frozen, batch, cond_ids, uncond_ids, key) -> (B,R,R,3)`` images.

  two_step/standard: BLD sampling (DDIM, CFG, blending) with the given UNet params, decoded by
  the VAE. vae_finetune: the Eq. 6 blend reconstruction with the given VAE params.
  ``mesh``: the mesh the (sharded) params live on; attention kernels are chosen for it.
  """
  def for_mesh(fn):
    @functools.wraps(fn)
    def traced_for_mesh(*args):
      with attention.kernel_target(mesh):
        return fn(*args)
    return jax.jit(traced_for_mesh)

  from seamless_jax.diffusion import sampler  # pylint: disable=import-outside-toplevel
  vae, text, unet = models.vae, models.text, models.unet
  sf = models.scaling_factor
  sc = config.sample

  if config.mode == "vae_finetune":
    @for_mesh
    def vae_sample(params, frozen, batch, cond_ids, uncond_ids, key):
      del cond_ids, uncond_ids, key
      full = {**frozen["vae"], **params["vae"]}
      encode = lambda img: vae.apply({"params": full}, img, method=vae.encode)
      decode = lambda z: vae.apply({"params": full}, z, method=vae.decode)
      x = losses.blend_reconstruct(encode, decode, batch["image"], batch["keep"],
                                   sample_posterior=False)
      return jnp.clip(x.astype(jnp.float32), -1, 1)
    return vae_sample

  def model_fn(p, z, t, context):
    return unet.apply({"params": p}, z, t, context)

  bld = functools.partial(sampler.bld_sample, model_fn,
                          num_inference_steps=int(sc.num_inference_steps),
                          prediction_type="v_prediction")

  @for_mesh
  def bld_sample(params, frozen, batch, cond_ids, uncond_ids, key):
    image, keep = batch["image"], batch["keep"]
    mean, _ = vae.apply({"params": frozen["vae"]}, image * keep, method=vae.encode)
    z0_known = mean.astype(jnp.float32) * sf
    keep_latent = blending.latent_keep(keep, z0_known.shape[1:3], config.two_step.keep_method)
    cond = text.apply({"params": frozen["text"]}, cond_ids)
    uncond = text.apply({"params": frozen["text"]}, uncond_ids)
    z = bld(params, z0_known, keep_latent, cond, uncond, key, alphas_cumprod,
            guidance_scale=float(sc.guidance_scale))
    x = vae.apply({"params": frozen["vae"]}, z / sf, method=vae.decode)
    return jnp.clip(x.astype(jnp.float32), -1, 1)

  return bld_sample
