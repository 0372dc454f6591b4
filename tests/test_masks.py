"""The paper's masks: inpaint holes avoid salient pixels, outpaint keeps the centre, hulls."""

import dataclasses

import numpy as np
import pytest
from scipy import spatial

from seamless_jax.data import masks as M


def _salient_disk(h=64, w=64, cy=30, cx=34, r=14):
  yy, xx = np.mgrid[:h, :w]
  return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.mark.parametrize("seed", range(8))
def test_inpaint_hole_never_touches_salient_pixels(seed):
  salient = _salient_disk()
  hole = M.inpaint_hole(np.random.default_rng(seed), 64, 64, salient=salient,
                        area_range=(0.2, 0.5), margin=3)
  assert hole is not None and hole.sum() > 0.05 * hole.size
  assert not (hole & M.dilate(salient, 3)).any()


def test_sample_keep_with_saliency_map_and_builtin():
  rng = np.random.default_rng(0)
  image = np.zeros((64, 64, 3), np.float32)
  saliency = _salient_disk().astype(np.float32)
  mix = M.MaskMixture(inpaint_prob=1.0, outpaint_prob=0.0, saliency_margin=2)
  for _ in range(5):
    keep, kind = M.sample_keep(rng, image, mix, saliency)
    assert kind == M.INPAINT and keep.shape == (64, 64, 1) and keep.dtype == np.float32
    assert (keep[..., 0][_salient_disk()] == 1).all()
  # Built-in estimate: a textured square on a flat background is salient and stays known.
  photo = np.full((64, 64, 3), 40, np.uint8)
  photo[24:40, 24:40] = np.random.default_rng(0).integers(0, 255, (16, 16, 1))
  salient = M.salient_pixels(M.spectral_residual_saliency(photo))
  assert salient[24:40, 24:40].mean() > 0.9 and not salient[:16, :16].any()
  for _ in range(5):
    keep, _ = M.sample_keep(rng, photo, mix)
    assert (keep[..., 0][salient] == 1).all()


def test_all_salient_falls_back_to_outpaint():
  mix = M.MaskMixture(inpaint_prob=1.0, outpaint_prob=0.0)
  keep, kind = M.sample_keep(np.random.default_rng(0), np.zeros((32, 32, 3)), mix,
                             np.ones((32, 32), np.float32))
  assert kind == M.OUTPAINT and keep[16, 16, 0] == 1


@pytest.mark.parametrize("seed", range(10))
def test_outpaint_keeps_only_a_central_rectangle(seed):
  hole = M.outpaint_hole(np.random.default_rng(seed), 64, 80, area_range=(0.2, 0.6))
  keep = ~hole
  rows, cols = np.nonzero(keep.any(1))[0], np.nonzero(keep.any(0))[0]
  box = np.zeros_like(keep)
  box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
  np.testing.assert_array_equal(keep, box)  # kept region is exactly one rectangle
  assert keep[32, 40] and hole.any()  # it contains the centre; some border is generated


def _bordered_sides(hole):
  """Which of (top, bottom, left, right) carry a border (their whole outer line is hole)."""
  return (hole[0].all(), hole[-1].all(), hole[:, 0].all(), hole[:, -1].all())


def test_outpaint_default_is_a_border_on_all_four_sides():
  """Sec. 4.1 "retaining only the central portion": the default (config, mixture and function)
  generates a border on every side; ``outpaint_sides=(1, 4)`` still gives fewer sides."""
  from seamless_jax.data.config import get_data_config  # pylint: disable=import-outside-toplevel
  mix = M.MaskMixture.from_config(get_data_config().masks)
  assert mix.outpaint_sides == (4, 4) == M.MaskMixture().outpaint_sides
  mix = dataclasses.replace(mix, inpaint_prob=0.0, outpaint_prob=1.0)
  image = np.zeros((32, 48, 3), np.float32)
  for seed in range(20):
    keep, kind = M.sample_keep(np.random.default_rng(seed), image, mix)
    hole = keep[..., 0] == 0
    assert kind == M.OUTPAINT and all(_bordered_sides(hole)), seed
    assert keep[16, 24, 0] == 1  # the centre is kept
    assert all(_bordered_sides(M.outpaint_hole(np.random.default_rng(seed), 40, 40)))
  counts = [sum(_bordered_sides(M.outpaint_hole(np.random.default_rng(s), 40, 40,
                                                sides=(1, 4)))) for s in range(40)]
  assert min(counts) == 1 and max(counts) == 4 and len(set(counts)) == 4


