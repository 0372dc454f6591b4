"""Schedule, conversions and DDIM vs diffusers' DDIMScheduler (SD-1.5 config)."""

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp

from seamless_jax.diffusion import schedule as sched

diffusers = pytest.importorskip("diffusers")


def _sd15_ddim(prediction_type):
  return diffusers.DDIMScheduler(
      num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
      beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
      steps_offset=1, prediction_type=prediction_type, timestep_spacing="leading")


def test_alphas_cumprod_matches_diffusers():
  ours = np.asarray(sched.make_schedule().alphas_cumprod)
  ref = _sd15_ddim("epsilon").alphas_cumprod.numpy()
  err = np.max(np.abs(ours - ref))
  assert ours.shape == (1000,) and err < 1e-6, err


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [50, 20, 7])
def test_ddim_timesteps_match_diffusers(n, spacing):
  ref = diffusers.DDIMScheduler.from_config(
      dict(_sd15_ddim("epsilon").config, timestep_spacing=spacing))
  ref.set_timesteps(n)
  ours = sched.ddim_timesteps(n, 1000, steps_offset=1, spacing=spacing)
  np.testing.assert_array_equal(ours, ref.timesteps.numpy())
  if spacing == "leading" and n == 50:
    assert ours[0] == 981 and ours[-1] == 1


def test_conversions_roundtrip():
  ac = sched.make_schedule().alphas_cumprod
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  z0 = jax.random.normal(k1, (3, 4, 4, 4))
  eps = jax.random.normal(k2, (3, 4, 4, 4))
  t = jnp.array([0, 500, 999])
  z_t = sched.add_noise(z0, eps, t, ac)
  v = sched.v_target(z0, eps, t, ac)
  for pred_type, out in [("v_prediction", v), ("epsilon", eps)]:
    x0, e = sched.x0_eps_from_output(z_t, out, t, ac, pred_type)
    # x0 from ε at t=999 divides by √ā ≈ 0.068, so allow 1e-4 there.
    np.testing.assert_allclose(x0, z0, atol=1e-4)
    np.testing.assert_allclose(e, eps, atol=1e-5)
  np.testing.assert_allclose(sched.eps_from_x0(z_t, z0, t, ac), eps, atol=1e-4)
  np.testing.assert_allclose(sched.v_from_x0_eps(z0, eps, t, ac), v, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_ddim_50_step_trajectory_matches_diffusers(prediction_type, eta):
  n = 50
  ref = _sd15_ddim(prediction_type)
  ref.set_timesteps(n)
  ac = sched.make_schedule().alphas_cumprod
  ts = sched.ddim_timesteps(n)
  prev = sched.ddim_prev_timesteps(ts)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  outs = rng.standard_normal((n, 2, 8, 8, 4)).astype(np.float32)
  noises = rng.standard_normal((n, 2, 8, 8, 4)).astype(np.float32)
  to_t = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
  x_ref, x_ours = to_t(x), jnp.asarray(x)
  step = jax.jit(sched.ddim_step, static_argnames=("prediction_type", "eta"))
  max_err = 0.0
  for i, t in enumerate(ref.timesteps):
    assert int(t) == ts[i]
    x_ref = ref.step(to_t(outs[i]), t, x_ref, eta=eta,
                     variance_noise=to_t(noises[i]) if eta > 0 else None).prev_sample
    x_ours = step(x_ours, jnp.asarray(outs[i]), jnp.int32(ts[i]), jnp.int32(prev[i]), ac,
                  prediction_type=prediction_type, eta=eta,
                  noise=jnp.asarray(noises[i]) if eta > 0 else None)
    r = x_ref.numpy().transpose(0, 2, 3, 1)
    # Random ε outputs drive the ε-trajectory to |x| ≈ 50, where float32 rounding alone is
    # ~4e-5 absolute; so the 1e-5 bound is on the error relative to max(1, max|x|).
    err = np.max(np.abs(np.asarray(x_ours) - r)) / max(1.0, np.max(np.abs(r)))
    max_err = max(max_err, err)
  assert max_err < 1e-5, f"max scaled error over the trajectory {max_err:.2e}"
  assert prev[-1] < 0  # the last step used final_alpha_cumprod = ā_0


def test_ddim_step_per_sample_timesteps():
  """A (B,) vector of timesteps equals stepping each sample on its own."""
  ac = sched.make_schedule().alphas_cumprod
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 4))
  out = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 4))
  both = sched.ddim_step(x, out, jnp.array([981, 21]), jnp.array([961, 1]), ac)
  a = sched.ddim_step(x[:1], out[:1], 981, 961, ac)
  b = sched.ddim_step(x[1:], out[1:], 21, 1, ac)
  np.testing.assert_allclose(both, jnp.concatenate([a, b]), atol=1e-6)
