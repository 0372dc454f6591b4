"""Noise schedule, parameterisation conversions and the DDIM update.

Conventions
-----------
* ``alphas_cumprod`` (ā) is a float32 vector of length ``num_train_timesteps``.
* Latents are NHWC ``(B, h, w, C)``; a timestep ``t`` is a scalar or an int32 ``(B,)``
  vector, and every per-timestep coefficient is broadcast over the non-batch axes.
* Forward process: ``z_t = √ā_t z0 + √(1−ā_t) ε``.
* v-prediction (Salimans & Ho): ``v = √ā_t ε − √(1−ā_t) z0``, hence
  ``z0 = √ā_t z_t − √(1−ā_t) v`` and ``ε = √(1−ā_t) z_t + √ā_t v``.
* ``ddim_timesteps`` / ``ddim_step`` reproduce diffusers' ``DDIMScheduler`` with SD-1.5's
  config (``set_alpha_to_one=False``, ``clip_sample=False``, ``steps_offset=1``,
  ``timestep_spacing='leading'``): a step whose previous timestep is negative uses
  ``final_alpha_cumprod = ā_0``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PREDICTION_TYPES = ("epsilon", "v_prediction")
# What the diffusion objectives trained here predict (paper Alg. 1: v-prediction).
TRAINED_PREDICTION_TYPE = "v_prediction"
# SD-1.5's DDIM scheduler config (diffusers ``scheduler_config.json`` keys; the paper samples
# with DDIM, 50 steps). SD-1.5 itself predicts ε; the β values are every schedule's defaults.
SD15_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "clip_sample": False,
                  "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
                  "timestep_spacing": "leading"}


class Schedule(NamedTuple):
  """Discrete-time noise schedule (all float32, shape ``(T,)``)."""
  betas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray


def make_schedule(num_train_timesteps: int = SD15_SCHEDULER["num_train_timesteps"],
                  beta_start: float = SD15_SCHEDULER["beta_start"],
                  beta_end: float = SD15_SCHEDULER["beta_end"],
                  beta_schedule: str = SD15_SCHEDULER["beta_schedule"]) -> Schedule:
  """Builds the β schedule and its cumulative products.

  'scaled_linear' (SD-1.5): β_i = (linspace(√β_start, √β_end, T)_i)²; 'linear': linspace of β.
  Computed in float64 and stored as float32. ``1 − ā`` is computed from the float64 ā so that
  ``sqrt_one_minus_alphas_cumprod`` keeps full relative precision at small t.
  """
  if beta_schedule == "scaled_linear":
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps,
                        dtype=np.float64)**2
  elif beta_schedule == "linear":
    betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
  else:
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}")
  alphas_cumprod = np.cumprod(1.0 - betas)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return Schedule(betas=f32(betas), alphas_cumprod=f32(alphas_cumprod),
                  sqrt_alphas_cumprod=f32(np.sqrt(alphas_cumprod)),
                  sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - alphas_cumprod)))


def alphas_cumprod_of(schedule_config) -> jax.Array:
  """``ā`` (T,) of a config's ``schedule`` section (``num_train_timesteps``, ``beta_start``,
  ``beta_end``, ``beta_schedule``)."""
  sc = schedule_config
  return make_schedule(int(sc.num_train_timesteps), float(sc.beta_start), float(sc.beta_end),
                       sc.beta_schedule).alphas_cumprod


# ----------------------------------------------------------------------------- helpers

def _bcast(coef, x):
  """Reshapes a scalar or ``(B,)`` coefficient to broadcast against ``x`` (B, ...)."""
  coef = jnp.asarray(coef)
  if coef.ndim == 0:
    return coef
  return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def alpha_sigma(t, alphas_cumprod):
  """Returns ``(√ā_t, √(1−ā_t))`` in float32 for integer ``t`` (scalar or (B,))."""
  a = jnp.asarray(alphas_cumprod, jnp.float32)[jnp.asarray(t, jnp.int32)]
  return jnp.sqrt(a), jnp.sqrt(1.0 - a)


def add_noise(z0, noise, t, alphas_cumprod):
  """Forward process ``z_t = √ā_t z0 + √(1−ā_t) ε``; shapes of z0 and noise (B, h, w, C)."""
  sa, so = alpha_sigma(t, alphas_cumprod)
  return _bcast(sa, z0) * z0 + _bcast(so, z0) * noise


def v_target(z0, noise, t, alphas_cumprod):
  """Velocity ``v = √ā_t ε − √(1−ā_t) z0``."""
  sa, so = alpha_sigma(t, alphas_cumprod)
  return _bcast(sa, z0) * noise - _bcast(so, z0) * z0


def x0_from_v(z_t, v, t, alphas_cumprod):
  """``z0 = √ā_t z_t − √(1−ā_t) v``."""
  sa, so = alpha_sigma(t, alphas_cumprod)
  return _bcast(sa, z_t) * z_t - _bcast(so, z_t) * v


def eps_from_v(z_t, v, t, alphas_cumprod):
  """``ε = √(1−ā_t) z_t + √ā_t v``."""
  sa, so = alpha_sigma(t, alphas_cumprod)
  return _bcast(so, z_t) * z_t + _bcast(sa, z_t) * v


def v_from_x0_eps(x0, eps, t, alphas_cumprod):
  """``v = √ā_t ε − √(1−ā_t) x0`` (alias of :func:`v_target`)."""
  return v_target(x0, eps, t, alphas_cumprod)


def x0_from_eps(z_t, eps, t, alphas_cumprod):
  """``z0 = (z_t − √(1−ā_t) ε) / √ā_t``."""
  sa, so = alpha_sigma(t, alphas_cumprod)
  return (z_t - _bcast(so, z_t) * eps) / _bcast(sa, z_t)


def eps_from_x0(z_t, x0, t, alphas_cumprod):
  """``ε = (z_t − √ā_t z0) / √(1−ā_t)``."""
  sa, so = alpha_sigma(t, alphas_cumprod)
  return (z_t - _bcast(sa, z_t) * x0) / _bcast(so, z_t)


def x0_eps_from_output(z_t, model_output, t, alphas_cumprod,
                       prediction_type=TRAINED_PREDICTION_TYPE):
  """Converts a model output (ε or v) at ``z_t`` into ``(x0_pred, eps_pred)``."""
  if prediction_type == "v_prediction":
    return (x0_from_v(z_t, model_output, t, alphas_cumprod),
            eps_from_v(z_t, model_output, t, alphas_cumprod))
  if prediction_type == "epsilon":
    return x0_from_eps(z_t, model_output, t, alphas_cumprod), model_output
  raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


# ----------------------------------------------------------------------------- DDIM

def ddim_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000,
                   steps_offset: int = 1, spacing: str = "leading") -> np.ndarray:
  """Descending int32 DDIM timesteps, as diffusers' ``DDIMScheduler.set_timesteps``.

  'leading': ``arange(n)·(T//n) + steps_offset`` reversed (SD-1.5: 981, 961, ..., 1);
  'trailing': ``round(arange(T, 0, −T/n)) − 1``; 'linspace': ``round(linspace(0, T−1, n))``
  reversed. Returns a NumPy array (static under jit).
  """
  n, T = num_inference_steps, num_train_timesteps
  if n > T:
    raise ValueError(f"num_inference_steps={n} > num_train_timesteps={T}")
  if spacing == "leading":
    ts = (np.arange(n) * (T // n)).round()[::-1] + steps_offset
  elif spacing == "trailing":
    ts = np.round(np.arange(T, 0, -T / n)) - 1
  elif spacing == "linspace":
    ts = np.linspace(0, T - 1, n).round()[::-1]
  else:
    raise ValueError(f"unknown spacing {spacing!r}")
  return ts.astype(np.int32)


def ddim_prev_timesteps(timesteps, num_train_timesteps: int = 1000) -> np.ndarray:
  """Previous timestep of every DDIM step as diffusers computes it: ``t − T // n``
  (may be negative on the last step, meaning "use final_alpha_cumprod")."""
  timesteps = np.asarray(timesteps)
  return (timesteps - num_train_timesteps // len(timesteps)).astype(np.int32)


def ddim_step(sample, model_output, t, t_prev, alphas_cumprod, *,
              prediction_type: str = TRAINED_PREDICTION_TYPE, eta: float = 0.0, noise=None,
              final_alpha_cumprod=None):
  """One DDIM update ``z_t → z_{t_prev}`` (Song et al. Eq. 12).

  Args:
    sample: ``z_t`` (B, h, w, C).
    model_output: ε or v prediction at ``(z_t, t)``, same shape.
    t, t_prev: int scalars or (B,) arrays (may be traced). ``t_prev < 0`` selects
      ``final_alpha_cumprod`` (default ``ā_0``, i.e. diffusers' ``set_alpha_to_one=False``;
      pass 1.0 for ``set_alpha_to_one=True``).
    alphas_cumprod: (T,) float32.
    eta: DDIM stochasticity; ``noise`` (shape of sample) is required when ``eta > 0``.
  Returns:
    ``z_{t_prev}`` with the dtype of ``sample``.
  """
  ac = jnp.asarray(alphas_cumprod, jnp.float32)
  final = ac[0] if final_alpha_cumprod is None else jnp.asarray(final_alpha_cumprod, jnp.float32)
  t_prev = jnp.asarray(t_prev, jnp.int32)
  a_t = ac[jnp.asarray(t, jnp.int32)]
  a_prev = jnp.where(t_prev >= 0, ac[jnp.maximum(t_prev, 0)], final)
  x = sample.astype(jnp.float32)
  out = model_output.astype(jnp.float32)
  x0, eps = x0_eps_from_output(x, out, t, ac, prediction_type)
  variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
  std = eta * jnp.sqrt(variance)
  direction = _bcast(jnp.sqrt(jnp.maximum(1.0 - a_prev - std**2, 0.0)), x) * eps
  prev = _bcast(jnp.sqrt(a_prev), x) * x0 + direction
  if eta > 0:
    if noise is None:
      raise ValueError("ddim_step with eta > 0 needs `noise`")
    prev = prev + _bcast(std, x) * noise.astype(jnp.float32)
  return prev.astype(sample.dtype)
