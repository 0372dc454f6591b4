"""Stable Diffusion 1.5 UNet (``UNet2DConditionModel``) in Flax linen, NHWC.

Fields mirror the keys of a diffusers ``unet/config.json``; `from_config`
builds the module from such a dict (unsupported non-default keys are an
error naming the key). ``attention_head_dim`` follows diffusers' historical
meaning: it is the *number of heads* per block (SD-1.5: 8 heads of width
channels/8).

``apply({'params': p}, sample (B,h,w,C_in), timesteps (B,), encoder_hidden_states (B,L,D))
-> (B,h,w,out_channels)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seamless_jax.models import config_utils
from seamless_jax.models.attention import Transformer2DModel
from seamless_jax.models.layers import (Downsample2D, Remat, ResnetBlock2D, Upsample2D, conv3x3,
                                        dense, group_norm, maybe_remat, timestep_embedding)

Dtype = Any

# diffusers keys this module does not implement, with the only value it accepts.
UNSUPPORTED_DEFAULTS = {
    "center_input_sample": False,
    "act_fn": "silu",
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "dual_cross_attention": False,
    "only_cross_attention": False,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_cond_proj_dim": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "transformer_layers_per_block": 1,
    "num_attention_heads": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "attention_type": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "cross_attention_norm": None,
    "timestep_post_act": None,
    "class_embeddings_concat": False,
    "projection_class_embeddings_input_dim": None,
    "addition_time_embed_dim": None,
    "reverse_transformer_layers_per_block": None,
    "dropout": 0.0,
    "addition_embed_type_num_heads": 64,
    "mid_block_only_cross_attention": None,
    "time_embedding_act_fn": None,
}


class UNet2DConditionModel(nn.Module):
  """Text-conditioned denoising UNet (SD-1.5 and SD-1.5-inpainting)."""
  sample_size: int = 64
  in_channels: int = 4
  out_channels: int = 4
  flip_sin_to_cos: bool = True
  freq_shift: int = 0
  down_block_types: Sequence[str] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                     "CrossAttnDownBlock2D", "DownBlock2D")
  up_block_types: Sequence[str] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                   "CrossAttnUpBlock2D")
  block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  attention_head_dim: int | Sequence[int] = 8
  cross_attention_dim: int = 768
  use_linear_projection: bool = False
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  # Not part of a diffusers config: how to run, not what to compute.
  dtype: Dtype = jnp.float32
  attention_implementation: str | None = None
  remat: Remat = False

  CONFIG_CLASS = "UNet2DConditionModel"

  @classmethod
  def from_config(cls, config: dict, **runtime) -> "UNet2DConditionModel":
    """Builds the module from a diffusers config dict; ``runtime`` sets dtype etc."""
    return config_utils.module_from_config(cls, config, UNSUPPORTED_DEFAULTS, runtime)

  def to_config(self) -> dict:
    """The diffusers ``config.json`` content describing this module."""
    return config_utils.module_to_config(self, UNSUPPORTED_DEFAULTS)

  def dummy_inputs(self, batch: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Example ``(sample, timesteps, encoder_hidden_states)`` for `init`."""
    size = self.sample_size if isinstance(self.sample_size, int) else self.sample_size[0]
    size = min(size, 8 * 2 ** (len(self.block_out_channels) - 1))
    return (jnp.zeros((batch, size, size, self.in_channels), jnp.float32),
            jnp.zeros((batch,), jnp.int32),
            jnp.zeros((batch, 1, self.cross_attention_dim), jnp.float32))

  def _heads(self) -> tuple[int, ...]:
    heads = self.attention_head_dim
    if isinstance(heads, int):
      return (heads,) * len(self.block_out_channels)
    return tuple(heads)

  @nn.compact
  def __call__(self, sample: jax.Array, timesteps: jax.Array,
               encoder_hidden_states: jax.Array) -> jax.Array:
    channels = tuple(self.block_out_channels)
    heads = self._heads()
    context = encoder_hidden_states.astype(self.dtype)
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (sample.shape[0],))
    common = dict(groups=self.norm_num_groups, eps=self.norm_eps,
                  use_linear_projection=self.use_linear_projection,
                  implementation=self.attention_implementation, remat=self.remat,
                  dtype=self.dtype)

    temb = timestep_embedding(timesteps, channels[0], flip_sin_to_cos=self.flip_sin_to_cos,
                              freq_shift=self.freq_shift).astype(self.dtype)
    temb = TimestepEmbedding(4 * channels[0], dtype=self.dtype, name="time_embedding")(temb)

    # Down path: every resnet/downsampler output is a skip for the up path.
    h = conv3x3(channels[0], self.dtype, "conv_in")(sample.astype(self.dtype))
    skips = [h]
    for i, block_type in enumerate(self.down_block_types):
      h, block_skips = UNetDownBlock(
          channels[i], heads[i], num_layers=self.layers_per_block,
          has_attention=_has_attention(block_type, "CrossAttnDownBlock2D", "DownBlock2D"),
          add_downsample=i < len(channels) - 1, name=f"down_blocks_{i}", **common)(h, temb, context)
      skips.extend(block_skips)

    h = UNetMidBlock(channels[-1], heads[-1], name="mid_block", **common)(h, temb, context)

    # Up path, consuming the skips in reverse.
    up_channels, up_heads = channels[::-1], heads[::-1]
    for i, block_type in enumerate(self.up_block_types):
      num_layers = self.layers_per_block + 1
      block_skips, skips = skips[-num_layers:], skips[:-num_layers]
      h = UNetUpBlock(
          up_channels[i], up_heads[i], num_layers=num_layers,
          has_attention=_has_attention(block_type, "CrossAttnUpBlock2D", "UpBlock2D"),
          add_upsample=i < len(channels) - 1, name=f"up_blocks_{i}", **common)(
              h, block_skips, temb, context)

    h = nn.silu(group_norm(self.norm_num_groups, self.norm_eps, "conv_norm_out")(h))
    return conv3x3(self.out_channels, self.dtype, "conv_out")(h.astype(self.dtype))


