"""Training losses: standard v-prediction, the two-step loss (paper Alg. 1), and the
blend-aware VAE loss (paper Eq. 6 with LDM's kl-f8 recipe).

Injected model functions
------------------------
* ``v_fn(z, t) -> v``: z (B, h, w, 4) float, t (B,) int32, returns (B, h, w, 4) (any float
  dtype; the losses compute in float32). The training step closes over params/text context.
* VAE: ``encode_fn(x) -> (mean, logvar)`` of the *unscaled* posterior, NHWC (B, h, w, 4);
  ``decode_fn(z) -> x`` takes unscaled latents. Blending is linear, so scaling by 0.18215
  commutes with it and is irrelevant here.

Timestep sampling and the ε2* guard (two-step loss)
---------------------------------------------------
With ``t' = t − stride`` the second-step noise target is
``ε2* = (ẑ_t' − √ā_t' z0)/√(1−ā_t') = ε2 + (√ā_t'/σ_t')·(ẑ0 − z0)``, σ_t' = √(1−ā_t').
* In the hole ``ẑ0 − z0 = √(1−ā_t)(v1 − vθ)``: the first-step error times
  ``√ā_t'·σ_t/σ_t'`` — at most ≈4.5 for SD-1.5 and stride 20 (at t' = 0).
* In the kept cells ``ẑ0 − z0 = z0_known − z0`` (E(x·keep) vs E(x), non-zero near the mask
  border): this term is independent of the model and grows like ``√ā_t'/σ_t'`` — the
  blow-up. For SD-1.5 that factor is 34 at t' = 0, 7.6 at t' = 20, 4.6 at t' = 50, ≤ 1 for
  t' ≥ ~470. It is finite for every t' ≥ 0 because SD's smallest σ is 0.029.
Guard (what is done):
  1. :func:`sample_timesteps` draws ``t ~ U{stride + min_t, …, T−1}`` so ``t' ≥ min_t ≥ 0``
     (for both ``second_t`` options: both re-noise at t');
     inside the loss ``t'`` is also clamped to ``max(t', min_t or 0)``, so no input indexes a
     negative timestep. Default ``min_t=0`` (every DDIM-reachable t' is trained, amplification
     ≤ 34); raise ``min_t`` in the config to cap it at √ā_min_t/σ_min_t.
  2. Everything inside the loss is float32 whatever ``v_fn``'s dtype: in bfloat16
     ``1 − ā_0`` (ā_0 = 0.99915) rounds to 0 and the literal formula divides by zero. ε2* is
     computed in the cancellation-free form ``ε2 + √ā_t'(ẑ0 − z0)/σ_t'`` (algebraically
     identical to Alg. 1), so the target is finite for bfloat16 models and inputs
     (tests/test_losses.py checks every allowed t).
  3. ``σ_t'`` is floored at ``MIN_SIGMA`` (1e-2; inactive for SD-1.5) for schedules with ā_0
     closer to 1.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from seamless_jax.diffusion import schedule as sched
from seamless_jax.diffusion.blending import blend, latent_keep

MIN_SIGMA = 1e-2
SECOND_T = ("prev", "same")  # the timestep input of the second call (two_step_loss)
Array = jnp.ndarray


def _f32(x):
  return jnp.asarray(x).astype(jnp.float32)


def _per_sample_mse(pred, target):
  """Mean squared error over all non-batch axes → (B,) float32."""
  d = _f32(pred) - _f32(target)
  return jnp.mean(d * d, axis=tuple(range(1, d.ndim)))


def _bc(coef):
  return coef[:, None, None, None]


def sample_timesteps(key, batch: int, *, stride: int = 20, min_t: int = 0,
                     num_train_timesteps: int = 1000):
  """Uniform int32 timesteps ``t ∈ {stride + min_t, …, T − 1}``, shape (batch,).

  For the two-step loss (either ``second_t``) this keeps ``t' = t − stride ≥ min_t``; use
  ``stride=0`` for the standard loss.
  """
  lo = stride + min_t
  if lo >= num_train_timesteps:
    raise ValueError(f"stride + min_t = {lo} leaves no timestep below {num_train_timesteps}")
  return jax.random.randint(key, (batch,), lo, num_train_timesteps, dtype=jnp.int32)


def standard_loss(v_fn: Callable, z0, t, noise, alphas_cumprod):
  """Plain v-prediction MSE (the baseline fine-tune).

  Args: z0, noise (B, h, w, 4); t (B,) int32; alphas_cumprod (T,).
  Returns: ``(loss, aux)``, loss = mean_b mean_hwc (v − vθ(z_t, t))², aux has
  ``loss_per_sample`` (B,).
  """
  z0, noise = _f32(z0), _f32(noise)
  t = jnp.asarray(t, jnp.int32)
  z_t = sched.add_noise(z0, noise, t, alphas_cumprod)
  target = sched.v_target(z0, noise, t, alphas_cumprod)
  per = _per_sample_mse(v_fn(z_t, t), target)
  return jnp.mean(per), {"loss": jnp.mean(per), "loss_per_sample": per}


def two_step_loss(v_fn: Callable, z0, z0_known, keep, t, noise1, noise2, alphas_cumprod, *,
                  stride: int = 20, weight: float = 0.5, stop_grad: bool = True,
                  second_t: str = "prev", min_t: int | None = None,
                  scan_calls: bool = True):
  """Two-step training loss of Alg. 1 (v-prediction).

  Args:
    v_fn: ``v_fn(z, t) -> v`` (see module doc); called twice.
    z0: clean latent E(x) (B, h, w, 4), scaled.
    z0_known: latent of the masked image E(x·keep) (B, h, w, 4), scaled.
    keep: latent-size keep mask (B, h, w, 1), 1 = known (use :func:`latent_keep`).
    t: (B,) int32 first timestep; see :func:`sample_timesteps`.
    noise1, noise2: ε1, ε2 ~ N(0, I), shape of z0.
    stride: gap to the second timestep (20 = DDIM-50 spacing).
    weight: λ in ``L1 + λ·L2``.
    stop_grad: stop gradients through ẑ0 into the second step (False = unrolled variant, the
      gradient then also flows into the second input and the target v2).
    second_t: the timestep the model is GIVEN in the second call. ẑ0 is always re-noised at
      ``t' = t − stride`` (ā_t', Alg. 1 lines 7–9). 'prev' → ``vθ(ẑ_t', t')`` (consistent with
      DDIM inference, where the model sees the timestep of its input's noise level); 'same' →
      ``vθ(ẑ_t', t)``, Alg. 1 line 10 as printed (noise level t', timestep input t).
    min_t: lowest allowed t' (t' is clamped to ``max(t', min_t or 0)``).
    scan_calls: make the two model calls the two iterations of one ``lax.scan`` (the second's
      input is computed from the first's output in the loop body), so the compiled program
      holds one copy of the model's forward and backward pass instead of two: half the code to
      compile (an SD-1.5 step for a TPU compiles in about half the time and host memory), the
      same values (``tests/test_losses.py``). ``False``: two plain calls.
  Returns:
    ``(loss, aux)`` with aux keys ``loss1``, ``loss2`` (scalars), ``loss1_per_sample``,
    ``loss2_per_sample`` (B,), ``t_prev`` (B,) the re-noising timestep t', ``t_model2`` (B,)
    the timestep fed to the second model call, ``z0_hat`` (the blended ẑ0, (B, h, w, 4)).
  """
  if second_t not in SECOND_T:
    raise ValueError(f"second_t must be 'prev' or 'same', got {second_t!r}")
  ac = _f32(alphas_cumprod)
  z0, z0_known, keep = _f32(z0), _f32(z0_known), _f32(keep)
  eps1, eps2 = _f32(noise1), _f32(noise2)
  t = jnp.asarray(t, jnp.int32)
  t_prev = jnp.maximum(t - stride, 0 if min_t is None else min_t)  # noise level of step 2
  t_model2 = t_prev if second_t == "prev" else t  # timestep input of the second model call

  sa1, so1 = (_bc(c) for c in sched.alpha_sigma(t, ac))
  sa2, so2 = (_bc(c) for c in sched.alpha_sigma(t_prev, ac))
  so2 = jnp.maximum(so2, MIN_SIGMA)

  def second_input(z_t, v_pred1):
    """Predicted clean latent, blended with the known latent (Alg. 1 line 6), re-noised to t'."""
    z0_hat = blend(sa1 * z_t - so1 * v_pred1, z0_known, keep)
    if stop_grad:
      z0_hat = jax.lax.stop_gradient(z0_hat)
    return z0_hat, sa2 * z0_hat + so2 * eps2

  # Step 1: standard v-prediction loss; step 2: the model at ẑ_t'.
  z_t = sa1 * z0 + so1 * eps1
  if scan_calls:
    def call(z_in, t_in):  # iteration 1: (z_t, t) -> ẑ_t'; iteration 2: (ẑ_t', t'') -> unused
      v_pred = _f32(v_fn(z_in, t_in))
      return second_input(z_in, v_pred)[1], v_pred
    _, v_preds = jax.lax.scan(call, z_t, jnp.stack([t, t_model2]))
    v_pred1, v_pred2 = v_preds[0], v_preds[1]
    z0_hat = second_input(z_t, v_pred1)[0]
  else:
    v_pred1 = _f32(v_fn(z_t, t))
    z0_hat, z_tp = second_input(z_t, v_pred1)
    v_pred2 = _f32(v_fn(z_tp, t_model2))
  v1 = sa1 * eps1 - so1 * z0
  loss1_ps = _per_sample_mse(v_pred1, v1)

  # Step 2: regress the velocity that points from ẑ_t' back to z0.
  eps2_star = eps2 + sa2 * (z0_hat - z0) / so2  # == (z_tp − √ā' z0)/σ', no cancellation
  v2 = sa2 * eps2_star - so2 * z0
  loss2_ps = _per_sample_mse(v_pred2, v2)

  loss1, loss2 = jnp.mean(loss1_ps), jnp.mean(loss2_ps)
  aux = {"loss1": loss1, "loss2": loss2, "loss1_per_sample": loss1_ps,
         "loss2_per_sample": loss2_ps, "t_prev": t_prev, "t_model2": t_model2,
         "z0_hat": z0_hat}
  return loss1 + weight * loss2, aux


# ============================================================================ VAE (Eq. 6)

def kl_diag_gaussian(mean, logvar):
  """KL(N(mean, exp(logvar)) ‖ N(0, I)) summed over non-batch axes → (B,) (LDM's ``kl()``)."""
  mean, logvar = _f32(mean), _f32(logvar)
  kl = 0.5 * (mean * mean + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(kl, axis=tuple(range(1, kl.ndim)))


def _posterior(encode_fn, x, key, sample_posterior):
  mean, logvar = encode_fn(x)
  logvar = jnp.clip(_f32(logvar), -30.0, 20.0)  # as LDM's DiagonalGaussianDistribution
  mean = _f32(mean)
  if not sample_posterior:
    return mean, mean, logvar
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, jnp.float32)
  return z, mean, logvar


def blend_reconstruct(encode_fn, decode_fn, x, keep, key=None, sample_posterior: bool = True,
                      *, keep_method: str = "nearest", return_aux: bool = False):
  """Eq. 6: ``x̂ = D(E(x)·(1 − keep↓) + E(x·keep)·keep↓)``.

  Args:
    x: image (B, H, W, 3) in [−1, 1]; keep: (B, H, W, 1), 1 = known pixel.
    key: PRNG key for posterior sampling (unused when ``sample_posterior=False``: means).
    keep_method: :func:`latent_keep` method for keep↓.
  Returns:
    x̂ (B, H, W, 3); with ``return_aux`` also a dict with both posteriors
    (``mean_full``, ``logvar_full``, ``mean_masked``, ``logvar_masked``) and ``keep_latent``.
  """
  if sample_posterior and key is None:
    raise ValueError("sample_posterior=True needs a PRNG key")
  k_full, k_masked = jax.random.split(key) if sample_posterior else (None, None)
  keep = _f32(keep)
  z_full, m_full, lv_full = _posterior(encode_fn, x, k_full, sample_posterior)
  z_masked, m_masked, lv_masked = _posterior(encode_fn, x * keep.astype(x.dtype), k_masked,
                                             sample_posterior)
  keep_lat = latent_keep(keep, z_full.shape[1:3], keep_method)
  x_hat = decode_fn(blend(z_full, z_masked, keep_lat))
  if not return_aux:
    return x_hat
  return x_hat, {"mean_full": m_full, "logvar_full": lv_full, "mean_masked": m_masked,
                 "logvar_masked": lv_masked, "keep_latent": keep_lat}


def adopt_weight(weight, step, threshold):
  """LDM's ``adopt_weight``: ``weight`` once ``step >= threshold``, else 0 (jit-safe)."""
  return jnp.where(jnp.asarray(step) >= threshold, jnp.asarray(weight, jnp.float32), 0.0)


def gan_active(step, disc_start: int, disc_factor: float):
  """Bool scalar: the GAN terms count at this step (``step >= disc_start`` and a non-zero
  ``disc_factor``); the predicate of the ``lax.cond`` that skips the discriminator work."""
  if float(disc_factor) == 0.0:
    return jnp.asarray(False)
  return jnp.asarray(step) >= disc_start


def reconstruction_nll(x, x_hat, *, lpips_fn, logvar, lpips_weight: float = 1.0) -> dict:
  """LDM's reconstruction NLL with a learned scalar log-variance.

  ``rec = |x − x̂| + lpips_weight·LPIPS(x, x̂)`` (LPIPS (B,) broadcast over pixels),
  ``nll = Σ(rec/exp(logvar) + logvar)/B``. x, x̂ (B, H, W, 3) in [−1, 1].
  Returns scalars ``nll_loss``, ``rec_loss`` (mean rec), ``l1_loss``, ``lpips_loss``.
  """
  x32, xh32 = _f32(x), _f32(x_hat)
  batch = x.shape[0]
  l1 = jnp.abs(x32 - xh32)
  p = _f32(lpips_fn(x, x_hat)).reshape(batch, 1, 1, 1)
  rec = l1 + lpips_weight * p
  logvar = _f32(logvar)
  nll = jnp.sum(rec / jnp.exp(logvar) + logvar) / batch
  return {"nll_loss": nll, "rec_loss": jnp.mean(rec), "l1_loss": jnp.mean(l1),
          "lpips_loss": jnp.mean(p)}


def posterior_kl(post: dict):
  """Mean of the two posteriors' KL (E(x) and E(x·keep), each summed over latent dims and
  averaged over the batch); ``post`` is :func:`blend_reconstruct`'s aux dict."""
  return 0.5 * (jnp.mean(kl_diag_gaussian(post["mean_full"], post["logvar_full"]))
                + jnp.mean(kl_diag_gaussian(post["mean_masked"], post["logvar_masked"])))


def adversarial_g_loss(disc_fn, x_hat):
  """Generator's GAN term ``g = −mean D(x̂)``; ``disc_fn(x) -> logits`` (B, h', w', 1)."""
  return -jnp.mean(_f32(disc_fn(x_hat)))


def vae_blend_loss(encode_fn, decode_fn, x, keep, key, *, lpips_fn, logvar,
                   disc_fn=None, step=0, sample_posterior: bool = True,
                   lpips_weight: float = 1.0, kl_weight: float = 1e-6,
                   disc_factor: float = 1.0, disc_start: int = 0,
                   keep_method: str = "nearest"):
  """Generator-side loss terms of the blend-aware VAE (Eq. 6 + LDM's LPIPSWithDiscriminator),
  all computed in one plain forward pass (the reference form; training uses
  :func:`generator_loss_and_grads`).

  ``nll`` from :func:`reconstruction_nll`, ``kl`` from :func:`posterior_kl`, ``g = −mean D(x̂)``
  (0 without ``disc_fn``). Combine them with :func:`vae_total_loss` and
  :func:`adaptive_disc_weight` (LDM's ``‖∇_last nll‖/(‖∇_last g‖+1e-4)``, gradients w.r.t. the
  decoder's last layer, which only the caller can take).

  Args:
    lpips_fn: ``lpips_fn(x, y) -> (B,)`` perceptual distance, inputs in [−1, 1].
    logvar: learned scalar log-variance (a trainable param).
    disc_fn: ``disc_fn(x) -> logits`` (B, h', w', 1) or None.
    step: global step (may be traced); ``disc_factor`` is 0 before ``disc_start``.
  Returns:
    dict with scalars ``nll_loss``, ``rec_loss`` (mean rec, for logging), ``l1_loss``,
    ``lpips_loss``, ``kl_loss``, ``g_loss``, ``disc_factor`` and the image ``x_hat``.
  """
  del kl_weight  # applied by vae_total_loss
  x_hat, post = blend_reconstruct(encode_fn, decode_fn, x, keep, key, sample_posterior,
                                  keep_method=keep_method, return_aux=True)
  terms = reconstruction_nll(x, x_hat, lpips_fn=lpips_fn, logvar=logvar,
                             lpips_weight=lpips_weight)
  g_loss = (jnp.zeros((), jnp.float32) if disc_fn is None
            else adversarial_g_loss(disc_fn, x_hat))
  return dict(terms, kl_loss=posterior_kl(post), g_loss=g_loss,
              disc_factor=adopt_weight(disc_factor, step, disc_start), x_hat=x_hat)


def _global_norm(tree):
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(_f32(l) ** 2) for l in leaves))


def adaptive_disc_weight(nll_grad, g_grad, disc_weight: float = 0.5, *,
                         eps: float = 1e-4, max_weight: float = 1e4):
  """``clip(‖∇nll‖/(‖∇g‖ + eps), 0, max_weight)·disc_weight``, gradient-stopped.

  ``nll_grad``/``g_grad``: gradients w.r.t. the decoder's last layer (array or pytree, its
  global L2 norm is used) or precomputed norms (scalars).
  """
  w = _global_norm(nll_grad) / (_global_norm(g_grad) + eps)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight) * disc_weight)


