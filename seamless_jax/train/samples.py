"""In-training samples: a hook the loop calls every ``sample_every`` steps (and at the end).

:class:`SampleHook` samples a fixed batch with the objective's sample function (BLD for the UNet
objectives, through :func:`seamless_jax.diffusion.bld.inpaint` exactly as ``Inpainter`` does;
the Eq. 6 reconstruction for vae_finetune) and writes:

* ``workdir/samples/step_<n>.png`` and the TensorBoard image ``samples/grid``: one row per
  example, image | masked image | result | result with the mask border drawn in red, small
  tiles enlarged (nearest) to 128 px and the columns labelled (:func:`sample_grid`);
* seam quality (:mod:`seamless_jax.metrics`) to ``metrics.jsonl`` and TensorBoard:
  ``seam/cd_<kind>`` (the paper's Color Distance on the mask border, 0–255 RGB) and
  ``seam/excess_cd_<kind>`` (CD of the result − CD of the real image on the same border;
  0 = as smooth as the photo), ``kind`` = inpaint / outpaint.

The batch: ``config.sample.num_images`` images of the training source (centre crops, no flip,
its own seed; the data has no held-out split) with fixed masks drawn once: the first half
(rounded up) inpaint holes and the rest outpaint borders (``data/masks.py``, the training
mixture's settings), so ``num_images >= 2`` covers both kinds. Image ``i`` is sampled with the
seed ``config.seed + 2 + i`` exactly as ``Inpainter.batch(..., seed=sample_seeds(config))``
samples it (tests/test_train_samples.py checks the logged CD against ``Inpainter``'s).
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from seamless_jax import console
from seamless_jax import metrics as metrics_lib
from seamless_jax import pictures
from seamless_jax.data import masks as masks_lib
from seamless_jax.data import pipeline
from seamless_jax.data import transforms
from seamless_jax.diffusion import bld
from seamless_jax.runtime import sharding as shd
from seamless_jax.train import metric_writer as log_lib
from seamless_jax.train import steps as steps_lib

BORDER_COLOUR = (1.0, -1.0, -1.0)  # red, in [-1, 1]
GRID_TILE = 128  # px: sample tiles smaller than this are enlarged (nearest) in the grid
GRID_COLUMNS = ("image", "masked", "result", "border")


def tokenize(tokenizer, texts: list[str], max_length: int) -> np.ndarray:
  return np.asarray(tokenizer(texts, max_length=max_length), np.int32)


def sample_seeds(config) -> list[int]:
  """The seed of each sample image: ``config.seed + 2 + i``."""
  return [int(config.seed) + 2 + i for i in range(int(config.sample.num_images))]


def sample_batch(config) -> tuple[dict, np.ndarray]:
  """``({'image', 'keep', 'input_ids'}, kinds)``: the fixed sample batch (module doc) as host
  arrays, ``image`` (N, R, R, 3) in [−1, 1], ``keep`` (N, R, R, 1) float32, ``kinds`` (N,)."""
  n = int(config.sample.num_images)
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  data_config.worker_count = 0  # one batch: no worker processes
  data_config.center_crop, data_config.random_flip = True, False
  data = pipeline.make_dataset(data_config, batch_size=n, seed=int(config.seed) + 1)
  batch = next(iter(data))
  image = transforms.image_to_float(np.asarray(batch["image"]))
  keep, kinds = seam_masks(image, masks_lib.MaskMixture.from_config(config.data.masks),
                           seed=int(config.seed) + 3)
  return {"image": image, "keep": keep, "input_ids": np.asarray(batch["input_ids"])}, kinds


def seam_masks(images: np.ndarray, mixture, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """keep (N, H, W, 1) float32 and kinds (N,) str: inpaint for the first ceil(N/2) images
  (holes kept off salient pixels as in training), outpaint for the rest."""
  rng = np.random.default_rng(seed)
  n, height, width = images.shape[:3]
  keeps, kinds = [], []
  for i, image in enumerate(images):
    hole = None
    if i < (n + 1) // 2:
      salient = (masks_lib.salient_pixels(masks_lib.spectral_residual_saliency(image))
                 if mixture.use_builtin_saliency else None)
      hole = masks_lib.inpaint_hole(rng, height, width, salient=salient,
                                    area_range=mixture.area_range,
                                    margin=mixture.saliency_margin,
                                    shapes=mixture.inpaint_shapes)
      if hole is None:  # everything salient: a hole anywhere
        hole = masks_lib.inpaint_hole(rng, height, width, area_range=mixture.area_range,
                                      shapes=mixture.inpaint_shapes)
    kinds.append(masks_lib.INPAINT if hole is not None else masks_lib.OUTPAINT)
    if hole is None:
      hole = masks_lib.outpaint_hole(rng, height, width, area_range=mixture.area_range,
                                     sides=mixture.outpaint_sides)
    keeps.append((~hole).astype(np.float32)[..., None])
  return np.stack(keeps), np.asarray(kinds)


def draw_borders(images: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """images (N, H, W, 3) in [-1, 1] with the pixels on either side of the keep border red."""
  border = masks_lib.border_pixels(keep[..., 0] > 0.5)
  return np.where(border[..., None], np.asarray(BORDER_COLOUR, np.float32), images)


def sample_grid(image: np.ndarray, keep: np.ndarray, result: np.ndarray) -> np.ndarray:
  """One row per example: image | masked image (hole grey) | result | result with the keep
  border red (:func:`draw_borders`), each tile enlarged (nearest) to at least
  :data:`GRID_TILE` px, the columns labelled. image, result (N, H, W, 3) in [−1, 1]; keep
  (N, H, W, 1). Returns uint8 (LABEL_HEIGHT + N·h, 4·w, 3)."""
  columns = (image, image * keep, result, draw_borders(result, keep))
  tiles = [[pictures.upscale_nearest(tile, GRID_TILE) for tile in transforms.image_to_uint8(c)]
           for c in columns]
  rows = [np.concatenate(row, axis=1) for row in zip(*tiles)]
  return pictures.label_columns(np.concatenate(rows, axis=0), GRID_COLUMNS)


def save_sample_grid(workdir: str, step: int, image, keep, result) -> str:
  """Writes :func:`sample_grid` to ``workdir/samples/step_<step>.png``; returns its path."""
  folder = os.path.join(workdir, "samples")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"step_{int(step):08d}.png")
  Image.fromarray(sample_grid(np.asarray(image), np.asarray(keep), np.asarray(result))).save(path)
  return path


def seam_scalars(result: np.ndarray, keep: np.ndarray, kinds: np.ndarray,
                 cd_real: np.ndarray) -> dict[str, float]:
  """``seam/cd_<kind>`` and ``seam/excess_cd_<kind>`` of a sampled batch (N, H, W, 3);
  ``cd_real`` (N,): the real images' own CD on the same borders."""
  cd = metrics_lib.color_distance_batch(np.clip(result, -1.0, 1.0), keep)
  scalars = {}
  for kind in (masks_lib.INPAINT, masks_lib.OUTPAINT):
    rows = kinds == kind
    if rows.any() and np.isfinite(cd[rows]).any():
      scalars[f"seam/cd_{kind}"] = float(np.nanmean(cd[rows]))
      scalars[f"seam/excess_cd_{kind}"] = float(np.nanmean(cd[rows] - cd_real[rows]))
  return scalars


