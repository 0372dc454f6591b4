"""Standard and two-step (Alg. 1) losses against an independent NumPy implementation."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from seamless_jax.diffusion import losses
from seamless_jax.diffusion import schedule as sched

AC = sched.make_schedule().alphas_cumprod
# The reference works in float64 on the same ā table the loss gets (float32 values), so the
# comparison measures the loss computation, not the table's float32 rounding (which alone moves
# σ_0² = 1 − ā_0 by ~7e-5 relative).
AC64 = np.asarray(AC, np.float64)
B, H, W, C = 3, 4, 4, 4


# --------------------------------------------------------------- NumPy reference (float64)

def np_v_fn(params, z, t):
  """Small linear model: v = z·W + c·t/1000 (per channel)."""
  Wm, c = params
  return z @ Wm + c * (t / 1000.0)[:, None, None, None]


def np_two_step(params, z0, z0k, keep, t, e1, e2, *, stride, weight, second_t,
                z0_hat_params=None):
  """Alg. 1 written literally. ``z0_hat_params`` (for stop_grad) computes ẑ0 with other params."""
  sq = lambda a: np.sqrt(a)[:, None, None, None]
  a_t = AC64[t]
  z_t = sq(a_t) * z0 + sq(1 - a_t) * e1
  v1 = sq(a_t) * e1 - sq(1 - a_t) * z0
  l1 = np.mean((v1 - np_v_fn(params, z_t, t)) ** 2, axis=(1, 2, 3))
  p_hat = params if z0_hat_params is None else z0_hat_params
  z0_hat = sq(a_t) * z_t - sq(1 - a_t) * np_v_fn(p_hat, z_t, t)
  z0_hat = z0_hat * (1 - keep) + z0k * keep
  tp = t - stride  # lines 7-9: ẑ0 is re-noised at ā_{t'} for both options
  a_p = AC64[tp]
  z_tp = sq(a_p) * z0_hat + sq(1 - a_p) * e2
  e2_star = (z_tp - sq(a_p) * z0) / sq(1 - a_p)
  v2 = sq(a_p) * e2_star - sq(1 - a_p) * z0
  t_in = tp if second_t == "prev" else t  # line 10 as printed: vθ(ẑ_{t'}, t, C)
  l2 = np.mean((v2 - np_v_fn(params, z_tp, t_in)) ** 2, axis=(1, 2, 3))
  return l1.mean() + weight * l2.mean(), l1, l2


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  z0 = rng.standard_normal((B, H, W, C))
  z0k = rng.standard_normal((B, H, W, C))
  keep = (rng.uniform(size=(B, H, W, 1)) > 0.5).astype(np.float64)
  e1, e2 = rng.standard_normal((2, B, H, W, C))
  t = np.array([20, 517, 999])  # includes the smallest allowed t for stride 20
  params = (np.eye(C) * 0.3 + 0.1 * rng.standard_normal((C, C)), 0.2 * rng.standard_normal(C))
  return params, z0, z0k, keep, t, e1, e2


def _jax_v_fn(params):
  Wm, c = params
  return lambda z, t: z @ Wm + c * (t / 1000.0)[:, None, None, None]


def _jax_loss(params, z0, z0k, keep, t, e1, e2, **kw):
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return losses.two_step_loss(_jax_v_fn(params), f32(z0), f32(z0k), f32(keep),
                              jnp.asarray(t, jnp.int32), f32(e1), f32(e2), AC, **kw)


@pytest.mark.parametrize("scan_calls", [True, False])
@pytest.mark.parametrize("stop_grad", [True, False])
@pytest.mark.parametrize("second_t", ["prev", "same"])
def test_two_step_matches_numpy_values_and_grads(second_t, stop_grad, scan_calls):
  params, z0, z0k, keep, t, e1, e2 = _inputs()
  kw = dict(stride=20, weight=0.5, second_t=second_t, scan_calls=scan_calls)
  ref, ref_l1, ref_l2 = np_two_step(params, z0, z0k, keep, t, e1, e2,
                                    stride=20, weight=0.5, second_t=second_t)
  p32 = tuple(jnp.asarray(p, jnp.float32) for p in params)
  loss, aux = _jax_loss(p32, z0, z0k, keep, t, e1, e2, stop_grad=stop_grad, **kw)
  np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(aux["loss1_per_sample"], ref_l1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(aux["loss2_per_sample"], ref_l2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(aux["loss2"], ref_l2.mean(), rtol=1e-5, atol=1e-5)

  # Gradients: jax.grad (float32) vs central finite differences of the float64 reference.
  grads = jax.grad(lambda p: _jax_loss(p, z0, z0k, keep, t, e1, e2, stop_grad=stop_grad,
                                       **kw)[0])(p32)
  h = 1e-6
  for i, g in enumerate(grads):
    fd = np.zeros_like(params[i])
    for idx in np.ndindex(params[i].shape):
      plus = [p.copy() for p in params]
      minus = [p.copy() for p in params]
      plus[i][idx] += h
      minus[i][idx] -= h
      hat = params if stop_grad else None  # stop_grad: ẑ0 frozen at the base params
      np_kw = dict(stride=20, weight=0.5, second_t=second_t, z0_hat_params=hat)
      fd[idx] = (np_two_step(plus, z0, z0k, keep, t, e1, e2, **np_kw)[0]
                 - np_two_step(minus, z0, z0k, keep, t, e1, e2, **np_kw)[0]) / (2 * h)
    err = np.max(np.abs(np.asarray(g) - fd)) / max(1.0, np.max(np.abs(fd)))
    assert err < 1e-4, f"param {i}: relative grad error {err:.2e}"


@pytest.mark.parametrize("second_t", ["prev", "same"])
def test_second_call_renoises_at_t_prev_and_feeds_the_chosen_timestep(second_t):
  """Both options re-noise ẑ0 at t' = t − stride (Alg. 1 line 7); only the timestep input of
  the second model call differs: t' for 'prev', t for 'same' (line 10 as printed)."""
  _, z0, z0k, keep, t, e1, e2 = _inputs(4)
  calls = []

  def v_fn(z, tt):
    calls.append((np.asarray(z, np.float64), np.asarray(tt)))
    return 0.5 * z

  f32 = lambda a: jnp.asarray(a, jnp.float32)
  _, aux = losses.two_step_loss(v_fn, f32(z0), f32(z0k), f32(keep), jnp.asarray(t, jnp.int32),
                                f32(e1), f32(e2), AC, stride=20, second_t=second_t,
                                scan_calls=False)  # two plain calls: their inputs are concrete
  assert len(calls) == 2
  np.testing.assert_array_equal(calls[0][1], t)
  np.testing.assert_array_equal(calls[1][1], t - 20 if second_t == "prev" else t)
  np.testing.assert_array_equal(aux["t_prev"], t - 20)
  np.testing.assert_array_equal(aux["t_model2"], calls[1][1])
  # The second input is ẑ0 noised with ā_{t−20} (NumPy, float64), not with ā_t.
  sq = lambda a: np.sqrt(a)[:, None, None, None]
  z_t = sq(AC64[t]) * z0 + sq(1 - AC64[t]) * e1
  z0_hat = sq(AC64[t]) * z_t - sq(1 - AC64[t]) * 0.5 * z_t
  z0_hat = z0_hat * (1 - keep) + z0k * keep
  a_p = AC64[t - 20]
  np.testing.assert_allclose(calls[1][0], sq(a_p) * z0_hat + sq(1 - a_p) * e2, atol=1e-5)
  at_t = sq(AC64[t]) * z0_hat + sq(1 - AC64[t]) * e2
  assert np.max(np.abs(calls[1][0] - at_t)) > 1e-3  # the old 'same' (ā_t) is distinguishable


