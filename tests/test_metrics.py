"""Color Distance (paper Sec. 4), excess CD, masked MSE/PSNR/LPIPS — hand-computed cases."""

import numpy as np
import pytest
import skimage.data

from seamless_jax import metrics


def _halves(h=8, w=8, left=(255, 0, 0), right=(0, 0, 255)):
  image = np.zeros((h, w, 3), np.uint8)
  image[:, : w // 2] = left
  image[:, w // 2:] = right
  return image


def test_two_flat_colours_give_their_exact_distance():
  image = _halves()
  keep = np.zeros((8, 8), bool)
  keep[:, :4] = True  # border = the colour edge: every pair is red|blue
  assert metrics.color_distance(image, keep) == pytest.approx(255 * np.sqrt(2), abs=1e-12)
  keep_top = np.zeros((8, 8), bool)
  keep_top[:4] = True  # border across rows: every pair is the same colour
  assert metrics.color_distance(image, keep_top) == 0.0


def test_tiny_image_by_hand():
  image = np.zeros((2, 2, 3), np.uint8)
  image[0, 1] = (3, 4, 0)    # 5 from (0, 0)
  image[1, 0] = (0, 6, 8)    # 10 from (0, 0)
  image[1, 1] = (200, 0, 0)  # only touches generated pixels: not on the border
  keep = np.array([[1, 0], [0, 0]])
  assert metrics.color_distance(image, keep) == pytest.approx(7.5)
  # same pairs seen from the other side (keep inverted) give the same CD
  assert metrics.color_distance(image, 1 - keep) == pytest.approx(7.5)


def test_uniform_image_is_zero_and_no_border_is_an_error():
  image = np.full((6, 5, 3), 77, np.uint8)
  keep = np.ones((6, 5), bool)
  keep[2:4, 1:3] = False
  assert metrics.color_distance(image, keep) == 0.0
  with pytest.raises(ValueError, match="no border .all kept"):
    metrics.color_distance(image, np.ones((6, 5), bool))
  with pytest.raises(ValueError, match="no border .all generated"):
    metrics.color_distance(image, np.zeros((6, 5, 1)))
  with pytest.raises(ValueError, match="keep has shape"):
    metrics.color_distance(image, np.ones((5, 6), bool))


def _paste(size=64):
  """(ground truth, hard-pasted, smoothly blended) on a centred square hole."""
  truth = skimage.data.astronaut()[100:100 + size, 200:200 + size].astype(np.float64)
  other = skimage.data.coffee()[100:100 + size, 100:100 + size].astype(np.float64)
  keep = np.ones((size, size), bool)
  lo, hi = size // 4, 3 * size // 4
  keep[lo:hi, lo:hi] = False
  hard = np.where(keep[..., None], truth, other)
  # alpha ramps 0 → 1 over 8 pixels from the hole's edge inwards
  yy, xx = np.mgrid[:size, :size]
  inside = np.minimum.reduce([yy - lo, hi - 1 - yy, xx - lo, hi - 1 - xx])
  alpha = np.clip(inside / 8.0, 0, 1)[..., None] * (~keep)[..., None]
  smooth = truth * (1 - alpha) + other * alpha
  to_u8 = lambda a: np.round(a).astype(np.uint8)
  return to_u8(truth), to_u8(hard), to_u8(smooth), keep


def test_hard_paste_ranks_above_smooth_blend():
  truth, hard, smooth, keep = _paste()
  cd_hard = metrics.color_distance(hard, keep)
  cd_smooth = metrics.color_distance(smooth, keep)
  cd_truth = metrics.color_distance(truth, keep)
  assert cd_hard > 3 * cd_smooth
  assert cd_smooth == pytest.approx(cd_truth, abs=0.5)  # alpha = 0 on the hole's first ring
  excess = metrics.excess_color_distance(hard, truth, keep)
  assert excess == pytest.approx(cd_hard - cd_truth)
  assert excess > 10
  assert metrics.excess_color_distance(truth, truth, keep) == 0.0


def test_batch_matches_single_and_float_convention():
  truth, hard, smooth, keep = _paste(32)
  images = np.stack([truth, hard, smooth, truth])
  keeps = np.stack([keep, keep, keep, np.ones_like(keep)])  # last row: no border
  cds = metrics.color_distance_batch(images, keeps[..., None].astype(np.float32))
  for i in range(3):
    assert cds[i] == pytest.approx(metrics.color_distance(images[i], keeps[i]), rel=1e-12)
  assert np.isnan(cds[3])
  as_float = images.astype(np.float32) / 127.5 - 1.0  # the project's [-1, 1] images
  np.testing.assert_allclose(metrics.color_distance_batch(as_float, keeps), cds, rtol=1e-5)
  excess = metrics.excess_color_distance_batch(images, np.stack([truth] * 4), keeps)
  assert excess[0] == 0.0 and excess[1] > 10 and np.isnan(excess[3])
  with pytest.raises(ValueError, match=r"must be in \[-1, 1\]"):
    metrics.color_distance_batch(images.astype(np.float32), keeps)
  with pytest.raises(ValueError, match="RGB"):
    metrics.color_distance_batch(images[..., :2], keeps)


def test_masked_mse_and_psnr_against_numpy_formula():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
  b = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
  keep = rng.random((16, 12)) > 0.4
  # formula by hand: mean over kept pixels and channels of ((a - b)/255)^2
  squared, n = 0.0, 0
  for y in range(16):
    for x in range(12):
      if keep[y, x]:
        for c in range(3):
          squared += ((int(a[y, x, c]) - int(b[y, x, c])) / 255.0) ** 2
          n += 1
  mse = squared / n
  assert metrics.masked_mse(a, b, keep) == pytest.approx(mse, rel=1e-12)
  assert metrics.masked_psnr(a, b, keep) == pytest.approx(10 * np.log10(1 / mse), rel=1e-12)
  assert metrics.masked_mse(a, b, keep, brushnet_compat=True) == pytest.approx(3 * mse)
  # generated pixels do not count; identical kept regions → inf PSNR
  c = a.copy()
  c[~keep] = 255 - c[~keep]
  assert metrics.masked_mse(a, c, keep) == 0.0
  assert metrics.masked_psnr(a, c, keep) == float("inf")
  with pytest.raises(ValueError, match="no kept pixel"):
    metrics.masked_mse(a, b, np.zeros((16, 12), bool))


def test_masked_lpips_ignores_generated_pixels(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  from seamless_jax.models import lpips as flax_lpips
  rng = np.random.default_rng(0)
  flat = {k: (0.05 * rng.standard_normal(s)).astype(np.float32)
          for k, s in flax_lpips.expected_param_shapes().items()}
  for k in range(5):
    flat[f"lin{k}/kernel"] = np.abs(flat[f"lin{k}/kernel"])
  path = str(tmp_path / "lpips.safetensors")
  safetensors_numpy.save_file(flat, path)
  lpips_fn = flax_lpips.load_lpips_fn(path)
  a = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  keep = np.ones((2, 32, 32), bool)
  keep[:, 8:24, 8:24] = False
  b = a.copy()
  b[~keep] = 0
  np.testing.assert_allclose(metrics.masked_lpips(a, b, keep, lpips_fn), 0.0, atol=1e-6)
  noisy = a.copy()
  noisy[keep] = 255 - noisy[keep]
  assert np.all(metrics.masked_lpips(noisy, a, keep, lpips_fn) > 1e-4)
