"""PatchGAN discriminator (taming-transformers ``NLayerDiscriminator``), NHWC Flax.

Architecture (n_layers=3, ndf=64): Conv4×4/s2(3→64)+LReLU(0.2); Conv4×4/s2(64→128, no bias)
+Norm+LReLU; Conv4×4/s2(128→256)+Norm+LReLU; Conv4×4/s1(256→512)+Norm+LReLU;
Conv4×4/s1(512→1). All convs pad 1. Output: patch logits (B, h', w', 1) (30×30 for 256²).
Submodule names ``main_{i}`` follow the torch ``nn.Sequential`` indices, so taming weights map
one-to-one.

Normalisation choice (``norm``):
  * 'batch' (default) — BatchNorm *with batch statistics* and learned scale/bias, i.e. exactly
    what taming/LDM compute (their discriminator is always in train mode during VAE training).
    Running averages are never used there, so none are kept: the module is a pure function of
    its params (no mutable ``batch_stats``), which keeps the jitted train step simple. Note the
    statistics are per call, so real and fake batches should be passed in separate calls, as
    LDM does.
  * 'group' — GroupNorm(32), batch-independent alternative.
  * 'none'.
Weights: taming's ``weights_init`` (N(0, 0.02) convs, N(1, 0.02) norm scales, zero bias).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_conv_init = nn.initializers.normal(0.02)


class BatchStatNorm(nn.Module):
  """Train-mode BatchNorm2d: normalise by the current batch's mean/var over (B, H, W)."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", lambda k, s: 1.0 + 0.02 * jax.random.normal(k, s), (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(0, 1, 2))
    var = jnp.var(x32, axis=(0, 1, 2))
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y.astype(x.dtype)


class NLayerDiscriminator(nn.Module):
  """``NLayerDiscriminator()(x) -> logits``; x (B, H, W, 3) in [−1, 1]."""
  ndf: int = 64
  n_layers: int = 3
  norm: str = "batch"
  dtype: jnp.dtype = jnp.float32

  def _norm(self, name):
    if self.norm == "batch":
      return BatchStatNorm(name=name)
    if self.norm == "group":
      return nn.GroupNorm(num_groups=32, name=name)
    if self.norm == "none":
      return lambda x: x
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {self.norm!r}")

  @nn.compact
  def __call__(self, x):
    conv = lambda ch, stride, bias, name: nn.Conv(
        ch, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=bias,
        kernel_init=_conv_init, dtype=self.dtype, name=name)
    h = nn.leaky_relu(conv(self.ndf, 2, True, "main_0")(x.astype(self.dtype)), 0.2)
    idx = 2
    for n in range(1, self.n_layers + 1):
      stride = 2 if n < self.n_layers else 1
      ch = self.ndf * min(2**n, 8)
      h = conv(ch, stride, self.norm == "none", f"main_{idx}")(h)
      h = nn.leaky_relu(self._norm(f"main_{idx + 1}")(h), 0.2)
      idx += 3
    return conv(1, 1, True, f"main_{idx}")(h).astype(jnp.float32)
