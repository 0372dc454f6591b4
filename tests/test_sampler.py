"""BLD/DDIM sampler: oracle models, 9-channel inputs, guidance batching, determinism, one jit."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from seamless_jax.diffusion import schedule as sched
from seamless_jax.diffusion.sampler import bld_sample, make_bld_sampler

AC = sched.make_schedule().alphas_cumprod
B, h, w, L, D = 2, 8, 8, 3, 5


def _data(seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  z0_true = jax.random.normal(k[0], (B, h, w, 4))
  z0_known = jax.random.normal(k[1], (B, h, w, 4))
  keep = jnp.zeros((B, h, w, 1)).at[:, :, : w // 2].set(1.0)  # left half known
  cond = jnp.ones((B, L, D))
  uncond = jnp.zeros((1, L, D))
  return z0_true, z0_known, keep, cond, uncond


def _oracle(prediction_type, target_fn):
  """Model whose x0 prediction is ``target_fn(context)`` for every input latent."""
  def model_fn(params, z_in, t, context):
    z = z_in[..., :4]
    x0 = target_fn(context)
    sa, so = (c[:, None, None, None] for c in sched.alpha_sigma(t, AC))
    if prediction_type == "v_prediction":
      return (sa * z - x0) / so
    return (z - sa * x0) / so
  return model_fn


@pytest.mark.parametrize("inpaint_channels", [False, True])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_oracle_returns_z0_in_hole_and_known_elsewhere(prediction_type, inpaint_channels):
  z0_true, z0_known, keep, cond, uncond = _data()
  seen = {}

  def target(context):
    return jnp.concatenate([z0_true, z0_true], 0)

  base = _oracle(prediction_type, target)

  def model_fn(params, z_in, t, context):
    seen["shape"] = z_in.shape
    out = base(params, z_in, t, context)
    if inpaint_channels:  # diffusers order: latents(4), mask(1, 1 = hole), masked latents(4)
      ok = (jnp.all(z_in[..., 4:5] == jnp.concatenate([1 - keep] * 2))
            & jnp.all(z_in[..., 5:] == jnp.concatenate([z0_known] * 2)))
      out = jnp.where(ok, out, jnp.nan)  # a wrong layout poisons the result
    return out

  out = bld_sample(model_fn, None, z0_known, keep, cond, uncond, jax.random.PRNGKey(0), AC,
                   prediction_type=prediction_type, inpaint_channels=inpaint_channels,
                   guidance_scale=3.0, set_alpha_to_one=True)
  expected = np.where(keep > 0, z0_known, z0_true)
  err = np.max(np.abs(np.asarray(out) - expected))
  assert err < 1e-4, err
  np.testing.assert_array_equal(np.asarray(out)[:, :, : w // 2], np.asarray(z0_known)[:, :, : w // 2])
  assert seen["shape"] == (2 * B, h, w, 9 if inpaint_channels else 4)


def test_default_final_alpha_leaves_small_residual_noise_like_diffusers():
  """set_alpha_to_one=False (SD-1.5) ends at ā_0: hole = √ā_0 z0 + √(1−ā_0) ε̂ ≠ z0 exactly."""
  z0_true, z0_known, keep, cond, uncond = _data()
  model = _oracle("v_prediction", lambda c: jnp.concatenate([z0_true, z0_true], 0))
  out = bld_sample(model, None, z0_known, keep, cond, uncond, jax.random.PRNGKey(0), AC)
  hole = np.asarray(keep) == 0
  diff = np.abs(np.asarray(out) - np.asarray(z0_true))[np.broadcast_to(hole, out.shape)]
  assert 1e-3 < diff.max() < 0.2  # residual of size √(1−ā_0) ≈ 0.03 × |ε̂|
  np.testing.assert_array_equal(np.where(keep > 0, out, 0), np.where(keep > 0, z0_known, 0))


def test_guidance_uses_uncond_first_then_cond():
  """With x0-oracles that differ between halves the result is x0_u + g(x0_c − x0_u)."""
  z0_true, z0_known, keep, cond, uncond = _data()
  z_a = z0_true
  z_b = -0.5 * z0_true + 1.0

  def target(context):  # context mean is 0 for uncond, 1 for cond
    s = jnp.mean(context, axis=(1, 2))[:, None, None, None]
    both_a = jnp.concatenate([z_a, z_a], 0)
    both_b = jnp.concatenate([z_b, z_b], 0)
    return both_a + s * (both_b - both_a)

  g = 3.0
  out = bld_sample(_oracle("v_prediction", target), None, z0_known, keep, cond, uncond,
                   jax.random.PRNGKey(1), AC, guidance_scale=g, set_alpha_to_one=True,
                   num_inference_steps=10)
  expected = np.where(keep > 0, z0_known, z_a + g * (z_b - z_a))
  np.testing.assert_allclose(out, expected, atol=1e-4)


def _toy_model(params, z_in, t, context):
  return params * z_in[..., :4] + 0.01 * jnp.mean(context) + 1e-4 * t[:, None, None, None]


def test_deterministic_for_key_and_compiles_once():
  z0_true, z0_known, keep, cond, uncond = _data()
  traces = []

  def model_fn(params, z_in, t, context):
    traces.append(1)
    return _toy_model(params, z_in, t, context)

  sample = make_bld_sampler(model_fn, num_inference_steps=8, eta=0.5)
  p = jnp.float32(0.3)
  a1 = sample(p, z0_known, keep, cond, uncond, jax.random.PRNGKey(0), AC, 3.0)
  a2 = sample(p, z0_known, keep, cond, uncond, jax.random.PRNGKey(0), AC, 3.0)
  b = sample(p, z0_known + 1, keep, cond, uncond, jax.random.PRNGKey(1), AC, 2.0)
  np.testing.assert_array_equal(a1, a2)
  assert np.max(np.abs(np.asarray(a1) - np.asarray(b))) > 1e-2
  assert np.all(np.isfinite(b))
  assert len(traces) == 1, "model traced more than once (scan body traced once per compile)"
  assert sample._cache_size() == 1


def test_jitted_sampler_matches_python_loop():
  """The scan equals a plain Python loop of blend → guided model → ddim_step (η = 0)."""
  z0_true, z0_known, keep, cond, uncond = _data(3)
  p = jnp.float32(0.2)
  n, g = 6, 2.5
  key = jax.random.PRNGKey(7)
  out = make_bld_sampler(_toy_model, num_inference_steps=n)(p, z0_known, keep, cond, uncond,
                                                            key, AC, g)
  init_key, loop_key = jax.random.split(key)
  z = jax.random.normal(init_key, z0_known.shape)
  ts = sched.ddim_timesteps(n)
  ctx = jnp.concatenate([jnp.broadcast_to(uncond, cond.shape), cond])
  for i, (t, tp) in enumerate(zip(ts, sched.ddim_prev_timesteps(ts))):
    blend_key, _ = jax.random.split(jax.random.fold_in(loop_key, i))
    noised = sched.add_noise(z0_known, jax.random.normal(blend_key, z.shape), int(t), AC)
    z = z * (1 - keep) + noised * keep
    o = _toy_model(p, jnp.concatenate([z, z]), jnp.full((2 * B,), t, jnp.int32), ctx)
    guided = o[:B] + g * (o[B:] - o[:B])
    z = sched.ddim_step(z, guided, int(t), int(tp), AC)
  z = z * (1 - keep) + z0_known * keep
  np.testing.assert_allclose(out, z, atol=1e-5)
