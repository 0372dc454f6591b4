"""Train state, optimizer (AdamW + warmup/cosine + clipping), EMA, and sharded initialisation.

Initialisation never materialises the params on one device: ``jax.eval_shape`` gives the state's
shapes, :mod:`sharding` turns them into ``NamedSharding``s, and ``jax.jit(init,
out_shardings=...)`` creates every array directly in its shards. Pretrained params (host numpy)
go straight to their shards with ``jax.device_put`` and are donated to the init step.

What is trainable (``state.params``) is the objective's choice (:mod:`seamless_jax.objectives`);
everything else (VAE, text encoder, frozen VAE parts) is ``frozen``, a separate pytree that is
rebuilt from ``config.pretrained`` / the seed at every start (:mod:`seamless_jax.build`) and
not checkpointed.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from seamless_jax import build
from seamless_jax import objectives
from seamless_jax.runtime import sharding as shd


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

LR_SCHEDULES = ("cosine", "constant")  # config.lr_schedule: see learning_rate_schedule

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
  """Global-norm clipping, then the objective's AdamW groups (one AdamW on the learning-rate
  schedule; vae_finetune gives the discriminator its own)."""
  def adamw(schedule):
    return optax.adamw(schedule, b1=float(config.adam_b1), b2=float(config.adam_b2),
                       weight_decay=float(config.weight_decay), mask=_decay_mask)

  main = objectives.for_config(config).optimizer(config, adamw, learning_rate_schedule(config))
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


# ============================================================================ creation

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
  init_key, rng = build.init_keys(config)
  min_size = int(config.fsdp_min_size)
  host = build.host_params(models)
  host_dev = {k: jax.device_put(v, shd.tree_shardings(v, mesh, min_size)) for k, v in host.items()}
  init = _init_fn(config, models, tx, rng)
  _, state_shardings, _, frozen_shardings = abstract_train_state(config, models, mesh, tx)
  init_jit = jax.jit(init, out_shardings=(state_shardings, frozen_shardings), donate_argnums=1)
  state, frozen = build.compile_init(init_jit, init_key, host_dev)(init_key, host_dev)
  return state, state_shardings, frozen, frozen_shardings


def abstract_train_state(config, models, mesh, tx: optax.GradientTransformation
                         ) -> tuple[TrainState, Any, Any, Any]:
  """Shapes and shardings of what :func:`create_train_state` makes; nothing is allocated.

  Returns ``(state, state_shardings, frozen, frozen_shardings)`` with ``jax.ShapeDtypeStruct``
  leaves; ``mesh`` may hold compile-only devices (a TPU topology described on a CPU machine).
  """
  init_key, rng = build.init_keys(config)
  min_size = int(config.fsdp_min_size)
  state, frozen = jax.eval_shape(_init_fn(config, models, tx, rng), init_key,
                                 build.host_params(models))
  return (state, tree_shardings_for_state(state, mesh, min_size), frozen,
          shd.tree_shardings(frozen, mesh, min_size))


def _init_fn(config, models, tx, rng):
  """``init(key, pretrained) -> (state, frozen)``: pretrained params where given, random else."""
  def init(key, pretrained):
    params, frozen = build.initial_params(config, build.with_params(models, pretrained), key)
    return _new_state(params, tx, rng), frozen
  return init


def tree_shardings_for_state(abstract_state: TrainState, mesh, min_size: int):
  """Shardings of a TrainState: scalars/rng replicated, param-shaped trees by the rules."""
  return shd.tree_shardings(abstract_state, mesh, min_size)


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs carrying target shardings (for orbax restore onto any mesh)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def count_params(tree) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))

