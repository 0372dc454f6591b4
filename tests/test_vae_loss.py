"""Blend-aware VAE loss (Eq. 6 + LDM recipe), adaptive weight, PatchGAN discriminator."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from seamless_jax.diffusion import losses
from seamless_jax.models.discriminator import NLayerDiscriminator

Bsz, H, W = 2, 16, 16


def _toy_vae():
  """Encoder: 8×8 mean-pool + linear map to (mean, logvar); decoder: nearest up + linear."""
  k = jax.random.split(jax.random.PRNGKey(42), 3)
  enc_w = jax.random.normal(k[0], (3, 8)) * 0.5
  params = {"dec": {"kernel": jax.random.normal(k[1], (4, 3)) * 0.5,
                    "conv_out": jax.random.normal(k[2], (3, 3)) * 0.5}}

  def encode_fn(x):
    pooled = x.reshape(x.shape[0], H // 8, 8, W // 8, 8, 3).mean(axis=(2, 4))
    out = pooled @ enc_w
    return out[..., :4], out[..., 4:] - 2.0

  def make_decode(p):
    def decode_fn(z):
      up = jnp.repeat(jnp.repeat(z, 8, axis=1), 8, axis=2)
      return jnp.tanh(up @ p["dec"]["kernel"]) @ p["dec"]["conv_out"]
    return decode_fn

  return encode_fn, make_decode, params


def _batch(seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.uniform(k1, (Bsz, H, W, 3), minval=-1, maxval=1)
  keep = jnp.ones((Bsz, H, W, 1)).at[:, 4:12, 4:12].set(0.0)  # central hole
  return x, keep


def test_blend_reconstruct_is_eq6():
  enc, make_dec, p = _toy_vae()
  dec = make_dec(p)
  x, keep = _batch()
  out = losses.blend_reconstruct(enc, dec, x, keep, None, sample_posterior=False)
  # keep↓ at 2×2 latent size, nearest = pixel (8i+4, 8j+4): inside the hole → all 0 here.
  keep_lat = keep[:, 4::8, 4::8]
  z = enc(x)[0] * (1 - keep_lat) + enc(x * keep)[0] * keep_lat
  np.testing.assert_allclose(out, dec(z), atol=1e-6)
  # keep = 1: only E(x·1) = E(x) is used; keep = 0 likewise (plain reconstruction).
  for k in (jnp.ones_like(keep), jnp.zeros_like(keep)):
    np.testing.assert_allclose(losses.blend_reconstruct(enc, dec, x, k, None, False),
                               dec(enc(x)[0]), atol=1e-6)
  # Eq. 6 differs from plain reconstruction when a kept latent cell has masked pixels
  # (rows 8–10 masked, but latent row 1 takes pixel row 12, which is kept).
  keep2 = jnp.ones_like(keep).at[:, 8:11].set(0.0)
  assert np.max(np.abs(losses.blend_reconstruct(enc, dec, x, keep2, None, False)
                       - dec(enc(x)[0]))) > 1e-3
  # Sampling is deterministic for a key and differs from the mean.
  a = losses.blend_reconstruct(enc, dec, x, keep, jax.random.PRNGKey(0), True)
  b = losses.blend_reconstruct(enc, dec, x, keep, jax.random.PRNGKey(0), True)
  np.testing.assert_array_equal(a, b)
  assert np.max(np.abs(a - out)) > 1e-4


def _np_lpips(x, y):
  return np.mean((x - y) ** 2, axis=(1, 2, 3))


def test_vae_blend_loss_terms_match_numpy():
  enc, make_dec, p = _toy_vae()
  dec = make_dec(p)
  x, keep = _batch(1)
  disc = lambda img: img[..., :1] * 0.5 + 0.1
  logvar = jnp.float32(0.3)
  terms = losses.vae_blend_loss(enc, dec, x, keep, None, sample_posterior=False,
                                lpips_fn=lambda a, b: jnp.mean((a - b) ** 2, axis=(1, 2, 3)),
                                logvar=logvar, disc_fn=disc, step=10, disc_start=5,
                                lpips_weight=0.7)
  xn, xh = np.asarray(x, np.float64), np.asarray(terms["x_hat"], np.float64)
  rec = np.abs(xn - xh) + 0.7 * _np_lpips(xn, xh)[:, None, None, None]
  nll = np.sum(rec / np.exp(0.3) + 0.3) / Bsz
  m1, lv1 = (np.asarray(a, np.float64) for a in enc(x))
  m2, lv2 = (np.asarray(a, np.float64) for a in enc(x * keep))
  kl = lambda m, lv: np.mean(0.5 * np.sum(m**2 + np.exp(lv) - 1 - lv, axis=(1, 2, 3)))
  np.testing.assert_allclose(terms["nll_loss"], nll, rtol=1e-5)
  np.testing.assert_allclose(terms["kl_loss"], 0.5 * (kl(m1, lv1) + kl(m2, lv2)), rtol=1e-5)
  np.testing.assert_allclose(terms["g_loss"], -np.mean(xh[..., :1] * 0.5 + 0.1), rtol=1e-5)
  assert float(terms["disc_factor"]) == 1.0
  before = losses.vae_blend_loss(enc, dec, x, keep, None, sample_posterior=False,
                                 lpips_fn=lambda a, b: jnp.zeros(a.shape[0]), logvar=logvar,
                                 step=4, disc_start=5)
  assert float(before["disc_factor"]) == 0.0 and float(before["g_loss"]) == 0.0


def test_generator_grads_with_adaptive_weight():
  enc, make_dec, params = _toy_vae()
  x, keep = _batch(2)
  disc = lambda img: jnp.sum(img, axis=-1, keepdims=True) * 0.3
  lp = lambda a, b: jnp.mean(jnp.abs(a - b), axis=(1, 2, 3))
  kw = dict(lpips_fn=lp, logvar=jnp.float32(0.0), disc_fn=disc, sample_posterior=False,
            disc_start=0)
  terms_fn = lambda p, step=100: losses.vae_blend_loss(enc, make_dec(p), x, keep, None,
                                                       step=step, **kw)
  last = lambda g: g["dec"]["conv_out"]
  loss, grads, terms = losses.generator_loss_and_grads(terms_fn, params, last_layer_fn=last,
                                                       kl_weight=1e-6, disc_weight=0.5)
  g_nll = last(jax.grad(lambda p: terms_fn(p)["nll_loss"])(params))
  g_g = last(jax.grad(lambda p: terms_fn(p)["g_loss"])(params))
  d_ref = np.clip(np.linalg.norm(g_nll) / (np.linalg.norm(g_g) + 1e-4), 0, 1e4) * 0.5
  np.testing.assert_allclose(terms["d_weight"], d_ref, rtol=1e-5)
  assert 0 < d_ref < 1e4  # the clip is not what makes this pass
  total = lambda p: losses.vae_total_loss(terms_fn(p), d_ref, kl_weight=1e-6)
  ref_grads = jax.grad(total)(params)
  np.testing.assert_allclose(loss, total(params), rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # Before disc_start the discriminator term contributes nothing.
  loss0, grads0, t0 = losses.generator_loss_and_grads(
      lambda p: terms_fn(p, step=-1), params, last_layer_fn=last)
  nll_grads = jax.grad(lambda p: terms_fn(p)["nll_loss"] + 1e-6 * terms_fn(p)["kl_loss"])(params)
  for a, b in zip(jax.tree_util.tree_leaves(grads0), jax.tree_util.tree_leaves(nll_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert float(t0["d_weight"]) == 0.0


def test_adaptive_weight_clip_and_hinge():
  w = losses.adaptive_disc_weight(jnp.array([3.0, 4.0]), jnp.zeros(2), 0.5)
  assert float(w) == pytest.approx(0.5e4)  # 5/1e-4 = 5e4 clipped to 1e4, × 0.5
  w2 = losses.adaptive_disc_weight(jnp.array([3.0, 4.0]), jnp.array([0.0, 10.0]), 0.5)
  assert float(w2) == pytest.approx(0.5 * 5 / (10 + 1e-4), rel=1e-6)
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-3.0, 0.0])
  # relu(1−real) = [0, .5] → .25 ; relu(1+fake) = [0, 1] → .5 ; 0.5·(.25+.5)
  assert float(losses.hinge_d_loss(real, fake)) == pytest.approx(0.375)
  d = lambda img: jnp.mean(img, axis=(1, 2, 3))
  x, xh = jnp.ones((2, 4, 4, 3)), -jnp.ones((2, 4, 4, 3))
  loss, _ = losses.discriminator_loss(d, x, xh, step=0, disc_start=1)
  assert float(loss) == 0.0
  loss, _ = losses.discriminator_loss(d, x, xh, step=1, disc_start=1)
  assert float(loss) == pytest.approx(0.0)  # perfectly separated at margin 1
  loss, _ = losses.discriminator_loss(d, xh, x, step=1, disc_start=1)
  assert float(loss) == pytest.approx(2.0)


def test_discriminator_matches_taming_layout_in_torch():
  torch = pytest.importorskip("torch")
  nn = torch.nn
  torch.manual_seed(0)
  ref = nn.Sequential(
      nn.Conv2d(3, 64, 4, 2, 1), nn.LeakyReLU(0.2, True),
      nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2, True),
      nn.Conv2d(128, 256, 4, 2, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.2, True),
      nn.Conv2d(256, 512, 4, 1, 1, bias=False), nn.BatchNorm2d(512), nn.LeakyReLU(0.2, True),
      nn.Conv2d(512, 1, 4, 1, 1)).train()
  with torch.no_grad():
    for m in ref:
      if isinstance(m, nn.BatchNorm2d):
        m.weight.normal_(1.0, 0.1)
        m.bias.normal_(0.0, 0.1)
  params = {}
  for i, m in enumerate(ref):
    if isinstance(m, nn.Conv2d):
      params[f"main_{i}"] = {"kernel": m.weight.detach().numpy().transpose(2, 3, 1, 0)}
      if m.bias is not None:
        params[f"main_{i}"]["bias"] = m.bias.detach().numpy()
    elif isinstance(m, nn.BatchNorm2d):
      params[f"main_{i}"] = {"scale": m.weight.detach().numpy(), "bias": m.bias.detach().numpy()}
  model = NLayerDiscriminator()
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
  assert jax.tree_util.tree_map(lambda a: a.shape, shapes["params"]) == \
      jax.tree_util.tree_map(np.shape, params)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  got = model.apply({"params": params}, jnp.asarray(x))
  assert got.shape == (2, 2, 2, 1) == want.shape
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_vae_loss_compiles_once():
  enc, make_dec, params = _toy_vae()
  traces = []

  def terms_fn(p, x, keep, key, step):
    traces.append(1)
    return losses.vae_blend_loss(enc, make_dec(p), x, keep, key,
                                 lpips_fn=lambda a, b: jnp.mean((a - b) ** 2, axis=(1, 2, 3)),
                                 logvar=jnp.float32(0.0), step=step, disc_start=3)

  @jax.jit
  def step_fn(p, x, keep, key, step):
    loss, grads, terms = losses.generator_loss_and_grads(
        lambda q: terms_fn(q, x, keep, key, step), p, last_layer_fn=lambda g: g["dec"]["conv_out"])
    return loss, grads

  for s in range(3):
    x, keep = _batch(s)
    jax.block_until_ready(step_fn(params, x, keep, jax.random.PRNGKey(s), s))
  assert len(traces) == 1 and step_fn._cache_size() == 1