def test_stop_grad_changes_gradient():
  """The two variants share the value but not the gradient (otherwise the option is void)."""
  params, z0, z0k, keep, t, e1, e2 = _inputs(1)
  p32 = tuple(jnp.asarray(p, jnp.float32) for p in params)
  g = {sg: jax.grad(lambda p: _jax_loss(p, z0, z0k, keep, t, e1, e2, stop_grad=sg)[0])(p32)[0]
       for sg in (True, False)}
  assert np.max(np.abs(g[True] - g[False])) > 1e-3


def _oracle_v_fn(z0):
  """Returns the exact velocity that maps z_t back to z0: v = (√ā z_t − z0)/√(1−ā)."""
  def v_fn(z, t):
    sa, so = sched.alpha_sigma(t, AC)
    return (sa[:, None, None, None] * z - z0) / so[:, None, None, None]
  return v_fn


def test_oracle_gives_zero_loss1_and_keep_one_gives_known_latent():
  _, z0, z0k, keep, t, e1, e2 = (jnp.asarray(a, jnp.float32) if isinstance(a, np.ndarray)
                                 else a for a in _inputs(2))
  t = jnp.asarray(t, jnp.int32)
  v_fn = _oracle_v_fn(z0)
  loss, aux = losses.two_step_loss(v_fn, z0, z0k, keep, t, e1, e2, AC)
  assert float(aux["loss1"]) < 1e-10, aux["loss1"]
  # Oracle ẑ0 = z0 in the hole, z0_known in the kept cells.
  np.testing.assert_allclose(aux["z0_hat"], np.where(keep > 0, z0k, z0), atol=1e-5)
  # keep = 1 everywhere: the blended ẑ0 is exactly z0_known, whatever the model says.
  bad_v = lambda z, t: 3.0 * z + 1.0
  _, aux1 = losses.two_step_loss(bad_v, z0, z0k, jnp.ones_like(keep), t, e1, e2, AC)
  np.testing.assert_array_equal(aux1["z0_hat"], z0k)
  # keep = 1 and z0_known = z0: the second step is an ordinary v-loss too -> 0 for the oracle.
  _, aux2 = losses.two_step_loss(v_fn, z0, z0, jnp.ones_like(keep), t, e1, e2, AC)
  assert float(aux2["loss2"]) < 1e-9, aux2["loss2"]