def _has_attention(block_type: str, with_attention: str, without_attention: str) -> bool:
  if block_type not in (with_attention, without_attention):
    raise ValueError(f"unsupported block type {block_type!r}; expected {with_attention!r} or "
                     f"{without_attention!r}")
  return block_type == with_attention


class _BlockBase(nn.Module):
  """Fields shared by the down, mid and up blocks."""
  out_channels: int
  heads: int
  groups: int = 32
  eps: float = 1e-5
  use_linear_projection: bool = False
  implementation: str | None = None
  remat: Remat = False
  dtype: Dtype = jnp.float32

  def resnet(self, name: str) -> ResnetBlock2D:
    cls = maybe_remat(ResnetBlock2D, self.remat)
    return cls(self.out_channels, groups=self.groups, eps=self.eps, dtype=self.dtype, name=name)

  def transformer(self, name: str) -> Transformer2DModel:
    return Transformer2DModel(self.heads, self.out_channels // self.heads, groups=self.groups,
                              use_linear_projection=self.use_linear_projection,
                              implementation=self.implementation, remat=self.remat,
                              dtype=self.dtype, name=name)


class UNetDownBlock(_BlockBase):
  """``CrossAttnDownBlock2D`` (``has_attention``) or ``DownBlock2D``.

  Returns ``(h, skips)`` with one skip per resnet and one for the downsampler.
  """
  num_layers: int = 2
  has_attention: bool = True
  add_downsample: bool = True

  @nn.compact
  def __call__(self, h, temb, context):
    skips = []
    for j in range(self.num_layers):
      h = self.resnet(f"resnets_{j}")(h, temb)
      if self.has_attention:
        h = self.transformer(f"attentions_{j}")(h, context)
      skips.append(h)
    if self.add_downsample:
      h = Downsample2D(self.out_channels, padding=1, dtype=self.dtype, name="downsamplers_0")(h)
      skips.append(h)
    return h, skips


class UNetMidBlock(_BlockBase):
  """``UNetMidBlock2DCrossAttn``: resnet, transformer, resnet."""

  @nn.compact
  def __call__(self, h, temb, context):
    h = self.resnet("resnets_0")(h, temb)
    h = self.transformer("attentions_0")(h, context)
    return self.resnet("resnets_1")(h, temb)


class UNetUpBlock(_BlockBase):
  """``CrossAttnUpBlock2D`` (``has_attention``) or ``UpBlock2D``.

  ``skips`` are this block's skip tensors in down-path order; they are consumed
  from the last one.
  """
  num_layers: int = 3
  has_attention: bool = True
  add_upsample: bool = True

  @nn.compact
  def __call__(self, h, skips, temb, context):
    for j in range(self.num_layers):
      h = jnp.concatenate([h, skips[-1 - j].astype(h.dtype)], axis=-1)
      h = self.resnet(f"resnets_{j}")(h, temb)
      if self.has_attention:
        h = self.transformer(f"attentions_{j}")(h, context)
    if self.add_upsample:
      h = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(h)
    return h


class TimestepEmbedding(nn.Module):
  """``linear_1`` - SiLU - ``linear_2`` on the sinusoidal embedding."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.silu(dense(self.features, self.dtype, "linear_1")(x))
    return dense(self.features, self.dtype, "linear_2")(x)
