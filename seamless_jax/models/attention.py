"""Attention layers (NHWC images, (B,L,D) sequences) behind one kernel switch.

All attention goes through :func:`attend`, which picks the kernel per call with
:func:`select_implementation` (a pure function of backend, shapes and dtype):

* ``None`` / ``''`` (default, automatic): cuDNN flash attention
  (``jax.nn.dot_product_attention(implementation='cudnn')``) on GPU wherever its rules hold
  (fp16/bf16, head dim a multiple of 8 and <= 128, <= 256 from Hopper on, even lengths: not the
  77-token text sequences); on TPU the Pallas
  flash kernel where it takes the head dim (<= 128 or a multiple of 128) and the sequence
  lengths tile by 128; :func:`softmax_attention` (two einsums around a float32 softmax, with a
  hand-written VJP) everywhere else (CPU, float32, the VAE mid-block's 512-wide head on GPU,
  SD-1.5's 160-wide heads and the 77-token cross-attention on TPU).
* ``'xla'``: XLA on every call.
* ``'cudnn'`` / ``'pallas'``: the kernel on every call whose head dim / lengths it takes, XLA for
  the others (the VAE's 512-wide head); asking for it on the wrong backend or dtype is an error.

Which devices. The platform (and GPU compute capability) come from the mesh the program is
compiled for, set with :func:`kernel_target` around the tracing (the train step and the
ahead-of-time compiler do this), so a step compiled on a CPU machine for a TPU topology picks
the TPU kernels; outside such a block the default backend's first device decides. On a mesh of
more than one device the library kernels run inside a ``jax.shard_map`` over its devices
(Mosaic kernels cannot be partitioned by GSPMD): over the batch when it divides by the mesh
size, else over the heads, else replicated.

Submodule names mirror diffusers (``to_q``, ``to_out_0``, ``transformer_blocks_0``...).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from seamless_jax.models.layers import Remat, conv1x1, dense, group_norm, maybe_remat

Dtype = Any

IMPLEMENTATIONS = ("", "xla", "cudnn", "pallas")
CUDNN_DTYPES = ("float16", "bfloat16")
PALLAS_BLOCK = 128  # the TPU flash kernel tiles both sequence lengths by this
PALLAS_LANES = 128  # ... and takes head dims up to this or multiples of it


def cudnn_max_head_dim(compute_capability: str | None) -> int:
  """cuDNN flash attention's largest head dim: 256 from Hopper (sm 9.0) on, else 128."""
  if not compute_capability:
    return 128
  major = int(str(compute_capability).split(".")[0])
  return 256 if major >= 9 else 128


def cudnn_supports(head_dim: int, dtype, compute_capability: str | None = None,
                   q_len: int = 2, kv_len: int = 2) -> bool:
  """Whether cuDNN flash attention takes this head dim, dtype and these lengths. Its training
  (backward) kernel refuses odd lengths, so the 77-token text sequences go to XLA."""
  return (jnp.dtype(dtype).name in CUDNN_DTYPES and head_dim % 8 == 0
          and head_dim <= cudnn_max_head_dim(compute_capability)
          and q_len % 2 == 0 and kv_len % 2 == 0)


def pallas_supports(head_dim: int, q_len: int, kv_len: int) -> bool:
  """Whether the TPU Pallas flash kernel takes this head dim (<= 128 or a multiple of 128:
  SD-1.5's 160-wide heads are refused) and tiles these sequence lengths."""
  head_ok = head_dim <= PALLAS_LANES or head_dim % PALLAS_LANES == 0
  return head_ok and q_len % PALLAS_BLOCK == 0 and kv_len % PALLAS_BLOCK == 0


def select_implementation(requested: str | None, platform: str, *, head_dim: int, dtype,
                          q_len: int, kv_len: int,
                          compute_capability: str | None = None) -> str:
  """The kernel for one attention call: ``'xla'``, ``'cudnn'`` or ``'pallas'``.

  Args:
    requested: ``None``/``''`` (automatic), ``'xla'``, ``'cudnn'`` or ``'pallas'``
      (``config.attention``).
    platform: ``jax.default_backend()`` (``'cpu'``, ``'gpu'``/``'cuda'``, ``'tpu'``).
    head_dim, dtype, q_len, kv_len: of this call's q/k/v.
    compute_capability: the GPU's (``'9.0'`` on H100/H200); sets cuDNN's head-dim limit.

  Raises:
    ValueError: an unknown ``requested``, or a forced kernel on a backend/dtype it never runs on.
  """
  requested = requested or ""
  if requested not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {requested!r} is not one of "
                     f"{list(IMPLEMENTATIONS)} (config.attention)")
  gpu, tpu = platform in ("gpu", "cuda", "rocm"), platform == "tpu"
  dtype_name = jnp.dtype(dtype).name
  if requested == "xla":
    return "xla"
  if requested == "cudnn":
    if platform not in ("gpu", "cuda"):
      raise ValueError(f"config.attention='cudnn' needs an NVIDIA GPU; the backend is {platform!r}")
    if dtype_name not in CUDNN_DTYPES:
      raise ValueError(f"config.attention='cudnn' needs bfloat16/float16 compute "
                       f"(config.dtype); got {dtype_name}")
  if requested == "pallas" and not tpu:
    raise ValueError(f"config.attention='pallas' needs a TPU; the backend is {platform!r}")
  if gpu and platform != "rocm" and cudnn_supports(head_dim, dtype, compute_capability, q_len,
                                                   kv_len):
    return "cudnn"
  if tpu and pallas_supports(head_dim, q_len, kv_len):
    return "pallas"
  return "xla"


