"""Seam and preservation metrics in NumPy: Color Distance (CD), excess CD, masked MSE/PSNR/LPIPS.

Conventions (as everywhere in the project): ``keep`` is True / 1 on known pixels and False / 0
on generated ones. Images for the single-image functions are (H, W, 3) RGB with values in
0–255 (uint8 or any real dtype); the batch function also takes the project's float images in
[−1, 1] (see :func:`color_distance_batch`).

**CD** (paper Sec. 4, "Color Distance"): the mean, over every 4-neighbour pixel pair (p, q)
whose ``keep`` differs (one known, one generated pixel), of the Euclidean distance between
their RGB values on the 0–255 scale, computed in float64. A mask with no such pair (all kept
or all generated) has no border: :func:`color_distance` raises ``ValueError``,
:func:`color_distance_batch` returns NaN for that row.

No torch here: this module is imported by training. LPIPS goes through the project's Flax
LPIPS is passed in as a function (``seamless_jax.models.lpips.load_lpips_fn``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _as_keep(keep, spatial_shape: tuple[int, ...], name: str = "keep") -> np.ndarray:
  """``keep`` (…, H, W) or (…, H, W, 1), bool or {0,1} → bool (…, H, W) matching ``spatial_shape``."""
  keep = np.asarray(keep)
  if keep.ndim == len(spatial_shape) + 1 and keep.shape[-1] == 1:
    keep = keep[..., 0]
  if keep.shape != tuple(spatial_shape):
    raise ValueError(f"{name} has shape {keep.shape}, expected {tuple(spatial_shape)} "
                     f"(or with a trailing 1)")
  return keep > 0.5 if keep.dtype != bool else keep


def _check_rgb(image: np.ndarray, batched: bool, name: str = "image") -> None:
  want = 4 if batched else 3
  if image.ndim != want or image.shape[-1] != 3:
    layout = "(B, H, W, 3)" if batched else "(H, W, 3)"
    raise ValueError(f"{name} must be RGB {layout}, got shape {image.shape}")


def _border_sums(image255: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Sum of RGB distances over border pairs and the number of border pairs, per leading index.

  image255 (…, H, W, 3) float64 on the 0–255 scale; keep (…, H, W) bool.
  Returns (sum (…,), count (…,)).
  """
  total = np.zeros(image255.shape[:-3], np.float64)
  count = np.zeros(image255.shape[:-3], np.int64)
  for axis in (-2, -1):  # vertical pairs (along H), horizontal pairs (along W)
    n = keep.shape[axis]
    head = [slice(None)] * keep.ndim
    tail = [slice(None)] * keep.ndim
    head[axis], tail[axis] = slice(0, n - 1), slice(1, n)
    border = keep[tuple(head)] != keep[tuple(tail)]
    diff = image255[tuple(head) + (slice(None),)] - image255[tuple(tail) + (slice(None),)]
    dist = np.sqrt(np.sum(diff * diff, axis=-1))
    total += np.sum(dist * border, axis=(-2, -1))
    count += np.sum(border, axis=(-2, -1))
  return total, count


def color_distance(image, keep) -> float:
  """The paper's CD of one image on the border of ``keep``.

  Args:
    image: (H, W, 3) RGB, values 0–255 (uint8 or real).
    keep: (H, W) or (H, W, 1); True / 1 = known pixel.
  Returns:
    Mean Euclidean RGB distance (0–255 scale) over 4-neighbour pairs with keep[p] != keep[q].
  Raises:
    ValueError: wrong shapes, or no border pair (``keep`` all True or all False).
  """
  image = np.asarray(image)
  _check_rgb(image, batched=False)
  keep = _as_keep(keep, image.shape[:2])
  total, count = _border_sums(image.astype(np.float64), keep)
  if count == 0:
    state = "all kept" if keep.all() else "all generated"
    raise ValueError(f"color_distance: keep has no border ({state}); CD is undefined")
  return float(total / count)


