"""Latent blending (paper Eq. 5) and pixel-mask → latent-mask resizing.

``keep`` is 1 on known pixels (the paper's ``m``) and 0 in the region to generate.
Pixel masks are (B, H, W, 1); latent masks are (B, h, w, 1) and broadcast over channels.
"""

from __future__ import annotations

import jax.numpy as jnp

KEEP_METHODS = ("nearest", "nearest_corner", "area", "min", "max")


def blend(z, z_known, keep):
  """``z·(1 − keep) + z_known·keep`` (Eq. 5): known cells come from ``z_known``.

  Shapes: z, z_known (B, h, w, C); keep (B, h, w, 1) (or anything broadcastable).
  A fractional ``keep`` (from ``latent_keep(method='area')``) gives a convex combination.
  """
  keep = keep.astype(z.dtype)
  return z * (1 - keep) + z_known.astype(z.dtype) * keep


def _nearest_index(n_in: int, n_out: int, corner: bool):
  """Source pixel index of each output cell.

  centre: ``floor((i + ½)·n_in/n_out)`` — for factor 8 latent cell i takes pixel 8i + 4, the
  lower-right one of the four central pixels of its 8×8 footprint.
  corner: ``floor(i·n_in/n_out)`` — pixel 8i, what ``torch.nn.functional.interpolate(mode=
  'nearest')`` picks (diffusers' inpainting pipelines and BLD's reference code).
  """
  i = jnp.arange(n_out, dtype=jnp.float32)
  pos = i if corner else i + 0.5
  return jnp.clip(jnp.floor(pos * (n_in / n_out)).astype(jnp.int32), 0, n_in - 1)


def latent_keep(keep, latent_hw, method: str = "nearest"):
  """Resizes a pixel ``keep`` mask (B, H, W, 1) to latent size (B, h, w, 1).

  Methods:
    'nearest' (default): each latent cell takes the pixel at the centre of its footprint
      (see :func:`_nearest_index`); works for any size ratio. Output stays binary.
    'nearest_corner': the top-left pixel of the footprint (= torch ``interpolate`` nearest).
    'area': mean of the footprint (fractional values: a soft blend); integer factor only.
    'min': a cell is known only if all its pixels are known (hole dilated); integer factor.
    'max': a cell is known if any of its pixels is known (hole eroded); integer factor.
  """
  B, H, W, C = keep.shape
  h, w = latent_hw
  if method in ("nearest", "nearest_corner"):
    corner = method == "nearest_corner"
    rows = _nearest_index(H, h, corner)
    cols = _nearest_index(W, w, corner)
    return jnp.take(jnp.take(keep, rows, axis=1), cols, axis=2)
  if method in ("area", "min", "max"):
    if H % h or W % w:
      raise ValueError(f"method {method!r} needs integer factors, got {(H, W)} -> {(h, w)}")
    blocks = keep.reshape(B, h, H // h, w, W // w, C)
    reduce = {"area": jnp.mean, "min": jnp.min, "max": jnp.max}[method]
    return reduce(blocks, axis=(2, 4)).astype(keep.dtype)
  raise ValueError(f"method must be one of {KEEP_METHODS}, got {method!r}")
