"""Convolutional building blocks shared by the UNet and the VAE (NHWC).

Every submodule is named after its diffusers counterpart (``conv1``, ``norm1``,
``time_emb_proj``, ``conv_shortcut``...) so that `seamless_jax.convert` maps
parameters with one generic table. Parameters are float32; ``dtype`` is the
compute dtype.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Remat = Any  # False/'' (off), True (= 'nothing_saveable') or a name in REMAT_POLICIES


# What a rematerialised block keeps from its forward pass (config.remat_policy); the rest is
# recomputed in the backward pass. 'dots_saveable' keeps every matmul and convolution output,
# 'dots_with_no_batch_dims_saveable' the projections and convolutions but not the attention
# score/probability matrices (batched matmuls), 'nothing_saveable' only the block inputs.
REMAT_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def remat_policy_name(remat: Remat) -> str | None:
  """``remat`` (bool or policy name) -> the policy name, ``None`` when off.

  Raises:
    ValueError: an unknown name (the message lists the valid ones).
  """
  if remat is True:
    return "nothing_saveable"
  if not remat:
    return None
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r} is not one of False, True, {sorted(REMAT_POLICIES)}")
  return remat


def maybe_remat(block_cls, remat: Remat):
  """``block_cls`` wrapped in ``nn.remat`` with the policy ``remat`` names (unchanged when off).

  Every ResNet block, transformer block and CLIP layer is one remat boundary; the param tree is
  the same either way.
  """
  name = remat_policy_name(remat)
  return block_cls if name is None else nn.remat(block_cls, policy=REMAT_POLICIES[name])


def conv3x3(features: int, dtype: Dtype, name: str, stride: int = 1) -> nn.Conv:
  """A 3x3 convolution with padding 1 (PyTorch ``Conv2d(k=3, p=1)``)."""
  return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                 dtype=dtype, param_dtype=jnp.float32, name=name)


def conv1x1(features: int, dtype: Dtype, name: str) -> nn.Conv:
  return nn.Conv(features, (1, 1), padding="VALID", dtype=dtype, param_dtype=jnp.float32,
                 name=name)


def group_norm(groups: int, eps: float, name: str) -> nn.GroupNorm:
  """GroupNorm computed in float32 (statistics of bf16 activations drift otherwise)."""
  return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name)


def dense(features: int, dtype: Dtype, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


def timestep_embedding(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool,
                       freq_shift: float, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of diffusion timesteps, as diffusers' ``Timesteps``.

  Args:
    timesteps: (B,) integer or float timesteps.
    dim: embedding width (even).
    flip_sin_to_cos: put the cosine half first (SD-1.5: True).
    freq_shift: ``downscale_freq_shift`` (SD-1.5: 0).

  Returns:
    (B, dim) float32.
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  angles = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  return jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)


class ResnetBlock2D(nn.Module):
  """GroupNorm-SiLU-Conv residual block with an optional timestep projection.

  ``__call__(x (B,H,W,Cin), temb (B,T) or None) -> (B,H,W,out_channels)``.
  """
  out_channels: int
  groups: int = 32
  eps: float = 1e-5
  use_temb: bool = True
  output_scale_factor: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    h = nn.silu(group_norm(self.groups, self.eps, "norm1")(x)).astype(self.dtype)
    h = conv3x3(self.out_channels, self.dtype, "conv1")(h)
    if self.use_temb:
      t = dense(self.out_channels, self.dtype, "time_emb_proj")(nn.silu(temb).astype(self.dtype))
      h = h + t[:, None, None, :]
    h = nn.silu(group_norm(self.groups, self.eps, "norm2")(h)).astype(self.dtype)
    h = conv3x3(self.out_channels, self.dtype, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = conv1x1(self.out_channels, self.dtype, "conv_shortcut")(x.astype(self.dtype))
    return ((x + h) / self.output_scale_factor).astype(self.dtype)


class Downsample2D(nn.Module):
  """Stride-2 3x3 convolution, named ``conv`` like diffusers.

  ``padding=1`` is the UNet's symmetric padding; ``padding=0`` is the VAE's
  asymmetric (right/bottom only) padding.
  """
  out_channels: int
  padding: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = ((1, 1), (1, 1)) if self.padding == 1 else ((0, 1), (0, 1))
    return nn.Conv(self.out_channels, (3, 3), strides=(2, 2), padding=pad, dtype=self.dtype,
                   param_dtype=jnp.float32, name="conv")(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour 2x upsampling followed by a 3x3 convolution named ``conv``."""
  out_channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv3x3(self.out_channels, self.dtype, "conv")(x)
