"""Train state, optimizer (AdamW + warmup/cosine + clipping), EMA, and sharded initialisation.

Initialisation never materialises the params on one device: ``jax.eval_shape`` gives the state's
shapes, :mod:`sharding` turns them into ``NamedSharding``s, and ``jax.jit(init,
out_shardings=...)`` creates every array directly in its shards. Pretrained params (host numpy)
go straight to their shards with ``jax.device_put`` and are donated to the init step.

What is trainable per mode (``state.params``):
  two_step / standard: the UNet params;
  vae_finetune: ``{'vae': decoder + post_quant_conv (+ encoder + quant_conv with
  vae.train_encoder), 'logvar': scalar, 'disc': PatchGAN}``.
Everything else (VAE, text encoder, frozen VAE parts) is ``frozen``, a separate pytree that is
rebuilt from ``config.pretrained`` / the seed at every start and not checkpointed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from seamless_jax.models.discriminator import NLayerDiscriminator
from seamless_jax.runtime import compilation
from seamless_jax.runtime import sharding as shd

VAE_DECODER_PARTS = ("decoder", "post_quant_conv")


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training (and is checkpointed).

  step: int32 scalar, updates done (skipped steps count too: one step = one batch).
  params / ema_params: float32 trainable params and their EMA.
  opt_state: optax state.
  rng: uint32[2] base key; the step key is ``fold_in(rng, step)``.
  skipped: int32 total of skipped (non-finite) steps.
  nonfinite_streak: int32 non-finite steps in a row (0 after a good step).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array
  skipped: jax.Array
  nonfinite_streak: jax.Array


# ============================================================================ optimizer

def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warmup to ``learning_rate`` then cosine to ``end_lr_factor·lr`` (or constant).

  The first update uses ``lr / warmup_steps`` (not 0), the ``warmup_steps``-th the full lr.
  """
  lr, warmup = float(config.learning_rate), int(config.warmup_steps)
  start = lr / warmup if warmup else lr
  if config.lr_schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        start, lr, warmup, max(int(config.total_steps), warmup + 1),
        end_value=lr * float(config.end_lr_factor))
  if warmup == 0:
    return optax.constant_schedule(lr)
  return optax.join_schedules(
      [optax.linear_schedule(start, lr, warmup), optax.constant_schedule(lr)], [warmup])


def _decay_mask(params):
  """Weight decay on kernels only (not on biases, norm scales, the VAE log-variance)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW(schedule) with global-norm clipping; in vae_finetune mode the discriminator has its
  own Adam (``vae.disc_learning_rate``) through ``optax.multi_transform``."""
  def adamw(schedule):
    return optax.adamw(schedule, b1=float(config.adam_b1), b2=float(config.adam_b2),
                       weight_decay=float(config.weight_decay), mask=_decay_mask)

  main = adamw(learning_rate_schedule(config))
  if config.mode == "vae_finetune":
    disc = adamw(float(config.vae.disc_learning_rate))
    main = optax.multi_transform(
        {"gen": main, "disc": disc},
        lambda params: {k: ("disc" if k == "disc" else "gen") for k in params})
  if float(config.max_grad_norm) > 0:
    return optax.chain(optax.clip_by_global_norm(float(config.max_grad_norm)), main)
  return main


def ema_decay_at(decay: float, count):
  """Warmed-up EMA decay ``min(decay, (1 + n)/(10 + n))`` for the n-th applied update (n ≥ 1).

  The warm-up of LDM's ``LitEma`` (and TF's ``ExponentialMovingAverage(num_updates=...)``):
  2/11 at the first update, 0.9 at n = 80, 0.99 at n ≈ 890, 0.9999 only from n ≈ 90 000. Without
  it a 0.9999 EMA keeps 0.9999^10 000 ≈ 37 % of the starting weights after 10k updates; with it
  the share left after n updates is ``10!·(n+1)!/(n+10)!`` (≈ 4e-30 at n = 10 000).
  ``decay = 0`` gives 0: the EMA equals the params.
  """
  n = jnp.asarray(count, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


def ema_update(ema, params, decay: float, count):
  """EMA after the ``count``-th applied update (1 for the first): ``d·ema + (1 − d)·params``
  with ``d = ema_decay_at(decay, count)``; ``count`` may be traced (skipped steps do not count)."""
  return optax.incremental_update(params, ema, 1.0 - ema_decay_at(decay, count))


# ============================================================================ param trees

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


def cast_frozen(config, frozen):
  """``frozen`` with its float leaves in ``config.frozen_dtype`` ('bfloat16' halves the frozen
  VAE/text encoder's memory and reads; the modules compute in ``config.dtype`` either way)."""
  dtype = jnp.dtype(config.get("frozen_dtype", "float32"))
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      frozen)


def _random_params(config, models, key) -> tuple[Any, Any]:
  """(trainable, frozen) params for ``config.mode`` (traceable): pretrained where given, random
  otherwise; ``frozen`` in ``config.frozen_dtype``."""
  trainable, frozen = _trainable_and_frozen(config, models, key)
  return trainable, cast_frozen(config, frozen)


