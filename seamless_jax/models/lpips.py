"""LPIPS (v0.1, VGG16 trunk) as a Flax linen module, NHWC.

Layout mirrors torchvision's ``vgg16().features`` (convs at indices 0, 2, 5, 7, 10, 12, 14, 17,
19, 21, 24, 26, 28; 2×2 max-pools at 4, 9, 16, 23) up to relu5_3, with feature taps after
relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3. Then, as the ``lpips`` package: inputs in
[−1, 1] are shifted/scaled by ``ScalingLayer``; each tap is unit-normalised over channels
(``x/(‖x‖ + 1e-10)``); squared differences go through a 1×1 conv ``lin{k}`` without bias,
are averaged spatially and summed over the five layers.

Parameter names (one table, see :func:`torch_key_to_flax`):
  ``features_{N}/kernel`` (HWIO) ↔ torchvision ``features.{N}.weight`` (OIHW)
  ``features_{N}/bias``          ↔ ``features.{N}.bias``
  ``lin{k}/kernel`` (1,1,C,1)    ↔ lpips ``lin{k}.model.1.weight`` (1,C,1,1)
Weights come from a safetensors file written by ``tools/convert_lpips.py``; this module never
downloads anything. :func:`load_lpips_fn` gives LPIPS as a plain function ``(x, y) -> (B,)``.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOL_AFTER = (2, 7, 14, 21)      # pool after the relu of these convs (torchvision idx 4, 9, 16, 23)
TAP_AFTER = (2, 7, 14, 21, 28)   # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
TAP_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Module):
  """torchvision VGG16 ``features`` up to relu5_3; returns the five relu taps (NHWC)."""
  dtype: jnp.dtype = jnp.float32
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x):
    taps = []
    for idx, ch in zip(VGG_CONV_INDICES, VGG_CHANNELS):
      x = nn.Conv(ch, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                  precision=self.precision, name=f"features_{idx}")(x)
      x = nn.relu(x)
      if idx in TAP_AFTER:
        taps.append(x)
      if idx in POOL_AFTER:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return taps


def _unit_normalize(f, eps=1e-10):
  return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + eps)


class LPIPS(nn.Module):
  """``LPIPS()(x, y) -> (B,)`` perceptual distance; x, y (B, H, W, 3) in [−1, 1].

  Computed in ``dtype`` (float32 default), returned as float32.
  """
  dtype: jnp.dtype = jnp.float32
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x, y):
    shift = jnp.asarray(SHIFT, jnp.float32)
    scale = jnp.asarray(SCALE, jnp.float32)
    batch = x.shape[0]
    xy = jnp.concatenate([x, y], axis=0).astype(jnp.float32)
    xy = ((xy - shift) / scale).astype(self.dtype)
    taps = VGG16Features(self.dtype, self.precision, name="vgg")(xy)
    total = jnp.zeros((batch,), jnp.float32)
    for k, tap in enumerate(taps):
      f = _unit_normalize(tap.astype(jnp.float32))
      diff = (f[:batch] - f[batch:]) ** 2
      head = nn.Conv(1, (1, 1), use_bias=False, dtype=self.dtype, precision=self.precision,
                     name=f"lin{k}")(diff.astype(self.dtype))
      total = total + jnp.mean(head.astype(jnp.float32), axis=(1, 2, 3))
    return total


# ----------------------------------------------------------------------------- key table

_FEAT = re.compile(r"^(?:features|net\.slice\d)\.(\d+)\.(weight|bias)$")
_LIN = re.compile(r"^lin(\d)\.model\.(?:1\.)?weight$")


def torch_key_to_flax(key: str) -> tuple[str, ...] | None:
  """Maps a torchvision / lpips state-dict key to a Flax param path (None = not LPIPS).

  Accepts ``features.N.*`` (torchvision vgg16), ``net.sliceK.N.*`` (an ``lpips.LPIPS``
  state dict) and ``linK.model.1.weight`` (lpips heads; ``linK.model.weight`` without dropout).
  """
  m = _FEAT.match(key)
  if m and int(m.group(1)) in VGG_CONV_INDICES:
    return ("vgg", f"features_{m.group(1)}", "kernel" if m.group(2) == "weight" else "bias")
  m = _LIN.match(key)
  if m and int(m.group(1)) < len(TAP_CHANNELS):
    return (f"lin{m.group(1)}", "kernel")
  return None


def torch_to_flax_array(path: Sequence[str], value: np.ndarray) -> np.ndarray:
  """Conv weight OIHW → HWIO; biases unchanged."""
  value = np.asarray(value, np.float32)
  return value.transpose(2, 3, 1, 0) if path[-1] == "kernel" else value


def params_from_torch(state_dicts) -> dict[str, np.ndarray]:
  """Flat ``{'vgg/features_0/kernel': array, ...}`` from torch-style state dicts (numpy values).

  Keys that are not LPIPS weights (classifier, scaling-layer buffers) are ignored.
  Raises ``KeyError`` if a required weight is missing.
  """
  flat = {}
  for sd in state_dicts:
    for k, v in sd.items():
      path = torch_key_to_flax(k)
      if path is not None:
        flat["/".join(path)] = torch_to_flax_array(path, v)
  missing = sorted(set(expected_param_shapes()) - set(flat))
  if missing:
    raise KeyError(f"LPIPS weights missing: {missing}")
  return flat


def expected_param_shapes() -> dict[str, tuple[int, ...]]:
  """``{'vgg/features_0/kernel': (3, 3, 3, 64), ...}`` for every LPIPS parameter."""
  shapes, c_in = {}, 3
  for idx, ch in zip(VGG_CONV_INDICES, VGG_CHANNELS):
    shapes[f"vgg/features_{idx}/kernel"] = (3, 3, c_in, ch)
    shapes[f"vgg/features_{idx}/bias"] = (ch,)
    c_in = ch
  for k, ch in enumerate(TAP_CHANNELS):
    shapes[f"lin{k}/kernel"] = (1, 1, ch, 1)
  return shapes


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
  """``'a/b/c' -> {'a': {'b': {'c': ...}}}`` after checking keys and shapes exactly."""
  expected = expected_param_shapes()
  unknown = sorted(set(flat) - set(expected))
  missing = sorted(set(expected) - set(flat))
  if unknown or missing:
    raise KeyError(f"LPIPS params mismatch: missing={missing} unknown={unknown}")
  for name, value in flat.items():
    if tuple(value.shape) != expected[name]:
      raise ValueError(f"{name}: shape {tuple(value.shape)} != expected {expected[name]}")
  return _nest({name: jnp.asarray(value, jnp.float32) for name, value in flat.items()})


def _nest(flat: dict) -> dict:
  """``{'a/b/c': x}`` -> ``{'params': {'a': {'b': {'c': x}}}}``."""
  tree: dict = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return {"params": tree}


def abstract_lpips(*, dtype=jnp.float32, precision=None):
  """``(LPIPS module, variables)`` with ``jax.ShapeDtypeStruct`` leaves (nothing read): what
  compiling a VAE step needs without the weight file."""
  return LPIPS(dtype=dtype, precision=precision), _nest(
      {name: jax.ShapeDtypeStruct(shape, jnp.float32)
       for name, shape in expected_param_shapes().items()})


def load_lpips(path: str, *, dtype=jnp.float32, precision=None):
  """Reads ``tools/convert_lpips.py`` output → ``(LPIPS module, variables)``.

  Raises ``FileNotFoundError`` / ``KeyError`` (missing or unknown keys) / ``ValueError``
  (wrong shapes) with the offending names.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"LPIPS weights not found at {path!r}; create them with "
                            "tools/convert_lpips.py --vgg vgg16.pth --lin vgg.pth --out ...")
  return LPIPS(dtype=dtype, precision=precision), unflatten_params(load_file(path))


def lpips_fn(module: LPIPS, variables):
  """``fn(x, y) -> (B,)`` (x, y (B, H, W, 3) in [−1, 1]) with frozen weights.

  The weights are under ``stop_gradient``: gradients flow to the inputs only (the VAE loss).
  """
  frozen = jax.lax.stop_gradient(variables)

  def fn(x, y):
    return module.apply(frozen, x, y)

  return fn


def load_lpips_fn(path: str, *, dtype=jnp.float32, precision=None):
  """Jitted :func:`lpips_fn` of the weights in ``path`` (:func:`load_lpips`): the one loader for
  evaluation (``seamless_jax.metrics.masked_lpips``) and losses."""
  return jax.jit(lpips_fn(*load_lpips(path, dtype=dtype, precision=precision)))