@dataclasses.dataclass(frozen=True)
class KernelTarget:
  """The devices attention kernels are chosen for.

  platform: ``'cpu'``, ``'gpu'`` or ``'tpu'``; compute_capability: the GPU's (``'9.0'``).
  mesh: the mesh whose devices each run a library kernel on their slice (``jax.shard_map``);
    ``None`` on one device, or where the caller is already per device (inside a shard_map).
  """
  platform: str
  compute_capability: str | None = None
  mesh: Mesh | None = None


_TARGET: contextvars.ContextVar[KernelTarget | None] = contextvars.ContextVar(
    "attention_kernel_target", default=None)


def target_of(mesh: Mesh, *, per_device: bool = False) -> KernelTarget:
  """The :class:`KernelTarget` of ``mesh``'s devices (compile-only devices of a topology too);
  ``per_device``: the code runs inside a shard_map already (``parallelism='shard_map'``)."""
  device = mesh.devices.flat[0]
  platform = "gpu" if device.platform in ("gpu", "cuda") else device.platform
  capability = getattr(device, "compute_capability", None)
  if platform == "gpu" and jax.default_backend() not in ("gpu", "cuda"):
    # Compiling for a GPU on a machine without one: JAX's cuDNN check reads the LOCAL GPU's
    # compute capability and, finding none, applies the pre-Hopper head-dim limit (128), so
    # plan with that limit (SD-1.5's 160-wide heads then compile with XLA attention here).
    capability = None
  return KernelTarget(platform, str(capability) if capability else None,
                      None if per_device or mesh.size == 1 else mesh)


@contextlib.contextmanager
def kernel_target(mesh: Mesh | None, *, per_device: bool = False) -> Iterator[None]:
  """Within this block, attention traced for ``mesh`` picks that mesh's kernels (module doc).

  Wrap the *tracing* of a jitted function (its Python body runs then), e.g. the body of a
  train step. ``mesh=None`` leaves the current choice unchanged.
  """
  if mesh is None:
    yield
    return
  token = _TARGET.set(target_of(mesh, per_device=per_device))
  try:
    yield
  finally:
    _TARGET.reset(token)


@functools.lru_cache(maxsize=None)
def _default_target() -> KernelTarget:
  device = jax.devices()[0]
  capability = getattr(device, "compute_capability", None)
  return KernelTarget(jax.default_backend(), str(capability) if capability else None)


def current_target() -> KernelTarget:
  """The target set by :func:`kernel_target`, else the default backend's first device."""
  return _TARGET.get() or _default_target()


_COUNTS: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "attention_kernel_counts", default=None)


@contextlib.contextmanager
def count_kernels(counts: dict) -> Iterator[dict]:
  """Within this block every traced attention call adds 1 to ``counts['<kernel> (head dim
  H)']`` (how a program's attention was compiled; :mod:`seamless_jax.aot` reports it)."""
  token = _COUNTS.set(counts)
  try:
    yield counts
  finally:
    _COUNTS.reset(token)


def kernel_partition_spec(mesh: Mesh, batch: int, heads: int) -> P:
  """How a (B, L, N, H) kernel input is split over ``mesh`` (module doc): batch, else heads,
  else replicated."""
  axes = tuple(mesh.axis_names)
  if batch % mesh.size == 0:
    return P(axes)
  if heads % mesh.size == 0:
    return P(None, None, axes)
  return P()


def _per_device(kernel, mesh: Mesh | None, q, k, v) -> jax.Array:
  """``kernel(q, k, v)`` on (B, L, N, H) arrays, inside a shard_map over ``mesh`` when given."""
  if mesh is None:
    return kernel(q, k, v)
  spec = kernel_partition_spec(mesh, q.shape[0], q.shape[2])
  return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)(q, k, v)


