"""Inpainting and outpainting with a trained model: Python API and ``python -m seamless_jax.inpaint``.

The paper's full system is a two-step UNet (``--model``: a ``two_step`` workdir or its exported
diffusers folder) rendered by the Eq. 6 blend-aware decoder (``--vae``: a ``vae_finetune``
workdir or a VAE folder; its decoder replaces the model's, the encoder stays the model's)::

  python -m seamless_jax.inpaint --model runs/two_step --vae runs/vae \\
      --image photo.png --mask mask.png --out result.png
  python -m seamless_jax.inpaint --model /ckpt/stable-diffusion-v1-5 --image photo.png \\
      --outpaint 128,0,128,0 --num-images 4 --out outpainted/

Python::

  from seamless_jax import inpaint
  pipe = inpaint.Inpainter.load("runs/two_step", vae="runs/vae")
  [result] = pipe(image_uint8, mask_uint8)          # white mask pixels = generate
  canvas, mask = inpaint.outpaint_canvas(image_uint8, 128, 0, 128, 0)
  results = pipe(canvas, mask, num_images=4, seed=1)

Sampling is Blended Latent Diffusion (BLD) with DDIM (:func:`seamless_jax.diffusion.sampler.
bld_sample`) and classifier-free guidance, the negative prompt as the unconditional text. The
prediction type (ε for base SD-1.5, v for our trained models), β schedule and DDIM spacing come
from the model's scheduler config. 4-channel UNets are blended every step; 9-channel inpainting
UNets (``in_channels=9``) get ``[z_t, hole mask, E(x·keep)]`` as input and are blended too.

Conventions and rules
---------------------
* I/O: images are uint8 (H, W, 3) RGB; masks uint8 (H, W), **white (> 127) = generate** (the
  diffusers/BrushNet convention; bool masks: True = generate). Internally images are NHWC
  float32 in [−1, 1] and ``keep`` = 1 on known pixels.
* Image files: RGB; greyscale, palette and fully opaque RGBA files are converted to RGB; other
  modes (CMYK, 16-bit, transparent RGBA...) are refused. Mask files are read as greyscale.
* Mask size: a mask of another size with the same aspect ratio (within 1 %) is resized to the
  image size with nearest-neighbour sampling, then thresholded (> 127 = generate); a different
  aspect ratio is an error. Empty masks (nothing to generate), full masks (nothing kept) and holes
  that vanish at latent resolution are errors.
* Any image size: the image and its mask are padded (reflect) at the bottom/right to a multiple
  of :attr:`Inpainter.size_multiple` (VAE factor × 2^UNet downsamplings: 64 for SD-1.5) and the
  result is cropped back, so outputs have the input's size and no pixel is resampled.
* Outpainting: :func:`outpaint_canvas` grows the canvas by LEFT, TOP, RIGHT, BOTTOM pixels and
  marks the new area white in the mask. The new area is filled (``edge`` default, ``reflect``,
  ``mean``, ``black``) only for the saved canvas: the model never sees it (the hole is zeroed
  before encoding, ``E(x·keep)``).
* ``paste_back``: the post-hoc fixes people use today (:data:`PASTE_BACK_MODES`,
  :func:`apply_paste_back`): ``hard`` copies the input's known pixels over the output;
  ``blurred`` feathers that paste with a Gaussian (:func:`blur_sigma`; diffusers' ``mask_blur``
  + ``apply_overlay``, BrushNet's 21×21 "blurred blending"); ``poisson`` blends the generated
  region into the input in the gradient domain (OpenCV's ``seamlessClone``, the ``[eval]``
  extra). The Eq. 6 decoder is trained so that the decoded known region already matches the
  input without a visible seam, so the paper's system needs none of them.
* Other decoders: :meth:`Inpainter.generate` also returns the final latents, and
  :meth:`Inpainter.decode` renders them with another VAE's decoder (same latents, same seed).
* Randomness: image ``i`` sample ``j`` uses the key ``fold_in(PRNGKey(seed_i), j)``, so results
  do not depend on batching: a batch call equals one call per image with the same seed.
* Compilation: one XLA program per (batch, padded size, steps); params are arguments (never
  constants) and stay on the device between calls.
"""

from __future__ import annotations

from seamless_jax import console

console.import_jax_quietly()  # first: no JAX plugin start-up chatter on this command's console
# pylint: disable=wrong-import-position

import argparse
import contextlib
import dataclasses
import functools
import os
import sys
import time
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging
from PIL import Image
from scipy import ndimage

from seamless_jax import build
from seamless_jax import loading
from seamless_jax.data import masks as masks_lib
from seamless_jax.data import transforms
from seamless_jax.diffusion import blending
from seamless_jax.diffusion import bld
from seamless_jax.diffusion import schedule as schedule_lib
from seamless_jax.runtime import hardware

DEFAULT_PROMPT = "scenery"
OUTPAINT_FILLS = ("edge", "reflect", "mean", "black")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
ASPECT_TOLERANCE = 0.01
CONVERTIBLE_MODES = ("RGB", "L", "P", "RGBA", "LA", "RGBX")
PASTE_BACK_MODES = ("hard", "blurred", "poisson")
# OpenCV's seamlessClone erodes its mask by 3 px before taking the source's gradients and pins
# the edge of the mask's bounding box: the hole grown by 4 px gets the source's gradients over
# the whole hole and across its border, and boundary values from known pixels.
CLONE_DILATION = 4
OPENCV_HINT = ('Poisson blending needs OpenCV: pip install -e ".[eval]" '
               "(opencv-python-headless)")


