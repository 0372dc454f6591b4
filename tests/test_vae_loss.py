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


def _toy_split(x, keep, disc_fn, lpips_weight=0.7):
  """The toy VAE with a trainable encoder, split at its last layer (``dec.conv_out``) for
  ``generator_loss_and_grads``, plus the plain full-forward terms for reference."""
  k = jax.random.split(jax.random.PRNGKey(7), 3)
  params = {"enc": jax.random.normal(k[0], (3, 8)) * 0.5,
            "dec": {"kernel": jax.random.normal(k[1], (4, 3)) * 0.5,
                    "conv_out": jax.random.normal(k[2], (3, 3)) * 0.5},
            "logvar": jnp.float32(0.2)}
  lp = lambda a, b: jnp.mean((a - b) ** 2, axis=(1, 2, 3))

  def encode(p):
    def encode_fn(img):
      out = img.reshape(img.shape[0], H // 8, 8, W // 8, 8, 3).mean(axis=(2, 4)) @ p["enc"]
      return out[..., :4], out[..., 4:] - 2.0
    return encode_fn

  features = lambda p: lambda z: jnp.tanh(jnp.repeat(jnp.repeat(z, 8, 1), 8, 2)
                                          @ p["dec"]["kernel"])

  def features_fn(p):
    h, post = losses.blend_reconstruct(encode(p), features(p), x, keep, None, False,
                                       return_aux=True)
    return h, losses.posterior_kl(post)

  def rec_fn(last, h, p):
    terms = losses.reconstruction_nll(x, h @ last, lpips_fn=lp, logvar=p["logvar"],
                                      lpips_weight=lpips_weight)
    return terms["nll_loss"], dict(terms, x_hat=h @ last)

  adv_fn = lambda last, h, p: losses.adversarial_g_loss(disc_fn, h @ last)

  def full_terms(p):  # the whole forward in one piece (vae_blend_loss), for reference
    decode = lambda z: features(p)(z) @ p["dec"]["conv_out"]
    return losses.vae_blend_loss(encode(p), decode, x, keep, None, sample_posterior=False,
                                 lpips_fn=lp, logvar=p["logvar"], disc_fn=disc_fn,
                                 lpips_weight=lpips_weight)
  return params, (features_fn, rec_fn, adv_fn), full_terms


def _split_grads(fns, params, gan_on, **kw):
  loss, (grads, last_grad), terms = losses.generator_loss_and_grads(
      *fns, params, params["dec"]["conv_out"], gan_on=gan_on, **kw)
  unused_slot = grads["dec"]["conv_out"]  # the last layer is given separately: zero there
  grads = {**grads, "dec": {**grads["dec"], "conv_out": last_grad}}
  return loss, grads, dict(terms, unused_slot=unused_slot)


def test_adaptive_weight_from_last_layer_matches_numpy_and_full_gradient():
  x, keep = _batch(2)
  disc = lambda img: jnp.sum(img, axis=-1, keepdims=True) * 0.3
  params, fns, full_terms = _toy_split(x, keep, disc)
  kw = dict(kl_weight=0.1, disc_weight=0.5, disc_factor=0.8)
  loss, grads, terms = _split_grads(fns, params, jnp.asarray(True), **kw)
  assert float(np.max(np.abs(terms["unused_slot"]))) == 0.0

  # NumPy: x̂ = F·K with F the last layer's input; ∇_K = Σ_bhw Fᵀ ∂/∂x̂.
  F = np.asarray(fns[0](params)[0], np.float64)
  K = np.asarray(params["dec"]["conv_out"], np.float64)
  xn = np.asarray(x, np.float64)
  xh = F @ K
  d_nll = (np.sign(xh - xn) + 0.7 * 2 * (xh - xn)) / np.exp(0.2) / Bsz  # L1 + 0.7·MSE-LPIPS
  d_g = np.full_like(xh, -0.3 / (Bsz * H * W))  # g = −mean(0.3·Σ_c x̂)
  grad_k = lambda d: np.einsum("bhwi,bhwj->ij", F, d)
  d_ref = np.clip(np.linalg.norm(grad_k(d_nll)) / (np.linalg.norm(grad_k(d_g)) + 1e-4),
                  0, 1e4) * 0.5
  assert 0 < d_ref < 1e4  # the clip is not what makes this pass
  np.testing.assert_allclose(terms["d_weight"], d_ref, rtol=1e-5)
  np.testing.assert_allclose(terms["x_hat"], xh, rtol=1e-5, atol=1e-6)

  # Loss and every gradient (encoder via KL and reconstruction, decoder, last layer, logvar)
  # equal plain jax.grad of the whole forward with d fixed at d_ref.
  total = lambda p: (full_terms(p)["nll_loss"] + 0.1 * full_terms(p)["kl_loss"]
                     + d_ref * 0.8 * full_terms(p)["g_loss"])
  ref_grads = jax.grad(total)(params)
  np.testing.assert_allclose(loss, total(params), rtol=1e-5)
  np.testing.assert_allclose(terms["g_loss"], full_terms(params)["g_loss"], rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree_util.tree_leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7, err_msg=str(path))
  assert float(np.max(np.abs(grads["enc"]))) > 0  # the KL/encoder path is exercised

  # GAN off: the gradient of nll + kl only; no g, no weight.
  loss0, grads0, t0 = _split_grads(fns, params, jnp.asarray(False), **kw)
  rest = lambda p: full_terms(p)["nll_loss"] + 0.1 * full_terms(p)["kl_loss"]
  np.testing.assert_allclose(loss0, rest(params), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(grads0),
                  jax.tree_util.tree_leaves(jax.grad(rest)(params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  assert float(t0["d_weight"]) == float(t0["g_loss"]) == float(t0["disc_factor"]) == 0.0


def test_discriminator_runs_only_when_the_gan_is_on():
  """``lax.cond``: before disc_start the discriminator is not evaluated at all (not computed
  and multiplied by 0): a host callback inside it fires only for the GAN-on step."""
  calls = []

  def disc(img):
    jax.debug.callback(lambda: calls.append(1))
    return jnp.sum(img, axis=-1, keepdims=True) * 0.3

  x, keep = _batch(3)
  params, fns, _ = _toy_split(x, keep, disc)

  @jax.jit
  def run(p, step):
    gan_on = losses.gan_active(step, 5, 1.0)
    return _split_grads(fns, p, gan_on)[2]["d_weight"]

  assert float(jax.block_until_ready(run(params, 4))) == 0.0
  jax.effects_barrier()
  assert calls == []
  assert float(jax.block_until_ready(run(params, 5))) > 0.0
  jax.effects_barrier()
  assert len(calls) >= 1
  assert not bool(losses.gan_active(10, 5, 0.0))  # disc_factor = 0: never on


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
  traces = []
  x0, keep0 = _batch(0)

  @jax.jit
  def step_fn(p, x, keep, step):
    traces.append(1)
    _, fns, _ = _toy_split(x, keep, lambda img: img[..., :1])
    return _split_grads(fns, p, losses.gan_active(step, 3, 1.0))[:2]

  params = _toy_split(x0, keep0, None)[0]
  for s in range(5):
    x, keep = _batch(s)
    jax.block_until_ready(step_fn(params, x, keep, s))
  assert len(traces) == 1 and step_fn._cache_size() == 1


# ------------------------------------------------------------------ the vae_finetune train step

@pytest.fixture(scope="module")
def vae_trainers(tmp_path_factory):
  """Two tiny vae_finetune trainers that differ only in the GAN switch: ``vae.disc_start=2``
  and ``vae.disc_factor=0`` (GAN never on); both with ``ema_decay=0.9``."""
  import tiny  # pylint: disable=import-outside-toplevel
  from seamless_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from seamless_jax.train import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
  data = tiny.write_tiny_data(str(tmp_path_factory.mktemp("tiny_data")))
  later = trainer_lib.setup(tiny.tiny_config("vae_finetune", data, vae__disc_start=2, ema_decay=0.9))
  never = trainer_lib.setup(tiny.tiny_config("vae_finetune", data, vae__disc_start=0,
                                      vae__disc_factor=0.0, ema_decay=0.9))
  it = iter(pipeline.make_dataset(later.config.data, batch_size=later.config.batch_size, seed=0))
  batches = [{k: np.asarray(v) for k, v in next(it).items() if k != "num_skipped"}
             for _ in range(3)]
  return later, never, batches


def _run(trainer, batches, nan_steps=()):
  """Steps a copy of the initial state (the step donates it) -> [(state, metrics)] per step;
  the steps in ``nan_steps`` run with a NaN in the frozen encoder (a non-finite loss)."""
  import tiny  # pylint: disable=import-outside-toplevel
  from seamless_jax.runtime import sharding as shd  # pylint: disable=import-outside-toplevel
  state, out = tiny.copy_tree(trainer.state), []
  for i, batch in enumerate(batches):
    frozen = tiny.nan_frozen(trainer.frozen) if i in nan_steps else trainer.frozen
    state, metrics = trainer.step_fn(state, frozen, shd.shard_batch(batch, trainer.mesh))
    out.append((jax.tree.map(np.asarray, state), {k: float(v) for k, v in metrics.items()}))
  return out


@pytest.mark.slow
def test_vae_step_before_disc_start_equals_disc_factor_zero(vae_trainers):
  later, never, batches = vae_trainers
  run_later, run_never = _run(later, batches), _run(never, batches)
  for (s_a, m_a), (s_b, m_b) in zip(run_later[:2], run_never[:2]):  # steps 0, 1 < disc_start
    for k in ("g_loss", "d_weight", "d_loss"):
      assert m_a[k] == m_b[k] == 0.0, k
    np.testing.assert_allclose(m_a["loss"], m_b["loss"], rtol=1e-6)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(s_a),
                            jax.tree_util.tree_leaves(s_b)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8, err_msg=str(path))
  # Step 2 = disc_start: the GAN switches on (weight, g, discriminator update).
  (s_a, m_a), (s_b, _) = run_later[2], run_never[2]
  assert m_a["d_weight"] > 0 and m_a["g_loss"] != 0 and m_a["d_loss"] > 0
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(s_a.params),
                                                       jax.tree_util.tree_leaves(s_b.params)))
  unchanged = jax.tree_util.tree_leaves(never.state.params["disc"])
  assert all(np.array_equal(a, b) for a, b in zip(unchanged,
                                                  jax.tree_util.tree_leaves(s_b.params["disc"])))


@pytest.mark.slow
def test_vae_step_ema_matches_numpy_with_a_skipped_step(vae_trainers):
  """EMA of the step against NumPy: d_n = min(0.9, (1+n)/(10+n)) for the n-th APPLIED update;
  a skipped (NaN) step leaves the EMA alone and does not advance n."""
  _, never, batches = vae_trainers
  run = _run(never, [batches[0], batches[0], batches[1], batches[2]], nan_steps=(1,))
  assert [m["skipped"] for _, m in run] == [0, 1, 0, 0]
  ema = [np.asarray(e, np.float64) for e in jax.tree_util.tree_leaves(never.state.ema_params)]
  applied = [s for s, m in run if m["skipped"] == 0]
  for n, s in enumerate(applied, start=1):
    d = min(0.9, (1 + n) / (10 + n))
    ema = [d * e + (1 - d) * p for e, p in zip(ema, jax.tree_util.tree_leaves(s.params))]
  for e, got in zip(ema, jax.tree_util.tree_leaves(run[-1][0].ema_params)):
    np.testing.assert_allclose(got, e, rtol=1e-5, atol=1e-7)


def _flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@pytest.mark.slow
def test_vae_step_backpropagates_through_the_vae_once(vae_trainers):
  """The adaptive weight comes from the last layer's gradients: the generator+discriminator
  gradient costs about ONE backward pass (≤ 1.1× plain ``jax.grad`` of the total loss with the
  weight fixed, plus the discriminator update), not two full VJPs (≥ 1.26× here)."""
  from seamless_jax.objectives import vae_finetune  # pylint: disable=import-outside-toplevel
  later, _, batches = vae_trainers
  config, vae = later.config, later.models.vae
  disc = vae_finetune.make_discriminator(config)
  lpips_fn = lambda a, b: jnp.zeros((a.shape[0],))
  batch = {k: jnp.asarray(v) for k, v in batches[0].items()}
  key, step = jax.random.PRNGKey(0), jnp.int32(5)
  ours = vae_finetune.VaeFinetune().make_grads(config, later.models, None,
                                               lambda frozen: lpips_fn)

  def one_backward(params, frozen, batch):
    x, keep = batch["image"], batch["keep"]

    def total(gp):
      full = {**frozen["vae"], **gp["vae"]}
      t = losses.vae_blend_loss(
          lambda img: vae.apply({"params": full}, img, method=vae.encode),
          lambda z: vae.apply({"params": full}, z, method=vae.decode), x, keep, key,
          lpips_fn=lpips_fn, logvar=gp["logvar"],
          disc_fn=lambda img: disc.apply({"params": params["disc"]}, img))
      return t["nll_loss"] + 1e-6 * t["kl_loss"] + 0.3 * t["g_loss"], t["x_hat"]

    gp = {"vae": params["vae"], "logvar": params["logvar"]}
    grads, x_hat = jax.grad(total, has_aux=True)(gp)
    d_loss = lambda dp: losses.discriminator_loss(
        lambda img: disc.apply({"params": dp}, img), x, jax.lax.stop_gradient(x_hat))[0]
    return grads, jax.grad(d_loss)(params["disc"])

  params, frozen = later.state.params, later.frozen
  ours_flops = _flops(ours, params, frozen, batch, {}, key, step)
  ref_flops = _flops(one_backward, params, frozen, batch)
  assert ours_flops <= 1.1 * ref_flops, (ours_flops, ref_flops)