def _pallas_flash(q, k, v, is_causal: bool) -> jax.Array:
  """TPU Pallas flash attention on (B, L, N, H) inputs (imported only on TPU)."""
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash  # pylint: disable=import-outside-toplevel
  to_bnlh = lambda x: jnp.swapaxes(x, 1, 2)
  out = tpu_flash.flash_attention(to_bnlh(q), to_bnlh(k), to_bnlh(v), causal=is_causal,
                                  sm_scale=1.0 / math.sqrt(q.shape[-1]))
  return jnp.swapaxes(out, 1, 2)


def _softmax_attention_fwd(q, k, v, is_causal):
  """Scores, float32 softmax and weighted values on (B, L, N, H); keeps what the VJP needs."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  scores = jnp.einsum("bqnh,bknh->bnqk", q * jnp.asarray(scale, q.dtype), k,
                      preferred_element_type=jnp.float32)
  if is_causal:
    q_len, kv_len = scores.shape[-2:]
    visible = jnp.tril(jnp.ones((q_len, kv_len), bool), kv_len - q_len)
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  out = jnp.swapaxes(jnp.einsum("bnqk,bnkh->bnqh", probs, jnp.swapaxes(v, 1, 2)), 1, 2)
  return out, (q, k, v, probs, out)


def _softmax_attention_bwd(is_causal, residuals, d_out):
  """Flash-attention style gradient: dS = P ⊙ (dP − rowsum(dO ⊙ O)), from the saved P."""
  del is_causal  # masked positions have P = 0, hence dS = 0
  q, k, v, probs, out = residuals
  scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
  d_v = jnp.einsum("bnqk,bqnh->bknh", probs, d_out)
  d_probs = jnp.einsum("bqnh,bknh->bnqk", d_out, v, preferred_element_type=jnp.float32)
  row_dot = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # (B, L, N)
  d_scores = (probs * (d_probs - jnp.swapaxes(row_dot, 1, 2)[..., None])).astype(q.dtype)
  d_q = jnp.einsum("bnqk,bknh->bqnh", d_scores, k) * scale
  d_k = jnp.einsum("bnqk,bqnh->bknh", d_scores, q) * scale
  return d_q, d_k, d_v


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                      is_causal: bool = False) -> jax.Array:
  """XLA attention on (B, L, N, H) q and (B, S, N, H) k/v -> (B, L, N, H).

  Two einsums around a float32 softmax, with a hand-written VJP that reuses the saved
  probabilities and the output (``rowsum(dO ⊙ O)`` instead of ``rowsum(dP ⊙ P)``); the
  second einsum runs in (B, N, L, H) order, which XLA's CPU backend fuses far better. On one
  CPU core at 1024 tokens this is 12x faster forward and 3.4x faster forward+backward than
  ``jax.nn.dot_product_attention(implementation='xla')`` (``benchmarks/attention.py``,
  ``docs/benchmarks.md``); values and gradients agree to float32 rounding
  (``tests/test_attention_select.py``).
  """
  return _softmax_attention_fwd(q, k, v, is_causal)[0]


softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, *,
           implementation: str | None = None, is_causal: bool = False) -> jax.Array:
  """Multi-head scaled dot-product attention with the kernel chosen for this call.

  Args:
    q: (B, Lq, heads*head_dim); k, v: (B, Lk, heads*head_dim).
    heads: number of heads.
    implementation: ``config.attention`` (see the module doc and :func:`select_implementation`).
    is_causal: mask future keys (CLIP text).

  Returns:
    (B, Lq, heads*head_dim) in the dtype of ``q``.
  """
  def split(x):
    return x.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads)

  target = current_target()
  kernel = select_implementation(implementation, target.platform, head_dim=q.shape[-1] // heads,
                                 dtype=q.dtype, q_len=q.shape[1], kv_len=k.shape[1],
                                 compute_capability=target.compute_capability)
  counts = _COUNTS.get()
  if counts is not None:
    name = f"{kernel} (head dim {q.shape[-1] // heads})"
    counts[name] = counts.get(name, 0) + 1
  if kernel == "pallas":
    out = _per_device(functools.partial(_pallas_flash, is_causal=is_causal), target.mesh,
                      split(q), split(k), split(v))
  elif kernel == "cudnn":
    cudnn = functools.partial(jax.nn.dot_product_attention, is_causal=is_causal,
                              implementation="cudnn")
    out = _per_device(cudnn, target.mesh, split(q), split(k), split(v))
  else:
    out = softmax_attention(split(q), split(k), split(v), is_causal)
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
  remat: Remat = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    inner = self.heads * self.head_dim
    block_cls = maybe_remat(BasicTransformerBlock, self.remat)

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