class InputError(ValueError):
  """An image, mask or option a user gave that cannot be used; the message names it."""


# ============================================================================ image / mask I/O

def read_image(path: str) -> np.ndarray:
  """uint8 (H, W, 3) RGB from an image file; :class:`InputError` naming ``path`` otherwise."""
  with _open_image(path, "image") as img:
    mode = img.mode
    if mode not in CONVERTIBLE_MODES:
      raise InputError(f"{path} is not an RGB image (mode {mode}); convert it to 8-bit RGB")
    if img.mode == "P":
      img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
      alpha = np.asarray(img.getchannel("A"))
      if alpha.min() < 255:
        raise InputError(f"{path} has transparent pixels (mode {mode}); give an opaque RGB image "
                         "and the region to generate as --mask")
    return np.asarray(img.convert("RGB"), np.uint8).copy()


def read_mask(path: str) -> np.ndarray:
  """uint8 (H, W) from a mask file read as greyscale (white = generate)."""
  with _open_image(path, "mask") as img:
    if img.mode in ("I", "I;16", "F"):
      raise InputError(f"{path} is not an 8-bit mask (mode {img.mode}); save it as 8-bit grey")
    return np.asarray(img.convert("L"), np.uint8).copy()


def _open_image(path: str, what: str):
  if not os.path.isfile(path):
    raise InputError(f"{what} file {path} does not exist")
  try:
    img = Image.open(path)
    img.load()
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise InputError(f"{path} is not a readable {what} file ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else 'corrupt'})") from e
  return img


