"""The paper's training and benchmark masks, as numpy ``keep`` maps (1 = known pixel).

Shapes: ``keep`` is float32 (H, W, 1) in {0, 1}; boolean helpers return (H, W). The hole (region
to generate) is ``keep == 0``. Mask files on disk use the diffusers/BrushNet convention (white 255
= region to generate); convert only at I/O with ``keep_from_mask_image`` / ``mask_image_from_keep``.

Training masks (Sec. 4.1 of the paper):
  * inpaint: free-form strokes, boxes and blobs placed in the *background*. Pixels marked salient
    (a user's U2Net/any saliency map, or the built-in estimate ``spectral_residual_saliency``),
    dilated by ``margin`` px, are never part of the hole.
  * outpaint: keep a central rectangle ("retaining only the central portion"); by default the
    hole is a border on all four sides, ``outpaint_sides=(1, 4)`` draws 1-4 random sides.
Benchmark masks (Sec. 4.1, BrushBench change): ``benchmark_hole``, the convex hull of the
segmentation mask dilated by N px; BrushBench's run-length format is decoded by ``rle_decode``.
All sampling takes an explicit ``np.random.Generator``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.morphology import convex_hull_image, dilation

INPAINT, OUTPAINT = "inpaint", "outpaint"


# ------------------------------------------------------------------------------ file format

def keep_from_mask_image(mask: np.ndarray) -> np.ndarray:
  """Mask file pixels (H, W) or (H, W, C) uint8, white = generate -> keep (H, W, 1) float32."""
  mask = np.asarray(mask)
  if mask.ndim == 3:
    mask = mask[..., 0]
  return (mask < 128).astype(np.float32)[..., None]


def mask_image_from_keep(keep: np.ndarray) -> np.ndarray:
  """keep (H, W) or (H, W, 1) -> uint8 (H, W) mask file pixels (255 = region to generate)."""
  keep = np.asarray(keep).reshape(np.shape(keep)[:2])
  return np.where(keep > 0.5, 0, 255).astype(np.uint8)


def border_pixels(keep: np.ndarray) -> np.ndarray:
  """The pixels on either side of the keep border: bool (..., H, W).

  ``keep``: bool or {0, 1} (..., H, W) (a trailing channel axis must be dropped first, e.g.
  ``keep[..., 0]``). True on both pixels of every 4-neighbour pair whose keep differs; the image
  edge is not a border. The same pairs as the CD metric (:mod:`seamless_jax.metrics`).
  """
  known = np.asarray(keep) > 0.5
  border = np.zeros(known.shape, bool)
  vertical = known[..., 1:, :] != known[..., :-1, :]
  horizontal = known[..., :, 1:] != known[..., :, :-1]
  border[..., 1:, :] |= vertical
  border[..., :-1, :] |= vertical
  border[..., :, 1:] |= horizontal
  border[..., :, :-1] |= horizontal
  return border


def _as_keep(hole: np.ndarray) -> np.ndarray:
  return (~hole).astype(np.float32)[..., None]


# ------------------------------------------------------------------------------ saliency

def spectral_residual_saliency(image: np.ndarray, work_size: int = 64) -> np.ndarray:
  """Built-in saliency estimate (Hou & Zhang 2007, "spectral residual"); (H, W) float in [0, 1].

  ``image``: (H, W, 3) uint8 or float in [-1, 1]. Works on a ``work_size``-pixel grey copy: the
  log amplitude spectrum minus its 3x3 local mean keeps what is "unexpected"; transforming back
  with the original phase, squaring and blurring gives the saliency; it is multiplied by a
  centre prior (Gaussian, sigma = 1/4 of the image side: photographed subjects sit near the
  centre), upsampled to (H, W) and normalised by its maximum. Used only when the data has no
  saliency map of its own; U2Net maps are better, this keeps the no-saliency case sensible.
  """
  img = np.asarray(image)
  if img.dtype != np.uint8:
    img = np.clip((img + 1.0) * 127.5, 0, 255).astype(np.uint8)
  height, width = img.shape[:2]
  grey = Image.fromarray(img[..., :3]).convert("L").resize((work_size, work_size),
                                                           Image.BILINEAR)
  spectrum = np.fft.fft2(np.asarray(grey, np.float32) / 255.0)
  log_amp = np.log(np.abs(spectrum) + 1e-8)
  residual = log_amp - ndimage.uniform_filter(log_amp, size=3, mode="wrap")
  sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
  sal = ndimage.gaussian_filter(sal, sigma=work_size / 24.0)
  grid = (np.arange(work_size) + 0.5) / work_size - 0.5
  sal = sal * np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * 0.25 ** 2))
  sal = sal / (sal.max() + 1e-12)
  up = Image.fromarray(sal.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
  return np.clip(np.asarray(up), 0.0, 1.0)


def salient_pixels(saliency: np.ndarray, threshold: float | None = None) -> np.ndarray:
  """Binarises a saliency map (H, W) in [0, 1] -> bool (H, W).

  ``threshold=None`` uses a relative rule, ``saliency > 1.5 * mean(saliency)`` (for the built-in
  estimate; about 15-30 % of a typical photo); maps from a saliency model (U2Net) use a fixed threshold such as 0.5.
  """
  saliency = np.asarray(saliency, np.float32)
  if threshold is None:
    return saliency > 1.5 * float(saliency.mean())
  return saliency > threshold


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
  """Boolean (H, W) dilation by ``pixels`` (Euclidean disk)."""
  if pixels <= 0 or not mask.any():
    return mask.copy()
  return ndimage.distance_transform_edt(~mask) <= pixels


# ------------------------------------------------------------------------------ inpaint

def _draw_stroke(draw, rng, cx, cy, size):
  width = max(2, int(rng.uniform(0.15, 0.35) * size))
  points = [(cx, cy)]
  angle = rng.uniform(0, 2 * np.pi)
  for _ in range(int(rng.integers(2, 6))):
    angle += rng.uniform(-1.2, 1.2)
    step = rng.uniform(0.3, 0.8) * size
    x, y = points[-1]
    points.append((x + step * np.cos(angle), y + step * np.sin(angle)))
  draw.line(points, fill=255, width=width, joint="curve")
  r = width / 2
  for x, y in points:
    draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


def _draw_box(draw, rng, cx, cy, size):
  half_w = rng.uniform(0.3, 0.8) * size
  half_h = rng.uniform(0.3, 0.8) * size
  draw.rectangle((cx - half_w, cy - half_h, cx + half_w, cy + half_h), fill=255)


def _draw_blob(draw, rng, cx, cy, size):
  count = 16
  radii = rng.uniform(0.4, 0.9, size=count) * size
  radii = np.convolve(np.concatenate([radii[-2:], radii, radii[:2]]), np.ones(5) / 5, "valid")
  angles = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 2 * np.pi)
  draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)],
               fill=255)


_SHAPES = {"strokes": _draw_stroke, "boxes": _draw_box, "blobs": _draw_blob}


def inpaint_hole(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    salient: np.ndarray | None = None,
    area_range: tuple[float, float] = (0.1, 0.4),
    margin: int = 0,
    shapes: Sequence[str] = ("strokes", "boxes", "blobs"),
    max_shapes: int = 24,
) -> np.ndarray | None:
  """Free-form hole in the background: bool (H, W), or None if no background is left.

  Shapes (from ``shapes``) are centred on random background pixels and drawn until the hole
  covers a target fraction drawn from ``area_range`` of the image (the last shape may overshoot;
  a small background may give less). Pixels of ``dilate(salient, margin)`` are always excluded.
  """
  for name in shapes:
    if name not in _SHAPES:
      raise ValueError(f"unknown inpaint shape {name!r}; choose from {sorted(_SHAPES)}")
  if salient is None:
    allowed = np.ones((height, width), bool)
  else:
    allowed = ~dilate(np.asarray(salient, bool), margin)
  ys, xs = np.nonzero(allowed)
  if len(ys) == 0:
    return None
  target = rng.uniform(*area_range) * height * width
  size = np.sqrt(target) / 2  # characteristic half-size of one shape
  canvas = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  hole = np.zeros((height, width), bool)
  for _ in range(max_shapes):
    k = int(rng.integers(len(ys)))
    _SHAPES[shapes[int(rng.integers(len(shapes)))]](draw, rng, float(xs[k]), float(ys[k]), size)
    hole = (np.asarray(canvas) > 0) & allowed
    if hole.sum() >= target:
      break
  return hole if hole.any() else None


# ------------------------------------------------------------------------------ outpaint

def outpaint_hole(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    area_range: tuple[float, float] = (0.1, 0.4),
    sides: tuple[int, int] = (4, 4),
    max_border: float = 0.45,
) -> np.ndarray:
  """Border hole around a kept central rectangle: bool (H, W).

  ``sides`` = (min, max) number of image sides (top, bottom, left, right) that get a border of
  >= 1 px (default all four: only the central portion is kept); the hole fraction is drawn from ``area_range`` and split between the sides with a
  random aspect. Each border is at most ``max_border`` of its side, so the image centre is
  always kept (with few sides the hole can be smaller than asked).
  """
  count = int(rng.integers(sides[0], sides[1] + 1))
  chosen = set(rng.choice(4, size=count, replace=False).tolist())  # 0 top 1 bottom 2 left 3 right
  keep_fraction = 1.0 - rng.uniform(*area_range)
  has_y, has_x = bool(chosen & {0, 1}), bool(chosen & {2, 3})
  if has_x and has_y:
    share = rng.uniform(0.3, 0.7)
    fx, fy = keep_fraction ** share, keep_fraction ** (1 - share)
  else:
    fx, fy = (keep_fraction, 1.0) if has_x else (1.0, keep_fraction)

  def split(total_fraction, lo_side, hi_side, size):
    lo_share = rng.uniform(0.25, 0.75) if {lo_side, hi_side} <= chosen else float(lo_side in chosen)
    limit = int(max_border * size)
    borders = []
    for side, share in ((lo_side, lo_share), (hi_side, 1 - lo_share)):
      px = int(round(total_fraction * share * size)) if side in chosen else 0
      borders.append(min(max(px, 1), limit) if side in chosen else 0)
    return borders

  top, bottom = split(1 - fy, 0, 1, height)
  left, right = split(1 - fx, 2, 3, width)
  hole = np.ones((height, width), bool)
  hole[top:height - bottom, left:width - right] = False
  return hole


# ------------------------------------------------------------------------------ benchmark masks

def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
  """Filled convex hull of a boolean (H, W) mask -> bool (H, W); always contains ``mask``.

  ``skimage.morphology.convex_hull_image``: the hull of the mask pixels' edge midpoints, a pixel
  is inside when its centre is. An empty mask gives an empty hull.
  """
  mask = np.asarray(mask, bool)
  if not mask.any():
    return mask.copy()
  return convex_hull_image(mask)


def benchmark_hole(segmentation: np.ndarray, dilate_px: int = 10) -> np.ndarray:
  """The paper's BrushBench inpaint hole: bool (H, W), True = region to generate.

  The convex hull of ``segmentation`` (bool (H, W)) "slightly expanded": dilated by ``dilate_px``
  pixels with a square element (Chebyshev distance; ``dilate`` uses a disk).
  """
  hull = convex_hull_mask(segmentation)
  if dilate_px <= 0 or not hull.any():
    return hull
  return dilation(hull, np.ones((2 * dilate_px + 1, 2 * dilate_px + 1), bool))


def rle_decode(rle: str | Sequence[int], shape: tuple[int, int]) -> np.ndarray:
  """BrushBench run-length mask -> bool (H, W), True = region to generate.

  Format (BrushBench ``mapping_file.json``, BrushNet's ``rle2mask``): flat ``[start_1, length_1,
  start_2, ...]`` over the row-major flattened (H, W) image with 1-based starts; a
  space-separated string of the same numbers also works. Raises ``ValueError`` for an odd count
  or runs outside the image.
  """
  values = np.asarray(rle.split() if isinstance(rle, str) else rle, dtype=np.int64)
  if values.ndim != 1 or values.size % 2:
    raise ValueError(f"RLE must be a flat list of (start, length) pairs, got {values.size} values")
  starts, lengths = values[0::2] - 1, values[1::2]
  flat = np.zeros(shape[0] * shape[1], bool)
  if values.size and (starts.min() < 0 or (starts + lengths).max() > flat.size):
    raise ValueError(f"RLE runs fall outside a {shape[0]}x{shape[1]} mask")
  for start, length in zip(starts, lengths):
    flat[start:start + length] = True
  return flat.reshape(shape)


# ------------------------------------------------------------------------------ mixture

@dataclasses.dataclass(frozen=True)
class MaskMixture:
  """Which training masks to sample; mirrors ``config.data.masks`` (see ``data/config.py``)."""
  inpaint_prob: float = 0.5
  outpaint_prob: float = 0.5
  area_range: tuple[float, float] = (0.1, 0.4)
  inpaint_shapes: tuple[str, ...] = ("strokes", "boxes", "blobs")
  saliency_threshold: float = 0.5
  saliency_margin: int = 8
  use_builtin_saliency: bool = True
  outpaint_sides: tuple[int, int] = (4, 4)

  @classmethod
  def from_config(cls, cfg) -> "MaskMixture":
    return cls(
        inpaint_prob=float(cfg.inpaint_prob),
        outpaint_prob=float(cfg.outpaint_prob),
        area_range=tuple(float(a) for a in cfg.area_range),
        inpaint_shapes=tuple(cfg.inpaint_shapes),
        saliency_threshold=float(cfg.saliency_threshold),
        saliency_margin=int(cfg.saliency_margin),
        use_builtin_saliency=bool(cfg.use_builtin_saliency),
        outpaint_sides=tuple(int(s) for s in cfg.outpaint_sides),
    )

  def validate(self) -> None:
    total = self.inpaint_prob + self.outpaint_prob
    if self.inpaint_prob < 0 or self.outpaint_prob < 0 or total <= 0:
      raise ValueError("data.masks.inpaint_prob / outpaint_prob must be >= 0 with a positive sum,"
                       f" got {self.inpaint_prob}, {self.outpaint_prob}")
    lo, hi = self.area_range
    if not 0.0 < lo <= hi < 1.0:
      raise ValueError(f"data.masks.area_range must satisfy 0 < lo <= hi < 1, got {self.area_range}")
    if not 1 <= self.outpaint_sides[0] <= self.outpaint_sides[1] <= 4:
      raise ValueError(f"data.masks.outpaint_sides must be within [1, 4], got {self.outpaint_sides}")
    for name in self.inpaint_shapes:
      if name not in _SHAPES:
        raise ValueError(f"data.masks.inpaint_shapes: unknown shape {name!r}; "
                         f"choose from {sorted(_SHAPES)}")


def sample_keep(
    rng: np.random.Generator,
    image: np.ndarray,
    mixture: MaskMixture,
    saliency: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
  """Draws one training mask for ``image`` (H, W, 3): returns (keep (H, W, 1) float32, kind).

  ``saliency`` (H, W) in [0, 1] from a saliency model is thresholded at
  ``mixture.saliency_threshold``; without it the built-in estimate is used (if enabled). An
  inpaint draw on an image with no background left falls back to an outpaint mask.
  """
  height, width = image.shape[:2]
  p_inpaint = mixture.inpaint_prob / (mixture.inpaint_prob + mixture.outpaint_prob)
  if rng.uniform() < p_inpaint:
    if saliency is not None:
      salient = salient_pixels(saliency, mixture.saliency_threshold)
    elif mixture.use_builtin_saliency:
      salient = salient_pixels(spectral_residual_saliency(image))
    else:
      salient = None
    hole = inpaint_hole(rng, height, width, salient=salient, area_range=mixture.area_range,
                        margin=mixture.saliency_margin, shapes=mixture.inpaint_shapes)
    if hole is not None:
      return _as_keep(hole), INPAINT
  hole = outpaint_hole(rng, height, width, area_range=mixture.area_range,
                       sides=mixture.outpaint_sides)
  return _as_keep(hole), OUTPAINT