def vae_total_loss(terms, d_weight, *, kl_weight: float = 1e-6):
  """``nll + kl_weight·kl + d_weight·disc_factor·g`` from :func:`vae_blend_loss` terms."""
  return (terms["nll_loss"] + kl_weight * terms["kl_loss"]
          + d_weight * terms["disc_factor"] * terms["g_loss"])


def generator_loss_and_grads(features_fn: Callable, rec_fn: Callable, adv_fn: Callable,
                             params, last, *, gan_on, kl_weight: float = 1e-6,
                             disc_weight: float = 0.5, disc_factor: float = 1.0):
  """Generator loss ``nll + kl_weight·kl + d·disc_factor·g`` and its gradient, with LDM's
  adaptive weight ``d`` from the last decoder layer's gradients, in ONE backward pass.

  The decoder is split at its last layer ``x̂ = last_layer(h)``: the two loss heads (NLL and
  GAN) are differentiated w.r.t. ``last`` and ``h`` only (cheap: the heads' own backward
  passes), which gives ``∇_last nll`` and ``∇_last g`` for the adaptive weight; the cotangent
  ``∂L/∂h = ∂nll/∂h + d·disc_factor·∂g/∂h`` then goes through the encoder/decoder body once.
  ``lax.cond(gan_on, ...)``: while the GAN is off, the discriminator forward/backward and the
  adaptive weight are not computed at all (``d = g = 0``).

  Args:
    features_fn: ``params -> (h, kl)``: the input ``h`` of the decoder's last layer (the whole
      Eq. 6 encode/blend/decode except that layer) and the posterior KL scalar.
    rec_fn: ``(last, h, params) -> (nll, aux)``: ``x̂ = last_layer(h)`` and its reconstruction
      NLL (:func:`reconstruction_nll`); ``aux`` is a dict that must hold ``x_hat``.
    adv_fn: ``(last, h, params) -> g``: the GAN term ``−mean D(last_layer(h))``.
    params: the generator params (the last layer's bias, the log-variance, ...); ``last`` is
      given separately, whatever slot it has in ``params`` gets a zero gradient here.
    last: the weights whose gradient norms define the adaptive weight (LDM:
      ``decoder.conv_out.weight``, the last layer's kernel).
    gan_on: bool scalar (may be traced), e.g. :func:`gan_active`.
  Returns:
    ``(loss, (grads_params, grads_last), terms)``; ``terms`` = ``aux`` of ``rec_fn`` plus
    ``kl_loss``, ``g_loss``, ``d_weight``, ``disc_factor`` (0 while the GAN is off), ``loss``.
  """
  (h, kl), body_vjp = jax.vjp(features_fn, params)
  nll, rec_vjp, aux = jax.vjp(rec_fn, last, h, params, has_aux=True)
  d_last_nll, d_h_nll, d_params_nll = rec_vjp(jnp.ones_like(nll))
  zero = jnp.zeros((), jnp.float32)

  def with_gan(_):
    g, adv_vjp = jax.vjp(adv_fn, last, h, params)
    d_last_g, d_h_g, d_params_g = adv_vjp(jnp.ones_like(g))
    d_weight = adaptive_disc_weight(d_last_nll, d_last_g, disc_weight)
    scale = (d_weight * disc_factor).astype(jnp.float32)
    add = lambda a, b: a + (scale * b).astype(a.dtype)
    return (_f32(g), d_weight, jnp.float32(disc_factor), jax.tree.map(add, d_last_nll, d_last_g),
            add(d_h_nll, d_h_g), jax.tree.map(add, d_params_nll, d_params_g))

  def without_gan(_):
    return zero, zero, zero, d_last_nll, d_h_nll, d_params_nll

  g, d_weight, factor, d_last, d_h, d_params_heads = jax.lax.cond(
      gan_on, with_gan, without_gan, None)
  (d_params_body,) = body_vjp((d_h, jnp.full_like(kl, kl_weight)))
  grads = jax.tree.map(jnp.add, d_params_body, d_params_heads)
  loss = nll + kl_weight * kl + d_weight * factor * g
  terms = dict(aux, kl_loss=kl, g_loss=g, d_weight=d_weight, disc_factor=factor, loss=loss)
  return loss, (grads, d_last), terms


def hinge_d_loss(logits_real, logits_fake):
  """``½(mean relu(1 − D(x)) + mean relu(1 + D(x̂)))``."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - _f32(logits_real)))
                + jnp.mean(jax.nn.relu(1.0 + _f32(logits_fake))))


def discriminator_loss(disc_fn, x, x_hat, *, step=0, disc_factor: float = 1.0,
                       disc_start: int = 0):
  """Discriminator update loss ``disc_factor·hinge(D(x), D(sg(x̂)))`` → (loss, aux)."""
  logits_real = disc_fn(jax.lax.stop_gradient(x))
  logits_fake = disc_fn(jax.lax.stop_gradient(x_hat))
  factor = adopt_weight(disc_factor, step, disc_start)
  loss = factor * hinge_d_loss(logits_real, logits_fake)
  return loss, {"d_loss": loss, "logits_real": jnp.mean(_f32(logits_real)),
                "logits_fake": jnp.mean(_f32(logits_fake))}