def check_image(image, name: str = "image") -> np.ndarray:
  """``image`` as uint8 (H, W, 3); :class:`InputError` for other shapes/dtypes."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise InputError(f"{name} must be RGB (H, W, 3), got shape {image.shape}")
  if image.dtype != np.uint8:
    raise InputError(f"{name} must be uint8 (0-255), got {image.dtype}")
  if min(image.shape[:2]) < 1:
    raise InputError(f"{name} is empty ({image.shape})")
  return image


def mask_to_keep(mask, image_hw: tuple[int, int], name: str = "mask") -> np.ndarray:
  """Mask (white / True = generate) -> ``keep`` bool (H, W) at the image size (module doc rules).

  ``mask``: (h, w), (h, w, 1) or (h, w, C) uint8 (> 127 = generate; channel 0 is used) or bool.
  """
  mask = np.asarray(mask)
  if mask.ndim == 3:
    mask = mask[..., 0]
  if mask.ndim != 2:
    raise InputError(f"{name} must be (H, W) or (H, W, C), got shape {mask.shape}")
  if mask.dtype == bool:
    mask = np.where(mask, 255, 0).astype(np.uint8)
  elif mask.dtype != np.uint8:
    raise InputError(f"{name} must be uint8 (white = generate) or bool, got {mask.dtype}")
  height, width = image_hw
  if mask.shape != (height, width):
    mh, mw = mask.shape
    if abs(mw / mh - width / height) > ASPECT_TOLERANCE * (width / height):
      raise InputError(f"{name} is {mw}x{mh} but the image is {width}x{height} (width x height):"
                       " a mask must have the image's aspect ratio (it is resized only then)")
    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
  keep = masks_lib.keep_from_mask_image(mask)[..., 0] > 0.5
  if keep.all():
    raise InputError(f"{name} is empty: no white (> 127) pixel marks a region to generate")
  if not keep.any():
    raise InputError(f"{name} is full: every pixel is to be generated, nothing is kept "
                     "(BLD needs known pixels)")
  return keep


def outpaint_canvas(image, left: int, top: int, right: int, bottom: int,
                    fill: str = "edge") -> tuple[np.ndarray, np.ndarray]:
  """Grows ``image`` (H, W, 3) uint8 by the given pixels on each side.

  Returns ``(canvas, mask)``: canvas uint8 (H+top+bottom, W+left+right, 3) and mask uint8 of the
  same height/width, 255 (white = generate) on the new area, 0 on the original pixels. The new
  area is filled with ``fill``: 'edge' (nearest border pixel), 'reflect', 'mean' (the image's mean
  colour) or 'black'. The fill is only what the saved canvas shows: the model sees the hole as
  zeros (``E(x·keep)``).
  """
  image = check_image(image)
  sides = tuple(int(v) for v in (left, top, right, bottom))
  if min(sides) < 0:
    raise InputError(f"outpaint sizes must be >= 0 pixels, got LEFT,TOP,RIGHT,BOTTOM={sides}")
  if sum(sides) == 0:
    raise InputError("outpaint sizes are all 0: nothing to generate")
  left, top, right, bottom = sides
  pad = ((top, bottom), (left, right), (0, 0))
  if fill in ("edge", "reflect"):
    canvas = np.pad(image, pad, mode=fill)
  elif fill in ("mean", "black"):
    colour = image.reshape(-1, 3).mean(0).round() if fill == "mean" else np.zeros(3)
    canvas = np.pad(image, pad, mode="constant")
    canvas[:] = colour.astype(np.uint8)
    canvas[top:top + image.shape[0], left:left + image.shape[1]] = image
  else:
    raise InputError(f"outpaint fill must be one of {', '.join(OUTPAINT_FILLS)}, got {fill!r}")
  mask = np.full(canvas.shape[:2], 255, np.uint8)
  mask[top:top + image.shape[0], left:left + image.shape[1]] = 0
  return canvas, mask


# ============================================================================ the pipeline

def default_dtype() -> str:
  """'bfloat16' on GPU/TPU, 'float32' on CPU."""
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def _pad_to(array: np.ndarray, multiple: int) -> np.ndarray:
  """Reflect-pads (…, H, W, C) at the bottom/right to multiples of ``multiple``."""
  height, width = array.shape[-3:-1]
  pad_h, pad_w = -height % multiple, -width % multiple
  if not pad_h and not pad_w:
    return array
  pad = [(0, 0)] * (array.ndim - 3) + [(0, pad_h), (0, pad_w), (0, 0)]
  return np.pad(array, pad, mode="reflect" if min(height, width) > 1 else "edge")


class _Progress:
  """tqdm over images when installed, else one printed line per chunk (stderr)."""

  def __init__(self, total: int, enabled: bool):
    self.total, self.done, self.bar = total, 0, None
    self.enabled = enabled
    if enabled:
      try:
        from tqdm import tqdm  # pylint: disable=import-outside-toplevel
        self.bar = tqdm(total=total, unit="image", file=sys.stderr)
      except ImportError:
        self.bar = None

  def update(self, count: int, seconds: float) -> None:
    self.done += count
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.update(count)
      self.bar.set_postfix_str(f"{seconds / count:.2f} s/image")
    else:
      print(f"images {self.done}/{self.total} ({seconds / count:.2f} s/image)", file=sys.stderr)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


@dataclasses.dataclass
class RunStats:
  """Timings of the latest call: ``compile_s`` (0 when every shape was cached) and ``images``
  generated in ``sample_s`` seconds (device time without compilation)."""
  compile_s: float = 0.0
  sample_s: float = 0.0
  images: int = 0

  @property
  def seconds_per_image(self) -> float:
    return self.sample_s / max(self.images, 1)


@dataclasses.dataclass
class Generation:
  """What :meth:`Inpainter.generate` made; row ``r`` is input ``rows[r]`` (image-major: sample
  ``r % num_images`` of image ``r // num_images``).

  images: uint8 (N, H, W, 3) as decoded (no paste-back).
  latents: (N, Hp/f, Wp/f, 4) float32, the final blended latents (scaled; Hp, Wp: padded size).
  sources: uint8 (count, H, W, 3) the input images; keeps: bool (count, H, W), True = known.
  rows: (N,) int, the input of each row; :attr:`inputs` and :attr:`keep` are per row.
  """
  images: np.ndarray
  latents: np.ndarray
  sources: np.ndarray
  keeps: np.ndarray
  rows: np.ndarray

  @property
  def inputs(self) -> np.ndarray:
    """uint8 (N, H, W, 3): the input image of each row."""
    return self.sources[self.rows]

  @property
  def keep(self) -> np.ndarray:
    """bool (N, H, W): the known pixels of each row."""
    return self.keeps[self.rows]


def paste_known(results: np.ndarray, inputs: np.ndarray, keep: np.ndarray,
                blur: float = 0.0) -> np.ndarray:
  """The input's known pixels over the results, all uint8 (N, H, W, 3); ``keep`` bool (N, H, W).

  ``blur`` = 0: a hard paste (known pixels exact, the decoder's seam moves to the mask border).
  ``blur`` > 0: a feathered paste: the input's weight is ``keep · G_blur(keep)`` (Gaussian of
  σ = ``blur`` px over each image), so it falls from 1 deep in the known region to about 1/2 on
  its border and is 0 in the generated region: the step at the border is softened inside the
  known region, never by the original pixels under the hole.
  """
  known = np.asarray(keep, bool)[..., None]
  if blur <= 0:
    return np.where(known, inputs, results)
  soft = ndimage.gaussian_filter(known.astype(np.float32), sigma=(0, blur, blur, 0))
  weight = known * soft
  mixed = weight * inputs.astype(np.float32) + (1.0 - weight) * results.astype(np.float32)
  return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def blur_sigma(height: int, width: int) -> float:
  """σ (px) of the blurred paste-back: 1/128 of the shorter side, at least 1 (4 px at 512²,
  close to BrushNet's 21×21 ``cv2.GaussianBlur`` kernel, whose σ is 3.5 px)."""
  return max(1.0, min(height, width) / 128)


def opencv():
  """The ``cv2`` module (``opencv-python-headless``, the ``[eval]`` extra), imported on first
  use; :class:`InputError` naming the extra when it is not installed."""
  try:
    import cv2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise InputError(OPENCV_HINT) from e
  return cv2


def poisson_blend(results: np.ndarray, inputs: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """Each result's generated region blended into its input in the gradient domain (Pérez et
  al. 2003 seamless cloning, OpenCV's ``seamlessClone`` with ``NORMAL_CLONE``).

  results, inputs: uint8 (N, H, W, 3); keep: bool (N, H, W), True = known. Inside the hole the
  output keeps the result's gradients (also across the border: the result's own edges there
  stay); its values are pinned to the input's known pixels around the hole, so a colour offset
  between the decoded image and the input is spread smoothly over the hole instead of stepping
  at the border (what a hard paste-back shows). OpenCV pins the edge of the mask's bounding box:
  where the hole reaches the image edge (outpainting), the value pinned there is the result
  shifted by the mean input − result offset on the known border pixels. The input's pixels
  under the hole are never used; known pixels come out exactly as the input (as with
  :func:`paste_known`). Needs ``opencv-python-headless`` (``[eval]`` extra);
  :class:`InputError` names it when missing.
  """
  cv2 = opencv()
  known = np.asarray(keep, bool)
  out = np.asarray(results).copy()
  pad = CLONE_DILATION + 1
  pad3 = ((pad, pad), (pad, pad), (0, 0))
  ring = known & masks_lib.border_pixels(known)  # known pixels with a generated neighbour
  for i, (result, source, k) in enumerate(zip(results, inputs, known)):
    if k.all() or not k.any():
      continue  # nothing generated / nothing known: no boundary to blend against
    offset = np.mean(source[ring[i]].astype(np.float32) - result[ring[i]], axis=0)
    shifted = np.clip(np.round(result + offset), 0, 255).astype(np.uint8)
    dst = np.pad(np.where(k[..., None], source, shifted), pad3, mode="edge")
    mask = cv2.dilate(np.pad((~k).astype(np.uint8) * 255, pad), np.ones((3, 3), np.uint8),
                      iterations=CLONE_DILATION)
    left, top, width, height = cv2.boundingRect(mask)
    # seamlessClone puts the mask's bounding box at centre − size // 2: this centre keeps it
    blended = cv2.seamlessClone(np.pad(result, pad3, mode="edge"), dst, mask,
                                (left + width // 2, top + height // 2), cv2.NORMAL_CLONE)
    out[i] = np.where(k[..., None], source, blended[pad:-pad, pad:-pad])
  return out


def apply_paste_back(mode: str, results: np.ndarray, inputs: np.ndarray,
                     keep: np.ndarray) -> np.ndarray:
  """``results`` (N, H, W, 3) uint8 after the post-hoc fix ``mode`` (one of
  :data:`PASTE_BACK_MODES`) with ``inputs`` (N, H, W, 3) uint8 and ``keep`` (N, H, W) bool:
  ``hard`` / ``blurred`` (:func:`paste_known` with :func:`blur_sigma`) / ``poisson``
  (:func:`poisson_blend`)."""
  if mode not in PASTE_BACK_MODES:
    raise InputError(f"paste-back mode must be one of {', '.join(PASTE_BACK_MODES)}, "
                     f"got {mode!r}")
  results, inputs, keep = np.asarray(results), np.asarray(inputs), np.asarray(keep)
  if results.ndim != 4 or results.shape[-1] != 3 or inputs.shape != results.shape \
      or keep.shape != results.shape[:3]:
    raise InputError(f"paste-back needs results and inputs (N, H, W, 3) and keep (N, H, W) of "
                     f"one size, got {results.shape}, {inputs.shape}, {keep.shape}")
  if mode == "poisson":
    return poisson_blend(results, inputs, keep)
  blur = blur_sigma(*results.shape[1:3]) if mode == "blurred" else 0.0
  return paste_known(results, inputs, keep, blur=blur)


class Inpainter:
  """BLD inpainting/outpainting with one loaded pipeline (see the module doc for the rules).

  Build with :meth:`load`; call with one image (``__call__``) or a same-size batch (:meth:`batch`).
  ``stats`` holds the timings of the latest call.
  """

  def __init__(self, pipeline, *, keep_method: str = "nearest"):
    self.pipeline = pipeline
    self.info = dict(pipeline.info)
    unet, vae = pipeline.unet, pipeline.vae
    if unet.in_channels not in (4, 9):
      raise loading.SourceError(f"{self.info.get('source', 'model')}: a UNet with in_channels="
                                f"{unet.in_channels} is neither a 4-channel (BLD) nor a 9-channel "
                                "inpainting UNet")
    self.inpaint_channels = unet.in_channels == 9
    self.keep_method = keep_method
    self.vae_factor = int(vae.downscale)
    self.size_multiple = self.vae_factor * 2 ** (len(unet.block_out_channels) - 1)
    self.scaling_factor = build.scaling_factor(vae)
    self.shift_factor = float(getattr(vae, "shift_factor", None) or 0.0)
    self.max_length = int(pipeline.text_encoder.max_position_embeddings)
    sc = {**schedule_lib.SD15_SCHEDULER, **(pipeline.scheduler_config or {})}
    self.prediction_type = sc["prediction_type"]
    if self.prediction_type not in schedule_lib.PREDICTION_TYPES:
      raise loading.SourceError(f"{self.info.get('source', 'model')}: scheduler prediction_type "
                                f"{self.prediction_type!r} is not 'epsilon' or 'v_prediction'")
    self.sampler_options = dict(prediction_type=self.prediction_type,
                                set_alpha_to_one=bool(sc["set_alpha_to_one"]),
                                steps_offset=int(sc["steps_offset"]),
                                spacing=sc["timestep_spacing"],
                                inpaint_channels=self.inpaint_channels)
    self.alphas_cumprod = jax.device_put(schedule_lib.make_schedule(
        int(sc["num_train_timesteps"]), float(sc["beta_start"]), float(sc["beta_end"]),
        sc["beta_schedule"]).alphas_cumprod)
    params = {"unet": pipeline.unet_params, "vae": pipeline.vae_params,
              "text": pipeline.text_encoder_params}
    shapes_only = all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
    self.params = params if shapes_only else jax.device_put(params)
    self._jitted: dict[tuple, Callable] = {}
    self._compiled: dict[tuple, Callable] = {}
    self._decode: Callable | None = None
    self._step_listener: Callable[[int], None] | None = None
    self.stats = RunStats()

  @classmethod
  def load(cls, model: str, *, vae: str | None = None, step: int | None = None, ema: bool = True,
           vae_step: int | None = None, dtype: str | None = None, attention: str | None = None,
           keep_method: str = "nearest") -> "Inpainter":
    """Loads ``model`` (diffusers folder or training workdir) + the decoder of ``vae``.

    ``dtype``: compute dtype ('float32', 'bfloat16', 'float16'; None = bfloat16 on GPU/TPU,
    float32 on CPU). Raises :class:`seamless_jax.loading.SourceError` for unusable sources.
    """
    pipe = loading.load_pipeline(model, step=step, ema=ema, vae=vae, vae_step=vae_step,
                                 dtype=dtype or default_dtype(), attention=attention)
    return cls(pipe, keep_method=keep_method)

  # ------------------------------------------------------------------ public calls

  def __call__(self, image, mask, prompt: str = DEFAULT_PROMPT, negative_prompt: str = "", *,
               num_inference_steps: int = 50, guidance_scale: float = 3.0, seed: int = 0,
               num_images: int = 1, paste_back: bool | str = False,
               batch_size: int | None = None, progress: bool = False) -> list[np.ndarray]:
    """``num_images`` results (uint8 (H, W, 3), the image's size) for one image and mask."""
    return self.batch([image], [mask], [prompt], negative_prompt,
                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                      seed=seed, num_images=num_images, paste_back=paste_back,
                      batch_size=batch_size, progress=progress)

  def batch(self, images: Sequence, masks: Sequence, prompts: str | Sequence[str] = DEFAULT_PROMPT,
            negative_prompts: str | Sequence[str] = "", *, num_inference_steps: int = 50,
            guidance_scale: float = 3.0, seed: int | Sequence[int] = 0, num_images: int = 1,
            paste_back: bool | str = False, batch_size: int | None = None,
            progress: bool = False) -> list[np.ndarray]:
    """Results for a batch of same-size images, in one device call by default.

    Args:
      images: uint8 (H, W, 3) arrays, all the same size; masks: one per image (module doc).
      prompts, negative_prompts: one string for all or one per image.
      seed: one for all images or one per image (see the module doc on keys).
      num_images: samples per image; the result list is image-major
        (``[img0_s0, img0_s1, ..., img1_s0, ...]``).
      paste_back: a post-hoc fix of each result (:func:`apply_paste_back`): a mode of
        :data:`PASTE_BACK_MODES`, True (= ``hard``) or False (none).
      batch_size: most samples per device call (None = all in one call); the last call is
        padded to the same size, so one program serves every call.
      progress: a progress bar over images (stderr).
    Returns:
      ``len(images) * num_images`` uint8 (H, W, 3) arrays.
    """
    generation = self.generate(images, masks, prompts, negative_prompts,
                               num_inference_steps=num_inference_steps,
                               guidance_scale=guidance_scale, seed=seed, num_images=num_images,
                               batch_size=batch_size, progress=progress)
    results = generation.images
    if paste_back:
      results = apply_paste_back("hard" if paste_back is True else paste_back, results,
                                 generation.inputs, generation.keep)
    return list(results)

  def generate(self, images: Sequence, masks: Sequence,
               prompts: str | Sequence[str] = DEFAULT_PROMPT,
               negative_prompts: str | Sequence[str] = "", *, num_inference_steps: int = 50,
               guidance_scale: float = 3.0, seed: int | Sequence[int] = 0, num_images: int = 1,
               batch_size: int | None = None, progress: bool = False,
               on_step: Callable[[int, int], None] | None = None) -> Generation:
    """:meth:`batch` without paste-back, returning the latents and inputs too.

    ``on_step(done, total)`` hears each DDIM step as the device runs it (``total`` = steps x
    device calls; a program with the report compiled in, once per shape). The result's
    ``latents`` can be rendered by another decoder with :meth:`decode`.
    """
    count = len(images)
    if count == 0 or len(masks) != count:
      raise InputError(f"batch needs as many masks as images (>= 1), got {count} images and "
                       f"{len(masks)} masks")
    if int(num_images) < 1 or int(num_inference_steps) < 1:
      raise InputError(f"num_images and num_inference_steps must be >= 1, got {num_images}, "
                       f"{num_inference_steps}")
    images = [check_image(im, f"image {i}" if count > 1 else "image")
              for i, im in enumerate(images)]
    if any(im.shape != images[0].shape for im in images):
      raise InputError(f"batch images must share one size, got "
                       f"{sorted({im.shape[:2] for im in images})}")
    height, width = images[0].shape[:2]
    keeps = np.stack([mask_to_keep(m, (height, width), f"mask {i}" if count > 1 else "mask")
                      for i, m in enumerate(masks)])
    prompts = _per_image(prompts, count, "prompts")
    negative_prompts = _per_image(negative_prompts, count, "negative_prompts")
    seeds = _per_image(seed, count, "seed")

    n = int(num_images)
    image_pad = _pad_to(transforms.image_to_float(np.stack(images)), self.size_multiple)
    keep_pad = _pad_to(keeps[..., None].astype(np.float32), self.size_multiple)
    self._check_latent_holes(keep_pad)
    rows = np.repeat(np.arange(count), n)
    inputs = {"image": image_pad[rows], "keep": keep_pad[rows],
              "cond_ids": self._tokenize([prompts[i] for i in rows]),
              "uncond_ids": self._tokenize([negative_prompts[i] for i in rows]),
              "keys": np.concatenate([bld.per_image_keys(s, n) for s in seeds])}
    decoded, latents = self._generate(inputs, int(num_inference_steps), float(guidance_scale),
                                      batch_size, progress, on_step)
    return Generation(transforms.image_to_uint8(decoded[:, :height, :width]), latents,
                      np.stack(images), keeps, rows)

  def decode(self, generation: Generation, vae_params: dict | None = None,
             batch_size: int | None = None) -> np.ndarray:
    """``generation.latents`` rendered by the decoder of ``vae_params`` (a full VAE param tree
    such as :func:`seamless_jax.loading.with_decoder` gives; None = this pipeline's) -> uint8
    (N, H, W, 3) at the generation's size; ``batch_size``: most latents per device call (None =
    all; the last call is padded, so one compiled program per latent shape)."""
    vae = self.pipeline.vae
    if self._decode is None:
      self._decode = jax.jit(functools.partial(bld.decode, vae,
                                               scaling_factor=self.scaling_factor,
                                               shift_factor=self.shift_factor))
    params = self.params["vae"] if vae_params is None else vae_params
    latents = generation.latents
    chunk = len(latents) if not batch_size else max(1, min(int(batch_size), len(latents)))
    decoded = np.concatenate([
        np.asarray(jax.device_get(self._decode(params, _pad_rows(latents[start:start + chunk],
                                                                 chunk))))[:len(latents) - start]
        for start in range(0, len(latents), chunk)])
    height, width = generation.images.shape[1:3]
    return transforms.image_to_uint8(decoded[:, :height, :width])

  # ------------------------------------------------------------------ internals

  def _tokenize(self, texts: list[str]) -> np.ndarray:
    return np.asarray(self.pipeline.tokenizer(texts, max_length=self.max_length), np.int32)

  def _check_latent_holes(self, keep_pad: np.ndarray) -> None:
    latent_hw = (keep_pad.shape[1] // self.vae_factor, keep_pad.shape[2] // self.vae_factor)
    keep_latent = np.asarray(blending.latent_keep(jnp.asarray(keep_pad), latent_hw,
                                                  self.keep_method))
    for i, k in enumerate(keep_latent):
      if k.min() >= 1.0:
        raise InputError(f"mask {i}: the region to generate is too thin for the latent grid (one "
                         f"latent cell = {self.vae_factor}x{self.vae_factor} px); enlarge it")

  def _generate(self, inputs: dict, steps: int, guidance: float, batch_size: int | None,
                progress: bool, on_step: Callable[[int, int], None] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Runs the compiled program over chunks of ``batch_size`` rows; returns the decoded images
    (N, Hp, Wp, 3) float32 and the final latents (N, Hp/f, Wp/f, 4) float32."""
    total = inputs["image"].shape[0]
    chunk = total if not batch_size else max(1, min(int(batch_size), total))
    self.stats = RunStats()
    parts = [{k: _pad_rows(v[start:start + chunk], chunk) for k, v in inputs.items()}
             for start in range(0, total, chunk)]
    compiled = self._program(parts[0], steps, on_step is not None)  # every chunk has this shape
    bar = _Progress(total, progress)
    outputs, latents = [], []
    try:
      for index, (start, part) in enumerate(zip(range(0, total, chunk), parts)):
        if on_step is not None:
          self._step_listener = functools.partial(_report_step, on_step, index * steps,
                                                  len(parts) * steps)
        t0 = time.perf_counter()
        out, z = compiled(self.params, part["image"], part["keep"], part["cond_ids"],
                          part["uncond_ids"], part["keys"], self.alphas_cumprod,
                          np.float32(guidance))
        rows = min(chunk, total - start)
        out, z = (np.asarray(x)[:rows] for x in jax.device_get((out, z)))
        seconds = time.perf_counter() - t0
        self.stats.sample_s += seconds
        self.stats.images += len(out)
        outputs.append(out)
        latents.append(z)
        bar.update(len(out), seconds)
    finally:
      self._step_listener = None
      bar.close()
    return np.concatenate(outputs), np.concatenate(latents)

  def sample_program(self, steps: int, report_steps: bool = False) -> tuple[Callable, Callable]:
    """``(jitted, arguments)``: the sampler for ``steps`` DDIM steps (returning the decoded
    images and the final latents; ``report_steps``: with the step report of
    :meth:`generate`'s ``on_step`` compiled in), and ``arguments(part)`` -> its arguments for a
    chunk ``part`` (arrays or ``jax.ShapeDtypeStruct``s: :mod:`seamless_jax.aot` compiles it
    from shapes)."""
    if (steps, report_steps) not in self._jitted:
      self._jitted[steps, report_steps] = jax.jit(functools.partial(
          self._sample, num_inference_steps=steps,
          step_callback=self._step_reported if report_steps else None))

    def arguments(part: dict) -> tuple:
      return (self.params, part["image"], part["keep"], part["cond_ids"], part["uncond_ids"],
              part["keys"], self.alphas_cumprod, np.float32(0))
    return self._jitted[steps, report_steps], arguments

  def _program(self, part: dict, steps: int, report_steps: bool = False) -> Callable:
    """The compiled sampler for these shapes (compiled once per shape, step count and
    whether it reports steps)."""
    signature = (steps, report_steps) + tuple((k, v.shape, str(v.dtype))
                                              for k, v in sorted(part.items()))
    if signature not in self._compiled:
      jitted, arguments = self.sample_program(steps, report_steps)
      t0 = time.perf_counter()
      self._compiled[signature] = jitted.lower(*arguments(part)).compile()
      self.stats.compile_s += time.perf_counter() - t0
    return self._compiled[signature]

  @property
  def num_compiled(self) -> int:
    """How many programs were compiled so far (one per shape and step count)."""
    return len(self._compiled)

  def _step_reported(self, index) -> None:
    """The host end of the compiled step report: passes it to the current call's listener."""
    listener = self._step_listener
    if listener is not None:
      listener(int(index))

  def _sample(self, params, image, keep, cond_ids, uncond_ids, keys, alphas_cumprod,
              guidance_scale, *, num_inference_steps: int, step_callback=None):
    """image (N, H, W, 3) [-1, 1]; keep (N, H, W, 1); ids (N, L); keys (N, 2) ->
    (images (N, H, W, 3), latents (N, H/f, W/f, 4))."""
    pipe = self.pipeline
    options = dict(self.sampler_options, step_callback=step_callback)
    z = bld.sample_latents(pipe.unet, pipe.vae, pipe.text_encoder, params, image, keep,
                           cond_ids, uncond_ids, keys, alphas_cumprod, guidance_scale,
                           num_inference_steps=num_inference_steps,
                           scaling_factor=self.scaling_factor, shift_factor=self.shift_factor,
                           keep_method=self.keep_method, sampler_options=options)
    images = bld.decode(pipe.vae, params["vae"], z, scaling_factor=self.scaling_factor,
                        shift_factor=self.shift_factor)
    return images, z


def _report_step(on_step: Callable[[int, int], None], offset: int, total: int,
                 index: int) -> None:
  """``on_step(offset + index + 1, total)``: a chunk's step index as steps of the whole call."""
  on_step(offset + index + 1, total)


def _per_image(value, count: int, name: str) -> list:
  if isinstance(value, (str, int, np.integer)):
    return [value] * count
  value = list(value)
  if len(value) != count:
    raise InputError(f"{name}: {len(value)} values for {count} images")
  return value


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  """Repeats the last row so that ``array`` has ``rows`` rows (one program for every chunk)."""
  missing = rows - array.shape[0]
  if missing <= 0:
    return array
  return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])


# ============================================================================ CLI

def output_paths(out: str, image_path: str | None, count: int) -> list[str]:
  """Where ``count`` results go.

  ``out`` with an image suffix (``.png``, ``.jpg``...) is a file: one result is written there,
  several as ``<stem>_<i><suffix>``. Anything else is a folder (created): results are
  ``<folder>/<image stem>_<i>.png``.
  """
  stem, suffix = os.path.splitext(out)
  if suffix.lower() in IMAGE_SUFFIXES:
    return [out] if count == 1 else [f"{stem}_{i}{suffix}" for i in range(count)]
  name = os.path.splitext(os.path.basename(image_path or "result"))[0]
  return [os.path.join(out, f"{name}_{i}.png") for i in range(count)]


def parse_sides(text: str) -> tuple[int, int, int, int]:
  """'LEFT,TOP,RIGHT,BOTTOM' -> four ints."""
  try:
    sides = tuple(int(v) for v in text.split(","))
  except ValueError:
    sides = ()
  if len(sides) != 4:
    raise InputError(f"--outpaint needs LEFT,TOP,RIGHT,BOTTOM pixels (4 integers), got {text!r}")
  return sides


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
  """The model options of this command and of the web app (a group 'model'); read them back
  with :func:`model_options`."""
  model = parser.add_argument_group("model")
  model.add_argument("--model", required=True,
                     help="diffusers SD-1.5 folder (or an export) or a training workdir "
                          "(two_step/standard)")
  model.add_argument("--step", type=int, default=None,
                     help="workdir checkpoint step (default: the latest)")
  model.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                     help="EMA weights of a workdir (default) or the raw ones (--no-ema)")
  model.add_argument("--vae", default=None,
                     help="VAE folder or vae_finetune workdir: its decoder replaces the model's "
                          "(the encoder stays the model's; the Eq. 6 decoder)")
  model.add_argument("--vae-step", type=int, default=None,
                     help="step of a --vae workdir (default: the latest)")
  model.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                     help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
  model.add_argument("--attention", default=None, choices=("xla", "cudnn"),
                     help="attention kernel (default: chosen by JAX)")


def model_options(args) -> dict:
  """:meth:`Inpainter.load`'s keyword arguments from :func:`add_model_arguments`' options."""
  return dict(vae=args.vae, step=args.step, ema=args.ema, vae_step=args.vae_step,
              dtype=args.dtype, attention=args.attention)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m seamless_jax.inpaint",
      description="Inpaint or outpaint an image with Blended Latent Diffusion (DDIM, CFG). The "
                  "paper's full system: --model a two_step workdir (or its exported folder) and "
                  "--vae a vae_finetune workdir (the Eq. 6 decoder).",
      epilog="Mask: white (> 127) = generate; a mask of another size but the same aspect ratio "
             "is resized (nearest). Sizes that are not a multiple of the model's factor (64 px "
             "for SD-1.5) are reflect-padded and cropped back. Errors print one line and exit 1.")
  add_model_arguments(parser)
  io = parser.add_argument_group("input / output")
  io.add_argument("--image", required=True, help="input image file (RGB)")
  io.add_argument("--mask", default=None, help="mask file, white = generate (or use --outpaint)")
  io.add_argument("--outpaint", default=None, metavar="LEFT,TOP,RIGHT,BOTTOM",
                  help="grow the canvas by these pixels and generate the new area")
  io.add_argument("--outpaint-fill", default="edge", choices=OUTPAINT_FILLS,
                  help="what the saved canvas shows in the new area before generation "
                       "(the model never sees it; default: edge)")
  io.add_argument("--out", default="outputs",
                  help="output file (.png/.jpg...: several results become <stem>_<i>.png) or "
                       "folder (results <image stem>_<i>.png); default: outputs/")
  io.add_argument("--paste-back", nargs="?", const="hard", default=None,
                  choices=PASTE_BACK_MODES,
                  help="a post-hoc seam fix (the Eq. 6 decoder is meant to make these "
                       "unnecessary): hard (the default of a bare --paste-back) copies the "
                       "known pixels of the input over the result; blurred feathers that "
                       "paste (Gaussian, sigma = shorter side / 128); poisson blends the "
                       "generated region in (OpenCV seamlessClone, the [eval] extra)")
  sampling = parser.add_argument_group("sampling")
  sampling.add_argument("--prompt", default=DEFAULT_PROMPT, help="text prompt (default: scenery)")
  sampling.add_argument("--negative-prompt", default="",
                        help="negative prompt, the unconditional text of CFG (default: empty)")
  sampling.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
  sampling.add_argument("--guidance", type=float, default=3.0, help="CFG scale (default 3)")
  sampling.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  sampling.add_argument("--num-images", type=int, default=1,
                        help="samples to generate, each with its own noise (default 1)")
  sampling.add_argument("--batch-size", type=int, default=None,
                        help="most samples per device call (default: all in one call)")
  parser.add_argument("--verbose", action="store_true",
                      help="show library log messages (checkpoint reading etc.)")
  return parser


def prepare_inputs(args) -> tuple[np.ndarray, np.ndarray]:
  """(image, mask) uint8 from the CLI options; validated before any model is loaded."""
  image = read_image(args.image)
  if args.outpaint and args.mask:
    raise InputError("give --mask or --outpaint, not both")
  if args.outpaint:
    image, mask = outpaint_canvas(image, *parse_sides(args.outpaint), fill=args.outpaint_fill)
    name = "--outpaint mask"
  elif args.mask:
    mask, name = read_mask(args.mask), args.mask
  else:
    raise InputError("give --mask (white = generate) or --outpaint LEFT,TOP,RIGHT,BOTTOM")
  mask_to_keep(mask, image.shape[:2], name)  # the one-line errors come before loading weights
  return image, mask


def run(args) -> list[str]:
  """The CLI's work; returns the written paths. Raises InputError / SourceError."""
  if args.steps < 1 or args.num_images < 1:
    raise InputError(f"--steps and --num-images must be >= 1, got {args.steps}, "
                     f"{args.num_images}")
  image, mask = prepare_inputs(args)
  if args.paste_back == "poisson":
    opencv()  # a missing extra is said before any weights load
  paths = output_paths(args.out, args.image, args.num_images)
  t0 = time.perf_counter()
  pipe = Inpainter.load(args.model, **model_options(args))
  print(f"loaded {describe(pipe.info)} in {time.perf_counter() - t0:.1f}s "
        f"({pipe.prediction_type}, {'9-channel' if pipe.inpaint_channels else 'BLD'} UNet)",
        file=sys.stderr)
  results = pipe(image, mask, args.prompt, args.negative_prompt, num_inference_steps=args.steps,
                 guidance_scale=args.guidance, seed=args.seed, num_images=args.num_images,
                 paste_back=args.paste_back, batch_size=args.batch_size, progress=True)
  stats = pipe.stats
  print(f"compiled in {stats.compile_s:.1f}s; {stats.images} image(s) of {image.shape[1]}x"
        f"{image.shape[0]} in {stats.sample_s:.2f}s ({stats.seconds_per_image:.2f} s/image)",
        file=sys.stderr)
  for path, result in zip(paths, results):
    folder = os.path.dirname(path)
    try:
      if folder:
        os.makedirs(folder, exist_ok=True)
      Image.fromarray(result).save(path)
    except (OSError, ValueError) as e:
      raise InputError(f"cannot write {path}: {e}") from e
    print(path)
  return paths


def describe(info: dict) -> str:
  """What ``Inpainter.info`` says was loaded, in a few words (source, step, params, decoder)."""
  text = info.get("source", "?")
  if info.get("kind") == "workdir":
    text += f" (step {info['step']}, {'EMA' if info['ema'] else 'raw'} params)"
  if info.get("vae"):
    text += f" + decoder of {info['vae']}"
  return text


@contextlib.contextmanager
def user_command(verbose: bool = False) -> Iterator[None]:
  """The console of a command that loads a model for a user (this one, the web app): library
  log lines hidden unless ``verbose``, JAX backends started without the plugins' chatter, and
  :class:`InputError` / ``SourceError`` turned into a one-line ``error: ...`` exit (status 1).
  Leaves the absl verbosity as it was (commands also run in-process: tests, notebooks)."""
  verbosity = absl_logging.get_verbosity()
  if not verbose:  # orbax's notes while reading checkpoints are not the user's business
    absl_logging.set_verbosity(absl_logging.ERROR)
  hardware.start_backends()  # without the plugins' start-up chatter on a CPU machine
  try:
    yield
  except (InputError, loading.SourceError) as e:
    raise SystemExit(f"error: {e}") from None
  finally:
    absl_logging.set_verbosity(verbosity)


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  with user_command(args.verbose):
    run(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
