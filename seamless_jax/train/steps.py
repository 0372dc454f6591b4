"""The jit-compiled train step of any objective: grads -> clip -> update -> EMA.

``make_train_step(...)`` returns ``step(state, frozen, batch) -> (state, metrics)``, a
``jax.jit`` with explicit in/out shardings and the state donated. Inside it, in order:

1. randomness from ``fold_in(state.rng, state.step)``: timesteps and noises drawn for the GLOBAL
   batch (so the result does not depend on the device count or on ``parallelism``);
2. per micro-batch (``grad_accum_steps`` of them, a ``lax.scan``): the objective's loss and
   gradient (:mod:`seamless_jax.objectives`: frozen encoders, two-step / standard / Eq. 6 loss);
3. global-norm clipping + the objective's optimizer, EMA;
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
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from seamless_jax import objectives
from seamless_jax.data import transforms
from seamless_jax.models import attention
from seamless_jax.runtime import sharding as shd
from seamless_jax.train import state as state_lib

Batch = dict[str, jax.Array]
PARALLELISMS = ("jit", "shard_map")  # config.parallelism: see the module doc


def latent_shape(models, batch: int, resolution: int) -> tuple[int, ...]:
  """(B, h, w, C) of the VAE latent of (B, R, R, 3) images, from the VAE config alone.

  Each of the ``len(block_out_channels) - 1`` stride-2 downsamplers maps a side ``n`` to
  ``n // 2``, so ``h = w = R // vae.downscale``; nothing is traced or initialised.
  """
  vae = models.vae
  side = int(resolution) // int(vae.downscale)
  return (int(batch), side, side, int(vae.latent_channels))


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

def make_train_step(config, models, tx: optax.GradientTransformation, mesh,
                    state_shardings, frozen_shardings, *, alphas_cumprod=None,
                    lpips_fn_factory: Callable | None = None):
  """The jitted ``step(state, frozen, batch) -> (state, metrics)`` (see module doc).

  ``batch``: ``image`` (B,R,R,3), ``keep`` (B,R,R,1) (uint8 as the pipeline gives them, or
  float32 in [-1, 1] / {0, 1}), ``input_ids`` (B,77) global arrays sharded over the batch axes.
  ``metrics``: replicated float32 scalars.
  """
  batch_size = int(config.batch_size)
  num_micro = int(config.grad_accum_steps)
  lat = latent_shape(models, 1, int(config.data.resolution))[1:]
  objective = objectives.for_config(config)
  grads_fn = objective.make_grads(config, models, alphas_cumprod, lpips_fn_factory)
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
    rand = objective.random_inputs(config, k_rand, batch_size, lat)
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
                 donate_argnums=(0,))


# ============================================================================ samples

def make_sample_fn(config, models, alphas_cumprod=None, mesh=None) -> Callable:
  """Jitted ``sample(params, frozen, batch, cond_ids, uncond_ids, keys) -> (B,R,R,3)`` images:
  the objective's in-training samples (BLD for the UNet objectives, the Eq. 6 reconstruction
  for vae_finetune), with attention kernels chosen for ``mesh`` (the params' mesh)."""
  sample = objectives.for_config(config).make_sample(config, models, alphas_cumprod)

  @functools.wraps(sample)
  def traced_for_mesh(*args):
    with attention.kernel_target(mesh):
      return sample(*args)
  return jax.jit(traced_for_mesh)