def test_standard_loss_matches_numpy_and_oracle():
  params, z0, _, _, t, e1, _ = _inputs(3)
  sq = lambda a: np.sqrt(a)[:, None, None, None]
  a = AC64[t]
  z_t = sq(a) * z0 + sq(1 - a) * e1
  ref = np.mean((sq(a) * e1 - sq(1 - a) * z0 - np_v_fn(params, z_t, t)) ** 2)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  loss, aux = losses.standard_loss(_jax_v_fn(tuple(map(f32, params))), f32(z0),
                                   jnp.asarray(t, jnp.int32), f32(e1), AC)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  assert aux["loss_per_sample"].shape == (B,)
  loss0, _ = losses.standard_loss(_oracle_v_fn(f32(z0)), f32(z0), jnp.asarray(t, jnp.int32),
                                  f32(e1), AC)
  assert float(loss0) < 1e-10


def test_sample_timesteps_range():
  t = losses.sample_timesteps(jax.random.PRNGKey(0), 20000, stride=20, min_t=5,
                              num_train_timesteps=1000)
  assert t.dtype == jnp.int32 and t.shape == (20000,)
  assert int(t.min()) == 25 and int(t.max()) == 999  # both ends are reached
  with pytest.raises(ValueError):
    losses.sample_timesteps(jax.random.PRNGKey(0), 2, stride=990, min_t=10)


