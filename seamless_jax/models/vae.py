"""Stable Diffusion KL autoencoder (diffusers ``AutoencoderKL``) in Flax linen, NHWC.

Fields mirror the keys of a diffusers ``vae/config.json``; `from_config` builds
the module from such a dict (unsupported non-default keys are an error naming
the key). The param tree has the top-level entries ``encoder``, ``quant_conv``,
``post_quant_conv`` and ``decoder`` exactly as the diffusers state dict, so a
trainer can select e.g. only ``decoder`` + ``post_quant_conv``.

Latents here are UNSCALED (the raw posterior of the autoencoder);
``scaling_factor`` is carried in the config for the caller to apply
(``z_scaled = z * scaling_factor``), the module never applies it.

Use::

  mean, logvar = vae.apply({'params': p}, x, method=vae.encode)  # x (B,H,W,3) in [-1,1]
  image = vae.apply({'params': p}, z, method=vae.decode)         # z (B,H/8,W/8,4)

With 4 levels the spatial factor is 8 (``2 ** (len(block_out_channels) - 1)``).
Outputs are in the compute ``dtype``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seamless_jax.models import config_utils
from seamless_jax.models.attention import attend
from seamless_jax.models.layers import (Downsample2D, Remat, ResnetBlock2D, Upsample2D, conv3x3,
                                        dense, group_norm, maybe_remat)

Dtype = Any

# diffusers keys this module does not implement, with the only value it accepts.
UNSUPPORTED_DEFAULTS = {
    "act_fn": "silu",
}
# Written by `to_config` so diffusers sees the SD-1.5 values; read back they are
# bookkeeping (config_utils.IGNORED_KEYS).
WRITTEN_DEFAULTS = {**UNSUPPORTED_DEFAULTS, "force_upcast": True, "latents_mean": None,
                    "latents_std": None}

DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"
RESNET_EPS = 1e-6  # every resnet, norm and attention norm of the SD VAE
LOGVAR_RANGE = (-30.0, 20.0)
# SD-1.5's latent scale (``z_scaled = z * scaling_factor``): the field's default.
SD15_SCALING_FACTOR = 0.18215


class AutoencoderKL(nn.Module):
  """KL-regularised autoencoder of Stable Diffusion (SD-1.5: 83.65 M params)."""
  in_channels: int = 3
  out_channels: int = 3
  down_block_types: Sequence[str] = (DOWN_BLOCK,) * 4
  up_block_types: Sequence[str] = (UP_BLOCK,) * 4
  block_out_channels: Sequence[int] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: int | Sequence[int] = 512
  scaling_factor: float = SD15_SCALING_FACTOR
  shift_factor: float | None = None
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  # Not part of a diffusers config: how to run, not what to compute.
  dtype: Dtype = jnp.float32
  attention_implementation: str | None = None
  remat: Remat = False

  @classmethod
  def from_config(cls, config: dict, **runtime) -> "AutoencoderKL":
    """Builds the module from a diffusers config dict; ``runtime`` sets dtype etc."""
    module = config_utils.module_from_config(cls, config, UNSUPPORTED_DEFAULTS, runtime)
    module.check_block_types()
    return module

  def to_config(self) -> dict:
    """The diffusers ``config.json`` content describing this module."""
    return config_utils.module_to_config(self, WRITTEN_DEFAULTS)

  def check_block_types(self) -> None:
    """Raises ValueError for block types other than the SD VAE's."""
    for kind, types, expected in (("down", self.down_block_types, DOWN_BLOCK),
                                  ("up", self.up_block_types, UP_BLOCK)):
      if len(types) != len(self.block_out_channels):
        raise ValueError(f"{len(types)} {kind}_block_types for {len(self.block_out_channels)} "
                         f"block_out_channels")
      for block_type in types:
        if block_type != expected:
          raise ValueError(f"unsupported {kind} block type {block_type!r}; expected {expected!r}")

  @property
  def downscale(self) -> int:
    """Pixels per latent along each side (8 for SD-1.5)."""
    return 2 ** (len(self.block_out_channels) - 1)

  def dummy_inputs(self, batch: int = 1) -> tuple[jax.Array]:
    """Example ``(x,)`` for `init`: a small image (all params are size-independent)."""
    return (jnp.zeros((batch, self.downscale, self.downscale, self.in_channels), jnp.float32),)

  def setup(self):
    self.check_block_types()
    common = dict(block_out_channels=tuple(self.block_out_channels),
                  layers_per_block=self.layers_per_block, groups=self.norm_num_groups,
                  add_attention=self.mid_block_add_attention,
                  implementation=self.attention_implementation, remat=self.remat,
                  dtype=self.dtype)
    self.encoder = Encoder(2 * self.latent_channels, **common)
    self.decoder = Decoder(self.out_channels, **common)
    if self.use_quant_conv:
      self.quant_conv = _conv1x1(2 * self.latent_channels, self.dtype)
    if self.use_post_quant_conv:
      self.post_quant_conv = _conv1x1(self.latent_channels, self.dtype)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Posterior of images ``x`` (B,H,W,in_channels) in [-1, 1].

    Returns:
      ``(mean, logvar)``, each (B, H/f, W/f, latent_channels), unscaled;
      ``logvar`` clipped to [-30, 20] like diffusers.
    """
    moments = self.encoder(x.astype(self.dtype))
    if self.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array) -> jax.Array:
    """Images (B,h*f,w*f,out_channels), about [-1, 1], from unscaled latents ``z`` (B,h,w,C)."""
    z = z.astype(self.dtype)
    if self.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Deterministic reconstruction ``decode(mean(encode(x)))``; touches every param."""
    mean, _ = self.encode(x)
    return self.decode(mean)