class SampleHook:
  """``hook(params, frozen, step)``: samples the fixed batch and writes grid + seam scalars."""

  def __init__(self, trainer, workdir: str, writer: log_lib.MetricWriter | None = None):
    config = trainer.config
    self.workdir, self.writer = workdir, writer
    self.every, self.total = int(config.sample_every), int(config.total_steps)
    self.batch_host, self.kinds = sample_batch(config)
    n, length = len(self.kinds), int(config.data.max_length)
    cond = (tokenize(trainer.tokenizer, [config.sample.prompt] * n, length)
            if config.sample.prompt else self.batch_host["input_ids"])
    uncond = tokenize(trainer.tokenizer, [""] * n, length)
    put = lambda x: shd.put_replicated(x, trainer.mesh)
    self.batch = jax.tree.map(put, {k: self.batch_host[k] for k in ("image", "keep")})
    self.cond, self.uncond = put(cond), put(uncond)
    self.keys = put(np.concatenate([bld.per_image_keys(s, 1) for s in sample_seeds(config)]))
    self.fn = steps_lib.make_sample_fn(config, trainer.models, trainer.alphas_cumprod,
                                       trainer.mesh)
    self.cd_real = metrics_lib.color_distance_batch(self.batch_host["image"],
                                                    self.batch_host["keep"])

  def due(self, step: int) -> bool:
    return self.every > 0 and (step % self.every == 0 or step == self.total)

  def sample(self, params, frozen) -> np.ndarray:
    """The results (N, R, R, 3) in [−1, 1] for ``params`` (host numpy, every process)."""
    result = self.fn(params, frozen, self.batch, self.cond, self.uncond, self.keys)
    return shd.to_host(result)

  def __call__(self, params, frozen, step: int) -> str:
    with console.phase(f"sampling {len(self.kinds)} images for the grid (the first time "
                       "compiles the sampler)", logging.info):
      result = self.sample(params, frozen)
    if jax.process_index() != 0:
      return ""
    image, keep = self.batch_host["image"], self.batch_host["keep"]
    path = save_sample_grid(self.workdir, step, image, keep, result)
    scalars = seam_scalars(result, keep, self.kinds, self.cd_real)
    logging.info("samples: wrote %s; %s", path,
                 " ".join(f"{k} {v:.2f}" for k, v in scalars.items()))
    if self.writer is not None:
      self.writer.write_image("samples/grid", sample_grid(image, keep, result), step)
      if scalars:
        self.writer.write(step, scalars, progress=False)  # logged above with the grid
    return path