@pytest.mark.parametrize("second_t", ["prev", "same"])
def test_two_step_finite_in_bfloat16_for_every_allowed_t(second_t):
  """Every t the sampler can draw (stride 20, min_t 0) gives a finite loss and gradient with a
  bfloat16 model and bfloat16 inputs, close to the float32 value; the literal bf16 formula
  (1 − ā_t' evaluated in bfloat16) is not finite at t' = 0, which is what the guard avoids."""
  stride = 20
  t = jnp.arange(stride, 1000, dtype=jnp.int32)  # all allowed t
  n = t.shape[0]
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  z0 = jax.random.normal(k[0], (n, 2, 2, 4))
  z0k = jax.random.normal(k[1], (n, 2, 2, 4))
  keep = jnp.zeros((n, 2, 2, 1)).at[:, 0].set(1.0)
  e1, e2 = jax.random.normal(k[2], (2, n, 2, 2, 4))
  Wm = jnp.eye(4) * 0.5 + 0.3  # a poor model: large first-step error → large ẑ0 − z0

  def run(dtype, Wm):
    v_fn = lambda z, tt: (z.astype(dtype) @ Wm.astype(dtype)).astype(dtype)
    cast = lambda a: a.astype(dtype)
    return losses.two_step_loss(v_fn, cast(z0), cast(z0k), keep.astype(dtype), t, cast(e1),
                                cast(e2), AC, stride=stride, second_t=second_t)

  loss_bf, aux_bf = run(jnp.bfloat16, Wm)
  loss_32, _ = run(jnp.float32, Wm)
  grad_bf = jax.grad(lambda w: run(jnp.bfloat16, w)[0])(Wm)
  assert np.all(np.isfinite(aux_bf["loss2_per_sample"])) and np.isfinite(float(loss_bf))
  assert np.all(np.isfinite(grad_bf))
  assert abs(float(loss_bf) - float(loss_32)) / float(loss_32) < 5e-2
  # Naive bfloat16 evaluation of σ_t'² = 1 − ā_t' at t' = 0 collapses to 0 → division by 0.
  naive_sigma = jnp.sqrt(1.0 - AC[0].astype(jnp.bfloat16))
  assert float(naive_sigma) == 0.0
  # The largest target amplification √ā_t'/σ_t' over the allowed range is bounded (≈34 at t'=0).
  amp = float(jnp.max(jnp.sqrt(AC[aux_bf["t_prev"]] / (1 - AC[aux_bf["t_prev"]]))))
  assert amp < 35.0, amp


@pytest.mark.parametrize("scan_calls,model_copies", [(True, 1), (False, 2)])
def test_two_step_loss_compiles_once(scan_calls, model_copies):
  """One trace per shape; with ``scan_calls`` the program holds ONE copy of the model (the
  two calls are the iterations of a scan), otherwise two."""
  traces = []

  def v_fn(z, t):
    traces.append(1)
    return 0.5 * z

  @jax.jit
  def step(z0, z0k, keep, t, e1, e2):
    return losses.two_step_loss(v_fn, z0, z0k, keep, t, e1, e2, AC, scan_calls=scan_calls)[0]

  for seed in range(3):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    z = lambda k: jax.random.normal(k, (2, 4, 4, 4))
    keep = (jax.random.uniform(ks[4], (2, 4, 4, 1)) > 0.5).astype(jnp.float32)
    t = losses.sample_timesteps(ks[3], 2, stride=20, min_t=0, num_train_timesteps=1000)
    jax.block_until_ready(step(z(ks[0]), z(ks[1]), keep, t, z(ks[2]), z(ks[3])))
  assert len(traces) == model_copies  # one trace of the loss, the model in it once or twice
  assert step._cache_size() == 1


@pytest.mark.parametrize("second_t", ["prev", "same"])
def test_train_step_timesteps_leave_room_for_the_stride(second_t):
  """The step's random inputs draw t ≥ stride + min_t for BOTH options (each re-noises at
  t − stride), so t' never goes below min_t; the standard loss uses every t."""
  from configs import two_step, standard  # pylint: disable=import-outside-toplevel
  from seamless_jax import objectives  # pylint: disable=import-outside-toplevel
  c = two_step.get_config("tiny")
  c.two_step.second_t, c.two_step.stride, c.two_step.min_t = second_t, 20, 3
  rand = objectives.for_config(c).random_inputs(c, jax.random.PRNGKey(0), 20000, (2, 2, 4))
  assert int(rand["t"].min()) == 23 and int(rand["t"].max()) == 999
  assert rand["noise2"].shape == (20000, 2, 2, 4)
  c_std = standard.get_config("tiny")
  draw = lambda n: objectives.for_config(c_std).random_inputs(c_std, jax.random.PRNGKey(0), n,
                                                               (2, 2, 4))
  assert int(draw(20000)["t"].min()) == 0 and "noise2" not in draw(2)