def to_255(images) -> np.ndarray:
  """uint8 → float64 unchanged (0–255); real dtype in [−1, 1] → ``(x + 1)·127.5`` after clipping.

  Real inputs outside [−1.5, 1.5] raise ``ValueError`` (they are most likely 0–255 floats:
  convert those to uint8 or use :func:`color_distance` on each image).
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float64)
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"images must be uint8 (0–255) or float in [-1, 1], got {images.dtype}")
  if images.size and (images.min() < -1.5 or images.max() > 1.5):
    raise ValueError(f"float images must be in [-1, 1], got range "
                     f"[{images.min():.3g}, {images.max():.3g}]")
  return (np.clip(images.astype(np.float64), -1.0, 1.0) + 1.0) * 127.5


def color_distance_batch(images, keep) -> np.ndarray:
  """CD per image of a batch; NaN for images whose mask has no border.

  Args:
    images: (B, H, W, 3) uint8 (0–255) **or** float in [−1, 1] (the project's image
      convention; clipped to [−1, 1] and mapped to 0–255 by ``(x + 1)·127.5``, no rounding).
    keep: (B, H, W) or (B, H, W, 1), bool or {0, 1}; 1 = known pixel.
  Returns:
    (B,) float64. Average a batch with ``np.nanmean``.
  """
  images = np.asarray(images)
  _check_rgb(images, batched=True, name="images")
  keep = _as_keep(keep, images.shape[:3])
  total, count = _border_sums(to_255(images), keep)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def excess_color_distance(output, ground_truth, keep) -> float:
  """``CD(output) − CD(ground_truth)`` on the same border (0 for a perfect seam on real content).

  output, ground_truth (H, W, 3) 0–255; keep (H, W). Negative values mean the output's border
  is smoother than the real image's.
  """
  output, ground_truth = np.asarray(output), np.asarray(ground_truth)
  if output.shape != ground_truth.shape:
    raise ValueError(f"output {output.shape} and ground_truth {ground_truth.shape} differ in shape")
  return color_distance(output, keep) - color_distance(ground_truth, keep)


def excess_color_distance_batch(outputs, ground_truths, keep) -> np.ndarray:
  """(B,) ``color_distance_batch(outputs) − color_distance_batch(ground_truths)``; NaN rows as there."""
  outputs, ground_truths = np.asarray(outputs), np.asarray(ground_truths)
  if outputs.shape != ground_truths.shape:
    raise ValueError(f"outputs {outputs.shape} and ground_truths {ground_truths.shape} differ")
  return color_distance_batch(outputs, keep) - color_distance_batch(ground_truths, keep)


# ----------------------------------------------------------------------------- kept region


def masked_mse(output, reference, keep, *, brushnet_compat: bool = False) -> float:
  """MSE over the kept pixels of two (H, W, 3) 0–255 images, on the [0, 1] scale.

  Default: mean over kept pixels × 3 channels. ``brushnet_compat=True`` divides the same sum by
  the number of kept *pixels* only (what BrushNet's ``evaluate_brushnet.py`` does), i.e. 3× the
  default — use it to compare with numbers in the BrushNet paper.
  Raises ``ValueError`` if no pixel is kept.
  """
  output, reference = np.asarray(output), np.asarray(reference)
  _check_rgb(output, batched=False, name="output")
  if output.shape != reference.shape:
    raise ValueError(f"output {output.shape} and reference {reference.shape} differ in shape")
  keep = _as_keep(keep, output.shape[:2])
  n_kept = int(keep.sum())
  if n_kept == 0:
    raise ValueError("masked_mse: keep has no kept pixel")
  diff = (output.astype(np.float64) - reference.astype(np.float64)) / 255.0
  squared_sum = float(np.sum((diff * diff)[keep]))
  return squared_sum / (n_kept if brushnet_compat else 3 * n_kept)


def masked_psnr(output, reference, keep, *, brushnet_compat: bool = False) -> float:
  """PSNR (dB, peak 1.0) of the kept region: ``10·log10(1 / masked_mse)``; ``inf`` if identical.

  Same arguments as :func:`masked_mse`.
  """
  mse = masked_mse(output, reference, keep, brushnet_compat=brushnet_compat)
  return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def zero_outside_keep(images, keep) -> np.ndarray:
  """(B, H, W, 3) 0–255 images → float32 in [−1, 1] with generated pixels set to −1 (black).

  This is BrushNet's masked-LPIPS input: both images are multiplied by ``keep`` on the [0, 1]
  scale, then mapped to [−1, 1]. keep (B, H, W) or (B, H, W, 1).
  """
  images = np.asarray(images)
  _check_rgb(images, batched=True, name="images")
  keep = _as_keep(keep, images.shape[:3])
  unit = images.astype(np.float32) / 255.0 * keep[..., None]
  return unit * 2.0 - 1.0


def masked_lpips(outputs, references, keep, lpips_fn: Callable) -> np.ndarray:
  """LPIPS of the kept region (BrushNet's protocol: generated pixels blacked out in both).

  Args:
    outputs, references: (B, H, W, 3) 0–255.
    keep: (B, H, W) or (B, H, W, 1); 1 = known.
    lpips_fn: ``(x, y) -> (B,)`` on [−1, 1] images, e.g.
      ``seamless_jax.models.lpips.load_lpips_fn(path)``.
  Returns: (B,) float64.
  Note: BrushNet uses the SqueezeNet LPIPS; the project's LPIPS is VGG16 (lpips v0.1), so the
  absolute values differ from their table.
  """
  outputs, references = np.asarray(outputs), np.asarray(references)
  if outputs.shape != references.shape:
    raise ValueError(f"outputs {outputs.shape} and references {references.shape} differ")
  x = zero_outside_keep(outputs, keep)
  y = zero_outside_keep(references, keep)
  return np.asarray(lpips_fn(x, y), np.float64)
