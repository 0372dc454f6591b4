"""Analytic FLOP count of a traced JAX program (for MFU), convolutions included on every backend.

XLA's ``compiled.cost_analysis()`` leaves out work done in library calls (cuDNN convolutions
and attention on GPU), so on GPU it reported ~10x too few FLOPs for the diffusion step. This
module counts the matrix work from the jaxpr instead, the way MFU is usually defined
(2 FLOPs per multiply-add, elementwise work ignored):

* ``dot_general``: 2 · (batch · lhs-free · contracted · rhs-free sizes);
* ``conv_general_dilated``: 2 · output elements · kernel window · input features per group
  (the input- and kernel-gradient convolutions of a backward pass count the same way);
* cuDNN fused attention: 4·B·N·T·S·H forward, 8·B·N·T·S·H backward (the four matmuls of the
  gradient, the same as XLA's autodiff of the einsum path); a Pallas kernel counts the FLOPs
  of its ``cost_estimate`` when it has one;
* nested programs (``jit``, ``custom_vjp``, ``remat``, ``shard_map``...) are walked; a ``scan``
  body counts ``length`` times, a ``cond`` its most expensive branch, a ``while`` body once
  (its trip count is not static), a ``shard_map`` body once per device of its mesh.

The total is for the whole program (all devices); divide by the device count for per-device
MFU. Rematerialised forward passes (``config.remat``) are counted as executed.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core

ATTENTION_FWD = "dot_product_attention_fwd"
ATTENTION_BWD = "dot_product_attention_bwd"
BTNH = 0  # cuDNN attention layout code of (batch, length, heads, head_dim)


def _size(shape) -> int:
  return int(math.prod(int(d) for d in shape))


def dot_general_flops(lhs_shape, rhs_shape, dimension_numbers) -> int:
  """2 · MACs of a ``lax.dot_general``."""
  (_, rhs_contract), (_, rhs_batch) = dimension_numbers
  rhs_free = [d for i, d in enumerate(rhs_shape) if i not in rhs_contract and i not in rhs_batch]
  return 2 * _size(lhs_shape) * _size(rhs_free)


def conv_flops(out_shape, rhs_shape, dimension_numbers) -> int:
  """2 · MACs of a ``lax.conv_general_dilated`` (any layout, groups, dilation)."""
  rhs_spec = dimension_numbers.rhs_spec  # (out feature dim, in feature dim, spatial dims...)
  window = _size([rhs_shape[d] for d in rhs_spec[2:]])
  return 2 * _size(out_shape) * window * int(rhs_shape[rhs_spec[1]])


def _attention_flops(eqn) -> int:
  query, value = eqn.invars[0].aval.shape, eqn.invars[2].aval.shape
  layout = eqn.params.get("layout", BTNH)
  if getattr(layout, "value", layout) != BTNH:  # BNTH
    b, n, t, h = query
    s = value[2]
  else:  # BTNH (what jax.nn.dot_product_attention passes)
    b, t, n, h = query
    s = value[1]
  per_matmul = 2 * b * n * t * s * h
  return 2 * per_matmul if eqn.primitive.name.startswith(ATTENTION_FWD) else 4 * per_matmul


def _sub_jaxprs(value) -> list:
  """Jaxprs held by one equation parameter (a jaxpr, a closed jaxpr, or a list of them)."""
  if isinstance(value, jex_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jex_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  if name == "dot_general":
    return dot_general_flops(eqn.invars[0].aval.shape, eqn.invars[1].aval.shape,
                             eqn.params["dimension_numbers"])
  if name == "conv_general_dilated":
    return conv_flops(eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape,
                      eqn.params["dimension_numbers"])
  if name.startswith(ATTENTION_FWD) or name.startswith(ATTENTION_BWD):
    return _attention_flops(eqn)
  if name == "pallas_call":
    estimate = eqn.params.get("cost_estimate")
    return float(getattr(estimate, "flops", 0) or 0)
  subs = [(k, _sub_jaxprs(v)) for k, v in eqn.params.items()]
  subs = [(k, js) for k, js in subs if js]
  if not subs:
    return 0.0
  if name == "cond":
    return max(_jaxpr_flops(j) for _, js in subs for j in js)
  total = sum(_jaxpr_flops(j) for _, js in subs for j in js)
  if name == "scan":
    return total * int(eqn.params["length"])
  if name == "shard_map":
    return total * int(eqn.params["mesh"].size)
  return total


def _jaxpr_flops(jaxpr) -> float:
  return float(sum(_eqn_flops(eqn) for eqn in jaxpr.eqns))


def jaxpr_flops(jaxpr: Any) -> float:
  """FLOPs of one evaluation of a (closed) jaxpr, whole program (see module doc)."""
  return _jaxpr_flops(getattr(jaxpr, "jaxpr", jaxpr))


def count_flops(fn: Callable, *args, **kwargs) -> float:
  """FLOPs of ``fn(*args, **kwargs)``; args may be ``jax.ShapeDtypeStruct``s (nothing runs)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))
