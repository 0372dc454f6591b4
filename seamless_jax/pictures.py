"""Pictures of results for people: nearest upscaling, the mask-border close-up, labelled grids.

Images are uint8 (H, W, 3) RGB (or (H, W) grey); ``keep`` is bool (H, W), True on known pixels
(the project's convention). The training sample grids (:mod:`seamless_jax.train.samples`), the
web app (:mod:`seamless_jax.app`) and ``docs/make_demo_figure.py`` draw with these, so a seam
looks the same everywhere: small images are enlarged by whole factors with nearest-neighbour
sampling (no pixel is blended, a seam stays as sharp as it is).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from seamless_jax.data import masks as masks_lib

LABEL_HEIGHT = 14  # px of the caption strip above labelled columns (PIL's default 11 px font)


def upscale_nearest(image: np.ndarray, min_side: int) -> np.ndarray:
  """``image`` (H, W[, C]) enlarged by the smallest whole factor that makes its shorter side
  at least ``min_side`` (factor 1: returned unchanged), nearest-neighbour."""
  image = np.asarray(image)
  factor = max(1, -(-int(min_side) // max(1, min(image.shape[:2]))))
  if factor == 1:
    return image
  return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def border_centre(keep: np.ndarray) -> tuple[int, int]:
  """(row, col) of the border pixel nearest the centre of the generated region (the image's
  centre when ``keep`` (H, W) has no border)."""
  keep = np.asarray(keep) > 0.5
  border = np.argwhere(masks_lib.border_pixels(keep))
  if not len(border):
    return keep.shape[0] // 2, keep.shape[1] // 2
  hole = np.argwhere(~keep)
  centre = hole.mean(axis=0) if len(hole) else np.asarray(keep.shape, float) / 2
  row, col = border[np.argmin(((border - centre) ** 2).sum(axis=1))]
  return int(row), int(col)


def close_up(image: np.ndarray, keep: np.ndarray, side: int) -> np.ndarray:
  """A ``side`` x ``side`` crop of ``image`` (H, W, C) centred on :func:`border_centre`
  (shifted to stay inside; the whole image when it is smaller)."""
  row, col = border_centre(keep)
  height, width = image.shape[:2]
  side_h, side_w = min(int(side), height), min(int(side), width)
  top = int(np.clip(row - side_h // 2, 0, height - side_h))
  left = int(np.clip(col - side_w // 2, 0, width - side_w))
  return np.asarray(image)[top:top + side_h, left:left + side_w]


def border_close_up(image: np.ndarray, keep: np.ndarray, size: int = 256) -> np.ndarray:
  """What the app shows beside a result: a crop of a quarter of the shorter side (at least
  16 px) around the mask border, enlarged (nearest) to at least ``size`` px."""
  side = max(16, min(image.shape[:2]) // 4)
  return upscale_nearest(close_up(image, keep, side), size)


def label_columns(grid: np.ndarray, labels: Sequence[str]) -> np.ndarray:
  """``grid`` (H, W, 3) uint8 made of ``len(labels)`` equal-width columns, with a white strip of
  :data:`LABEL_HEIGHT` px on top naming each column (left-aligned over it)."""
  grid = np.asarray(grid)
  width = grid.shape[1]
  strip = Image.new("RGB", (width, LABEL_HEIGHT), "white")
  draw = ImageDraw.Draw(strip)
  column = width // max(1, len(labels))
  for i, label in enumerate(labels):
    draw.text((i * column + 2, 1), label, fill="black")
  return np.concatenate([np.asarray(strip), grid], axis=0)
