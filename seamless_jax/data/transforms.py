"""Per-example preparation: record (see sources.py) -> training example, or a ``BadRecord``.

Output example (numpy, one element; the pipeline batches them):
  ``image``     (R, R, 3) float32 in [-1, 1]  (R = ``data.resolution``)
  ``keep``      (R, R, 1) float32, 1 = known pixel (masks.py)
  ``input_ids`` (max_length,) int32 CLIP ids (empty caption with prob. ``caption_dropout``)
Steps: decode (JPEG drafts at reduced scale when the image is much bigger than needed), reject
too-small images, resize shorter side to R (bicubic), random or centre crop, random horizontal
flip (the saliency map follows the same geometry), mask, caption dropout, tokenise.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
from PIL import Image

from seamless_jax.data import masks as masks_lib
from seamless_jax.data.tokenizer import CLIPTokenizer


@dataclasses.dataclass(frozen=True)
class BadRecord:
  """Marker for a record that cannot be used; ``reason`` is short text for logs and errors."""
  name: str
  reason: str


def _open(data: Any, mode: str, target: int) -> tuple[Image.Image, tuple[int, int]]:
  """Decodes bytes or an array; returns (image in ``mode``, original (width, height))."""
  if isinstance(data, np.ndarray):
    arr = data if data.ndim == 3 or mode == "L" else np.repeat(data[..., None], 3, -1)
    if arr.ndim == 3 and mode == "L":
      arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
      arr = np.repeat(arr, 3, -1)
    img = Image.fromarray(arr.astype(np.uint8))
    return img.convert(mode), img.size
  img = Image.open(io.BytesIO(data))
  size = img.size
  if img.format == "JPEG":  # decode at 1/2, 1/4, 1/8 scale when still >= target on both sides
    img.draft(mode if mode == "L" else "RGB", (target, target))
  img.load()  # raises on truncated/corrupt data
  return img.convert(mode), size


def _resize_crop(img: Image.Image, resolution: int, box: tuple[int, int, int, int] | None,
                 rng: np.random.Generator | None, resample) -> tuple[Image.Image, tuple]:
  """Resizes the shorter side to ``resolution`` then crops a square (random unless box given)."""
  w, h = img.size
  scale = resolution / min(w, h)
  new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
  img = img.resize((new_w, new_h), resample, reducing_gap=3.0 if resample != Image.NEAREST
                   else None)
  if box is None:
    if rng is None:
      left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    else:
      left = int(rng.integers(new_w - resolution + 1))
      top = int(rng.integers(new_h - resolution + 1))
    box = (left, top, left + resolution, top + resolution)
  return img.crop(box), box


class ExamplePreparer:
  """Grain random-map callable ``(record, rng) -> example dict | BadRecord`` (picklable)."""

  def __init__(self, data_config, tokenizer: CLIPTokenizer):
    self.resolution = int(data_config.resolution)
    self.center_crop = bool(data_config.center_crop)
    self.random_flip = bool(data_config.random_flip)
    self.min_side = int(data_config.min_side)
    self.caption_dropout = float(data_config.caption_dropout)
    self.max_length = int(data_config.max_length)
    self.mixture = masks_lib.MaskMixture.from_config(data_config.masks)
    self.tokenizer = tokenizer

  def __call__(self, record: dict[str, Any], rng: np.random.Generator):
    name = str(record.get("name", "?"))
    text = record.get("text")
    if record.get("image") is None:
      return BadRecord(name, "unreadable file")
    if text is None or not str(text).strip():
      return BadRecord(name, "missing caption")
    try:
      img, (width, height) = _open(record["image"], "RGB", self.resolution)
    except Exception as e:  # pylint: disable=broad-except  (any decoder error = bad file)
      return BadRecord(name, f"undecodable image ({type(e).__name__}: {e})")
    if min(width, height) < self.min_side:
      return BadRecord(name, f"too small ({width}x{height} < data.min_side={self.min_side})")

    crop_rng = None if self.center_crop else rng
    img, box = _resize_crop(img, self.resolution, None, crop_rng, Image.BICUBIC)
    flip = self.random_flip and rng.uniform() < 0.5
    pixels = np.asarray(img, np.uint8)
    saliency = None
    if record.get("saliency") is not None:
      try:
        sal_img, _ = _open(record["saliency"], "L", self.resolution)
        # any map size (e.g. U2Net's 320x320) is stretched to the image's pre-crop size
        sal_img = sal_img.resize(_pre_crop_size(width, height, self.resolution), Image.BILINEAR)
        saliency = np.asarray(sal_img.crop(box), np.float32) / 255.0
      except Exception:  # pylint: disable=broad-except  (a bad saliency map: use the estimate)
        saliency = None
    if flip:
      pixels = pixels[:, ::-1]
      saliency = None if saliency is None else saliency[:, ::-1]

    keep, _ = masks_lib.sample_keep(rng, pixels, self.mixture, saliency)
    if rng.uniform() < self.caption_dropout:
      text = ""
    return {
        "image": np.ascontiguousarray(pixels),
        "keep": keep.astype(np.uint8),
        "input_ids": self.tokenizer([str(text)], self.max_length)[0],
    }


def _pre_crop_size(width: int, height: int, resolution: int) -> tuple[int, int]:
  """Size (w, h) of an image of (width, height) after the shorter-side resize."""
  scale = resolution / min(width, height)
  return max(resolution, round(width * scale)), max(resolution, round(height * scale))


# ============================================================================ host -> model

def image_to_float(image):
  """uint8 pixels -> float32 in [-1, 1] (numpy or jax arrays); float input is returned as is."""
  return image.astype(np.float32) / 127.5 - 1.0 if image.dtype == np.uint8 else image


def image_to_uint8(image) -> np.ndarray:
  """Float in [-1, 1] -> uint8 pixels (rounded, clipped); the inverse of :func:`image_to_float`."""
  return np.clip(np.round((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def model_inputs(batch: dict) -> dict:
  """A pipeline batch -> what the models take: ``image`` float32 in [-1, 1] (B,R,R,3), ``keep``
  float32 in {0, 1} (B,R,R,1), ``input_ids``; other keys are dropped.

  The train step calls it inside jit, so batches cross the host -> device link as uint8 (a
  quarter of float32's bytes); float batches pass through unchanged.
  """
  keep = batch["keep"]
  return {"image": image_to_float(batch["image"]),
          "keep": keep if keep.dtype == np.float32 else keep.astype(np.float32),
          "input_ids": batch["input_ids"]}
