"""Training-time samples (``train/samples.py``): fixed inpaint + outpaint masks, mask borders on
the grid, the seam quality (CD, excess CD) in ``metrics.jsonl`` and TensorBoard, and that it is
the seam quality ``Inpainter`` gives for the same model, inputs and seeds."""

import glob
import json
import os
import struct

import numpy as np
from PIL import Image

from seamless_jax.data import masks as masks_lib
from seamless_jax import metrics
from seamless_jax import inpaint
from seamless_jax import pictures
from seamless_jax import loading
from seamless_jax.data import transforms
from seamless_jax.train import samples

SEAM_KEYS = ("seam/cd_inpaint", "seam/excess_cd_inpaint", "seam/cd_outpaint",
             "seam/excess_cd_outpaint")


def _tensorboard_events(folder: str):
  """Every Event proto in the folder's event files (TFRecord framing: len, crc, data, crc)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  events = []
  for path in glob.glob(os.path.join(folder, "events*")):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + length])
      events.append(event)
      pos += 12 + length + 4
  return events


def test_seam_masks_cover_both_kinds_and_borders_are_drawn_on_both_sides():
  images = np.zeros((3, 32, 32, 3), np.float32)
  keep, kinds = samples.seam_masks(images, masks_lib.MaskMixture(), seed=0)
  assert keep.shape == (3, 32, 32, 1) and kinds.tolist() == ["inpaint", "inpaint", "outpaint"]
  assert all(0 < k.mean() < 1 for k in keep)
  again, _ = samples.seam_masks(images, masks_lib.MaskMixture(), seed=0)
  np.testing.assert_array_equal(keep, again)  # fixed for the whole run

  half = np.zeros((1, 4, 4, 1), np.float32)
  half[:, :, :2] = 1.0  # left half known
  drawn = samples.draw_borders(np.zeros((1, 4, 4, 3), np.float32), half)
  red = np.all(drawn == np.asarray(samples.BORDER_COLOUR), axis=-1)[0]
  np.testing.assert_array_equal(red, np.tile([False, True, True, False], (4, 1)))


def test_seam_scalars_are_zero_excess_for_the_real_image():
  rng = np.random.default_rng(0)
  image = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  keep, kinds = samples.seam_masks(image, masks_lib.MaskMixture(), seed=1)
  cd_real = metrics.color_distance_batch(image, keep)
  scalars = samples.seam_scalars(image, keep, kinds, cd_real)
  assert sorted(scalars) == sorted(SEAM_KEYS)
  assert scalars["seam/excess_cd_inpaint"] == 0 and scalars["seam/excess_cd_outpaint"] == 0
  assert scalars["seam/cd_inpaint"] == metrics.color_distance_batch(image[:1], keep[:1])[0]
  flat = np.zeros_like(image)  # a flat result: its CD is 0, the excess is minus the real CD
  flat_scalars = samples.seam_scalars(flat, keep, kinds, cd_real)
  assert np.isclose(flat_scalars["seam/excess_cd_outpaint"], -cd_real[1])


def _logged_seam(workdir: str) -> dict:
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  seam = [r for r in rows if "seam/cd_inpaint" in r]
  assert len(seam) == 1 and seam[0]["step"] == 2, seam
  return seam[0]


def test_tiny_run_logs_seam_quality_and_the_grid(tiny_workdirs):
  """The session's two_step run samples 2 images at its last step (tests/conftest.py)."""
  workdir = tiny_workdirs["two_step"]
  seam = _logged_seam(workdir)
  assert all(np.isfinite(seam[k]) for k in SEAM_KEYS), seam
  assert seam["seam/cd_inpaint"] > 0 and seam["seam/cd_outpaint"] > 0
  grid = np.asarray(Image.open(os.path.join(workdir, "samples", "step_00000002.png")))
  # image | masked | result | result + border: 32-px tiles enlarged to 128, a label strip on top
  assert grid.shape == (pictures.LABEL_HEIGHT + 2 * 128, 4 * 128, 3)
  assert np.any(np.all(grid[:, 3 * 128:] == [255, 0, 0], axis=-1))  # the border is drawn
  events = _tensorboard_events(os.path.join(workdir, "tensorboard"))
  tags = {v.tag for e in events for v in e.summary.value}
  assert "samples/grid" in tags and "train/seam/cd_outpaint" in tags


def test_logged_seam_cd_is_what_inpainter_gives(tiny_workdirs):
  """The logged seam CD of the run's sample batch is Inpainter's on the same photos, masks,
  prompt and seeds (image i: seed + 2 + i), with the same EMA weights: one BLD front end."""
  workdir = tiny_workdirs["two_step"]
  config = loading.restore_workdir(workdir).config
  batch, kinds = samples.sample_batch(config)
  inpainter = inpaint.Inpainter.load(workdir, dtype="float32")
  images = transforms.image_to_uint8(batch["image"])
  holes = [masks_lib.mask_image_from_keep(k[..., 0] > 0.5) for k in batch["keep"]]
  results = inpainter.batch(list(images), holes, config.sample.prompt,
                            num_inference_steps=int(config.sample.num_inference_steps),
                            guidance_scale=float(config.sample.guidance_scale),
                            seed=samples.sample_seeds(config))
  result = transforms.image_to_float(np.stack(results))
  cd_real = metrics.color_distance_batch(batch["image"], batch["keep"])
  ours = samples.seam_scalars(result, batch["keep"], kinds, cd_real)
  logged = _logged_seam(workdir)
  for key in SEAM_KEYS:  # Inpainter returns uint8: CD within the 8-bit rounding
    assert abs(ours[key] - logged[key]) < 0.2, (key, ours[key], logged[key])