def _trainable_and_frozen(config, models, key) -> tuple[Any, Any]:
  k_unet, k_vae, k_text, k_disc = jax.random.split(key, 4)
  vae_params = (models.vae_params if models.vae_params is not None
                else models.vae.init(k_vae, *models.vae.dummy_inputs())["params"])
  if config.mode == "vae_finetune":
    trainable, frozen_vae = split_vae_params(vae_params, bool(config.vae.train_encoder))
    size = int(config.data.resolution)
    disc = make_discriminator(config).init(k_disc, jnp.zeros((1, size, size, 3)))["params"]
    params = {"vae": trainable, "logvar": jnp.zeros((), jnp.float32), "disc": disc}
    return params, {"vae": frozen_vae}
  text_params = (models.text_params if models.text_params is not None
                 else models.text.init(k_text, *models.text.dummy_inputs())["params"])
  unet_params = (models.unet_params if models.unet_params is not None
                 else models.unet.init(k_unet, *models.unet.dummy_inputs())["params"])
  return unet_params, {"vae": vae_params, "text": text_params}


# ============================================================================ creation

def init_keys(config) -> tuple[jax.Array, jax.Array]:
  """``(init_key, rng)``: the key that initialises random params and the state's base key."""
  return tuple(jax.random.split(jax.random.PRNGKey(int(config.seed))))


def initial_frozen_params(config, models) -> Any:
  """``frozen`` exactly as training starts it (the parts that are never checkpointed).

  Random parts come from the same key as in :func:`create_train_state`, so a tiny model's
  frozen VAE/text encoder is rebuilt bit-for-bit from ``config.seed``; the trainable params
  are neither initialised nor moved to the device (a restore supplies them).
  """
  init_key, _ = init_keys(config)
  host = {"vae": models.vae_params, "text": models.text_params}
  host = {k: v for k, v in host.items() if v is not None}

  def init(key, pretrained):  # compiled as in create_train_state (other options round differently)
    m = dataclasses.replace(_with_params(models, pretrained), unet_params={})  # skip UNet init
    return _random_params(config, m, key)[1]
  return compile_init(jax.jit(init), init_key, host)(init_key, host)


def compile_init(init_jit, *args):
  """The jitted random init compiled for ``args`` with :func:`compilation.run_once_options`
  (training and :func:`initial_frozen_params` must compile it alike to get the same bits)."""
  return compilation.aot_compile(init_jit, *args, count_flops=False,
                                 compiler_options=compilation.run_once_options()).fn


def _new_state(params, tx, rng) -> TrainState:
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params), rng=rng, skipped=zero,
                    nonfinite_streak=zero)


def create_train_state(config, models, mesh, tx: optax.GradientTransformation
                       ) -> tuple[TrainState, Any, Any, Any]:
  """Creates the sharded state and frozen params.

  Returns ``(state, state_shardings, frozen, frozen_shardings)``. Pretrained host params are
  passed into the jitted init as (donated) arguments already placed on their shards; random
  params are created inside it. ``state_shardings`` also serves checkpoint restore.
  """
  init_key, rng = init_keys(config)
  min_size = int(config.fsdp_min_size)
  host = _host_params(models)
  host_dev = {k: jax.device_put(v, shd.tree_shardings(v, mesh, min_size)) for k, v in host.items()}
  init = _init_fn(config, models, tx, rng)
  _, state_shardings, _, frozen_shardings = abstract_train_state(config, models, mesh, tx)
  init_jit = jax.jit(init, out_shardings=(state_shardings, frozen_shardings), donate_argnums=1)
  state, frozen = compile_init(init_jit, init_key, host_dev)(init_key, host_dev)
  return state, state_shardings, frozen, frozen_shardings


def abstract_train_state(config, models, mesh, tx: optax.GradientTransformation
                         ) -> tuple[TrainState, Any, Any, Any]:
  """Shapes and shardings of what :func:`create_train_state` makes; nothing is allocated.

  Returns ``(state, state_shardings, frozen, frozen_shardings)`` with ``jax.ShapeDtypeStruct``
  leaves; ``mesh`` may hold compile-only devices (a TPU topology described on a CPU machine).
  """
  init_key, rng = init_keys(config)
  min_size = int(config.fsdp_min_size)
  state, frozen = jax.eval_shape(_init_fn(config, models, tx, rng), init_key,
                                 _host_params(models))
  return (state, tree_shardings_for_state(state, mesh, min_size), frozen,
          shd.tree_shardings(frozen, mesh, min_size))


def _host_params(models) -> dict:
  host = {"unet": models.unet_params, "vae": models.vae_params, "text": models.text_params}
  return {k: v for k, v in host.items() if v is not None}


def _init_fn(config, models, tx, rng):
  """``init(key, pretrained) -> (state, frozen)``: pretrained params where given, random else."""
  def init(key, pretrained):
    m = _with_params(models, pretrained)
    params, frozen = _random_params(config, m, key)
    return _new_state(params, tx, rng), frozen
  return init


def tree_shardings_for_state(abstract_state: TrainState, mesh, min_size: int):
  """Shardings of a TrainState: scalars/rng replicated, param-shaped trees by the rules."""
  return shd.tree_shardings(abstract_state, mesh, min_size)


def _with_params(models, pretrained: dict):
  return dataclasses.replace(models, unet_params=pretrained.get("unet"),
                             vae_params=pretrained.get("vae"),
                             text_params=pretrained.get("text"))


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs carrying target shardings (for orbax restore onto any mesh)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def count_params(tree) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))

