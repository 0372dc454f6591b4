"""Attention layers (NHWC images, (B,L,D) sequences) behind one kernel switch.

All attention goes through `jax.nn.dot_product_attention`; its ``implementation``
(None = let XLA choose, 'xla', 'cudnn') comes from the model config, so a GPU
run can pick cuDNN flash attention and a CPU test the plain XLA path.
Submodule names mirror diffusers (``to_q``, ``to_out_0``, ``transformer_blocks_0``...).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seamless_jax.models.layers import conv1x1, dense, group_norm

Dtype = Any


def attend(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, *,
           implementation: str | None = None, is_causal: bool = False) -> jax.Array:
  """Multi-head scaled dot-product attention.

  Args:
    q: (B, Lq, heads*head_dim); k, v: (B, Lk, heads*head_dim).
    heads: number of heads.
    implementation: passed to `jax.nn.dot_product_attention`.
    is_causal: mask future keys (CLIP text).

  Returns:
    (B, Lq, heads*head_dim) in the dtype of ``q``.
  """
  def split(x):
    return x.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads)

  out = jax.nn.dot_product_attention(split(q), split(k), split(v), is_causal=is_causal,
                                     implementation=implementation)
  return out.reshape(q.shape[0], q.shape[1], -1)


class Attention(nn.Module):
  """diffusers ``Attention``: q/k/v projections, attention, ``to_out_0`` projection.

  ``__call__(x (B,L,Dq), context (B,M,Dc) or None) -> (B,L,Dq)``; self-attention
  when ``context`` is None.
  """
  heads: int
  head_dim: int
  out_dim: int
  qkv_bias: bool = False
  implementation: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    inner = self.heads * self.head_dim
    context = x if context is None else context.astype(self.dtype)
    q = dense(inner, self.dtype, "to_q", use_bias=self.qkv_bias)(x)
    k = dense(inner, self.dtype, "to_k", use_bias=self.qkv_bias)(context)
    v = dense(inner, self.dtype, "to_v", use_bias=self.qkv_bias)(context)
    out = attend(q, k, v, self.heads, implementation=self.implementation)
    return dense(self.out_dim, self.dtype, "to_out_0")(out)


class GEGLU(nn.Module):
  """``proj`` to twice the width; one half gates the other through exact GELU."""
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden, gate = jnp.split(dense(2 * self.out_dim, self.dtype, "proj")(x), 2, axis=-1)
    return hidden * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """diffusers ``FeedForward`` with GEGLU: ``net_0`` (GEGLU) then ``net_2`` (Dense)."""
  dim: int
  mult: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = GEGLU(self.dim * self.mult, dtype=self.dtype, name="net_0")(x)
    return dense(self.dim, self.dtype, "net_2")(h)


class BasicTransformerBlock(nn.Module):
  """Pre-norm self-attention, cross-attention and GEGLU feed-forward on (B,L,D)."""
  dim: int
  heads: int
  head_dim: int
  implementation: str | None = None
  dtype: Dtype = jnp.float32

  def _norm(self, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    def attention(name):
      return Attention(self.heads, self.head_dim, self.dim, implementation=self.implementation,
                       dtype=self.dtype, name=name)

    x = x + attention("attn1")(self._norm("norm1")(x).astype(self.dtype))
    x = x + attention("attn2")(self._norm("norm2")(x).astype(self.dtype), context)
    x = x + FeedForward(self.dim, dtype=self.dtype, name="ff")(
        self._norm("norm3")(x).astype(self.dtype))
    return x.astype(self.dtype)


class Transformer2DModel(nn.Module):
  """Spatial transformer of SD's UNet: (B,H,W,C) -> (B,H,W,C) conditioned on context.

  ``use_linear_projection`` picks Dense (SD-2 style) or 1x1 conv (SD-1.5) for
  ``proj_in``/``proj_out``; the two are the same map, only the stored weight
  layout differs.
  """
  heads: int
  head_dim: int
  groups: int = 32
  use_linear_projection: bool = False
  num_layers: int = 1
  implementation: str | None = None
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    inner = self.heads * self.head_dim
    block_cls = nn.remat(BasicTransformerBlock) if self.remat else BasicTransformerBlock

    h = group_norm(self.groups, 1e-6, "norm")(x).astype(self.dtype)
    if self.use_linear_projection:
      h = dense(inner, self.dtype, "proj_in")(h.reshape(batch, height * width, channels))
    else:
      h = conv1x1(inner, self.dtype, "proj_in")(h).reshape(batch, height * width, inner)
    for i in range(self.num_layers):
      h = block_cls(inner, self.heads, self.head_dim, implementation=self.implementation,
                    dtype=self.dtype, name=f"transformer_blocks_{i}")(h, context)
    if self.use_linear_projection:
      h = dense(channels, self.dtype, "proj_out")(h).reshape(batch, height, width, channels)
    else:
      h = conv1x1(channels, self.dtype, "proj_out")(h.reshape(batch, height, width, inner))
    return (h + x).astype(self.dtype)
