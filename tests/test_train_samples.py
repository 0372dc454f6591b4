"""Training-time samples (train/loop.py ``Sampler``): fixed inpaint + outpaint masks, mask borders
on the grid, and the seam quality (CD, excess CD) in ``metrics.jsonl`` and TensorBoard."""

import glob
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

from seamless_jax.data import masks as masks_lib
from seamless_jax import metrics
from seamless_jax.train import loop
import tiny as testing

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
  keep, kinds = loop.Sampler.seam_masks(images, masks_lib.MaskMixture(), seed=0)
  assert keep.shape == (3, 32, 32, 1) and kinds.tolist() == ["inpaint", "inpaint", "outpaint"]
  assert all(0 < k.mean() < 1 for k in keep)
  again, _ = loop.Sampler.seam_masks(images, masks_lib.MaskMixture(), seed=0)
  np.testing.assert_array_equal(keep, again)  # fixed for the whole run

  half = np.zeros((1, 4, 4, 1), np.float32)
  half[:, :, :2] = 1.0  # left half known
  drawn = loop.Sampler.draw_borders(np.zeros((1, 4, 4, 3), np.float32), half)
  red = np.all(drawn == np.asarray(loop.Sampler.BORDER_COLOUR), axis=-1)[0]
  np.testing.assert_array_equal(red, np.tile([False, True, True, False], (4, 1)))


def test_seam_scalars_are_zero_excess_for_the_real_image():
  sampler = loop.Sampler.__new__(loop.Sampler)
  rng = np.random.default_rng(0)
  image = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  keep, sampler.kinds = loop.Sampler.seam_masks(image, masks_lib.MaskMixture(), seed=1)
  sampler.batch_host = {"image": image, "keep": keep}
  sampler.cd_real = metrics.color_distance_batch(image, keep)
  scalars = sampler.seam_scalars(image)
  assert sorted(scalars) == sorted(SEAM_KEYS)
  assert scalars["seam/excess_cd_inpaint"] == 0 and scalars["seam/excess_cd_outpaint"] == 0
  assert scalars["seam/cd_inpaint"] == metrics.color_distance_batch(image[:1], keep[:1])[0]
  flat = np.zeros_like(image)  # a flat result: its CD is 0, the excess is minus the real CD
  assert np.isclose(sampler.seam_scalars(flat)["seam/excess_cd_outpaint"], -sampler.cd_real[1])


@pytest.mark.slow
def test_tiny_run_logs_seam_quality_and_the_grid(tiny_data, tmp_path):
  config = testing.tiny_config("two_step", tiny_data, total_steps=2, sample_every=2,
                               checkpoint_every=0, log_every=1)
  config.sample.num_images = 2
  config.sample.num_inference_steps = 2
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  seam = [r for r in rows if "seam/cd_inpaint" in r]
  assert len(seam) == 1 and seam[0]["step"] == 2
  assert all(np.isfinite(seam[0][k]) for k in SEAM_KEYS), seam
  assert seam[0]["seam/cd_inpaint"] > 0 and seam[0]["seam/cd_outpaint"] > 0
  grid = np.asarray(Image.open(os.path.join(workdir, "samples", "step_00000002.png")))
  assert grid.shape == (2 * 32, 4 * 32, 3)  # image | masked | result | result + border
  assert np.any(np.all(grid[:, 3 * 32:] == [255, 0, 0], axis=-1))  # the border is drawn
  events = _tensorboard_events(os.path.join(workdir, "tensorboard"))
  tags = {v.tag for e in events for v in e.summary.value}
  assert "samples/grid" in tags and "train/seam/cd_outpaint" in tags