def test_masks_are_deterministic_in_the_seed():
  mix = M.MaskMixture()
  image = np.random.default_rng(1).uniform(-1, 1, (48, 48, 3)).astype(np.float32)
  a = [M.sample_keep(np.random.default_rng(s), image, mix)[0] for s in range(4)]
  b = [M.sample_keep(np.random.default_rng(s), image, mix)[0] for s in range(4)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert any((a[0] != x).any() for x in a[1:])


def _hull_by_half_planes(mask):
  """Independent hull: pixel centres inside every facet of scipy's hull of the pixels' edge
  midpoints."""
  ys, xs = np.nonzero(mask)
  points = np.concatenate([np.stack([ys + dy, xs + dx], 1)
                           for dy, dx in ((0.5, 0), (-0.5, 0), (0, 0.5), (0, -0.5))])
  facets = spatial.ConvexHull(points).equations  # normal . p + offset <= 0 inside
  yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
  centres = np.stack([yy.ravel(), xx.ravel()], 1)
  return (centres @ facets[:, :2].T + facets[:, 2] <= 1e-9).all(1).reshape(mask.shape)


def test_convex_hull_matches_an_independent_hull():
  diagonal = np.zeros((3, 3), bool)
  diagonal[0, 0] = diagonal[2, 2] = True
  np.testing.assert_array_equal(M.convex_hull_mask(diagonal), np.eye(3, dtype=bool))
  assert not M.convex_hull_mask(np.zeros((5, 5), bool)).any()
  rng = np.random.default_rng(0)
  for _ in range(20):
    blob = rng.uniform(size=(40, 33)) > 0.97
    blob[rng.integers(40), rng.integers(33)] = True
    hull = M.convex_hull_mask(blob)
    assert (hull >= blob).all()
    np.testing.assert_array_equal(hull, _hull_by_half_planes(blob))


def test_benchmark_hole_is_the_square_dilated_hull():
  seg = np.zeros((64, 64), bool)
  seg[10:20, 10:20] = True
  seg[40:50, 40:50] = True  # two squares: the hull joins them along the diagonal
  hull = M.convex_hull_mask(seg)
  assert hull[30, 30] and not hull[10, 50] and not hull[50, 10]
  hole = M.benchmark_hole(seg, dilate_px=4)
  assert (hole >= hull).all() and hole[6, 15] and not hole[5, 15]  # 4 px, not 5
  assert hole[6, 6] and not hole[5, 5]  # square element: corners grow diagonally too
  ys, xs = np.nonzero(hull)
  chebyshev = np.abs(np.mgrid[:64, :64][:, :, :, None] - np.stack([ys, xs])[:, None, None]).max(0)
  np.testing.assert_array_equal(hole, chebyshev.min(-1) <= 4)
  np.testing.assert_array_equal(M.benchmark_hole(seg, 0), hull)


def _rle_by_hand(runs, shape):
  """Independent decoder: pixel by pixel, 1-based (start, length) pairs, row-major."""
  mask = np.zeros(shape, bool)
  for start, length in runs:
    for flat in range(start - 1, start - 1 + length):
      mask[flat // shape[1], flat % shape[1]] = True
  return mask


def test_rle_decode_follows_brushbench_format():
  mask = np.zeros((4, 5), bool)
  mask[0, 1:3] = True  # flat 1, 2 -> start 2 (1-based), length 2
  mask[2, 4] = mask[3, 0] = True  # flat 14, 15 -> start 15, length 2 (row-major)
  np.testing.assert_array_equal(M.rle_decode([2, 2, 15, 2], (4, 5)), mask)
  np.testing.assert_array_equal(M.rle_decode("2 2 15 2", (4, 5)), mask)
  np.testing.assert_array_equal(M.rle_decode(np.asarray([2, 2, 15, 2]), (4, 5)), mask)
  np.testing.assert_array_equal(M.rle_decode([2, 3, 7, 1], (2, 4)),
                                [[0, 1, 1, 1], [0, 0, 1, 0]])
  assert not M.rle_decode([], (3, 3)).any()
  rng = np.random.default_rng(0)
  starts = np.sort(rng.choice(np.arange(1, 35 * 7, 7), size=12, replace=False))
  runs = [(int(s), int(rng.integers(1, 7))) for s in starts]
  np.testing.assert_array_equal(M.rle_decode([v for run in runs for v in run], (35, 7)),
                                _rle_by_hand(runs, (35, 7)))
  with pytest.raises(ValueError, match="outside a 2x4 mask"):
    M.rle_decode([7, 3], (2, 4))
  with pytest.raises(ValueError, match="pairs"):
    M.rle_decode([1, 2, 3], (2, 4))


def _border_by_loops(keep):
  """Independent border: visit every 4-neighbour pair of a (H, W) bool map."""
  height, width = keep.shape
  border = np.zeros((height, width), bool)
  for y in range(height):
    for x in range(width):
      for ny, nx in ((y + 1, x), (y, x + 1)):
        if ny < height and nx < width and keep[y, x] != keep[ny, nx]:
          border[y, x] = border[ny, nx] = True
  return border


def test_border_pixels_are_both_sides_of_every_differing_pair():
  keep = np.ones((5, 6), bool)
  keep[1:3, 2:4] = False
  expected = np.zeros((5, 6), bool)
  expected[0:4, 2:4] = expected[1:3, 1:5] = True
  np.testing.assert_array_equal(M.border_pixels(keep), expected)
  assert not M.border_pixels(np.zeros((4, 4), bool)).any()
  rng = np.random.default_rng(0)
  batch = rng.uniform(size=(3, 2, 9, 11)) > 0.6  # (..., H, W); float {0, 1} works too
  border = M.border_pixels(batch.astype(np.float32))
  assert border.shape == batch.shape
  for index in np.ndindex(batch.shape[:2]):
    np.testing.assert_array_equal(border[index], _border_by_loops(batch[index]))


def test_mask_file_convention():
  keep = np.ones((8, 8, 1), np.float32)
  keep[2:4, 2:4] = 0
  pixels = M.mask_image_from_keep(keep)
  assert pixels[2, 2] == 255 and pixels[0, 0] == 0  # white = region to generate
  np.testing.assert_array_equal(M.keep_from_mask_image(pixels), keep)
  np.testing.assert_array_equal(M.keep_from_mask_image(np.stack([pixels] * 3, -1)), keep)


def test_mixture_validation():
  with pytest.raises(ValueError, match="area_range"):
    M.MaskMixture(area_range=(0.5, 0.2)).validate()
  with pytest.raises(ValueError, match="inpaint_prob"):
    M.MaskMixture(inpaint_prob=0, outpaint_prob=0).validate()