def _conv1x1(features: int, dtype: Dtype) -> nn.Conv:
  """1x1 conv named by its `setup` attribute (``quant_conv``, ``post_quant_conv``)."""
  return nn.Conv(features, (1, 1), padding="VALID", dtype=dtype, param_dtype=jnp.float32)


class _CoderBase(nn.Module):
  """Fields shared by the encoder and the decoder."""
  out_features: int
  block_out_channels: Sequence[int] = (128, 256, 512, 512)
  layers_per_block: int = 2
  groups: int = 32
  add_attention: bool = True
  implementation: str | None = None
  remat: Remat = False
  dtype: Dtype = jnp.float32

  def mid_block(self, h: jax.Array) -> jax.Array:
    return MidBlock(self.block_out_channels[-1], groups=self.groups,
                    add_attention=self.add_attention, implementation=self.implementation,
                    remat=self.remat, dtype=self.dtype, name="mid_block")(h)

  def head(self, h: jax.Array) -> jax.Array:
    h = nn.silu(group_norm(self.groups, RESNET_EPS, "conv_norm_out")(h)).astype(self.dtype)
    return conv3x3(self.out_features, self.dtype, "conv_out")(h)


class Encoder(_CoderBase):
  """(B,H,W,C) images -> (B,H/f,W/f,out_features) moments (before ``quant_conv``)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = tuple(self.block_out_channels)
    h = conv3x3(channels[0], self.dtype, "conv_in")(x)
    for i, width in enumerate(channels):
      h = DownEncoderBlock(width, num_layers=self.layers_per_block, groups=self.groups,
                           add_downsample=i < len(channels) - 1, remat=self.remat,
                           dtype=self.dtype, name=f"down_blocks_{i}")(h)
    return self.head(self.mid_block(h))


class Decoder(_CoderBase):
  """(B,h,w,C) latents (after ``post_quant_conv``) -> (B,h*f,w*f,out_features) images."""

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    channels = tuple(self.block_out_channels)[::-1]
    h = conv3x3(channels[0], self.dtype, "conv_in")(z)
    h = self.mid_block(h)
    for i, width in enumerate(channels):
      h = UpDecoderBlock(width, num_layers=self.layers_per_block + 1, groups=self.groups,
                         add_upsample=i < len(channels) - 1, remat=self.remat, dtype=self.dtype,
                         name=f"up_blocks_{i}")(h)
    return self.head(h)


class _ResnetStack(nn.Module):
  """``num_layers`` resnets ``resnets_j`` of width ``out_channels`` (no time embedding)."""
  out_channels: int
  num_layers: int = 2
  groups: int = 32
  remat: Remat = False
  dtype: Dtype = jnp.float32

  def resnets(self, h: jax.Array) -> jax.Array:
    cls = maybe_remat(ResnetBlock2D, self.remat)
    for j in range(self.num_layers):
      h = cls(self.out_channels, groups=self.groups, eps=RESNET_EPS, use_temb=False,
              dtype=self.dtype, name=f"resnets_{j}")(h)
    return h


class DownEncoderBlock(_ResnetStack):
  """diffusers ``DownEncoderBlock2D``: resnets, then a stride-2 conv with right/bottom padding."""
  add_downsample: bool = True

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    h = self.resnets(h)
    if self.add_downsample:
      h = Downsample2D(self.out_channels, padding=0, dtype=self.dtype, name="downsamplers_0")(h)
    return h


class UpDecoderBlock(_ResnetStack):
  """diffusers ``UpDecoderBlock2D``: resnets, then nearest 2x upsampling + conv."""
  add_upsample: bool = True

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    h = self.resnets(h)
    if self.add_upsample:
      h = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(h)
    return h


class MidBlock(nn.Module):
  """diffusers ``UNetMidBlock2D`` without time embedding: resnet, attention, resnet."""
  channels: int
  groups: int = 32
  add_attention: bool = True
  implementation: str | None = None
  remat: Remat = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    cls = maybe_remat(ResnetBlock2D, self.remat)
    resnet = lambda name: cls(self.channels, groups=self.groups, eps=RESNET_EPS,  # noqa: E731
                              use_temb=False, dtype=self.dtype, name=name)
    h = resnet("resnets_0")(h)
    if self.add_attention:
      h = SpatialSelfAttention(self.groups, implementation=self.implementation, dtype=self.dtype,
                               name="attentions_0")(h)
    return resnet("resnets_1")(h)


class SpatialSelfAttention(nn.Module):
  """Single-head self-attention over the H*W positions with a residual (VAE mid block).

  ``group_norm`` -> ``to_q``/``to_k``/``to_v`` (head width = C, scale C**-0.5)
  -> ``to_out_0`` -> + input. (B,H,W,C) -> (B,H,W,C).
  """
  groups: int = 32
  implementation: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    h = group_norm(self.groups, RESNET_EPS, "group_norm")(x).astype(self.dtype)
    h = h.reshape(batch, height * width, channels)
    q, k, v = (dense(channels, self.dtype, name)(h) for name in ("to_q", "to_k", "to_v"))
    h = attend(q, k, v, 1, implementation=self.implementation)
    h = dense(channels, self.dtype, "to_out_0")(h).reshape(batch, height, width, channels)
    return (h + x).astype(self.dtype)
