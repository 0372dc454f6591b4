"""seamless_jax.pictures: nearest upscaling, the border close-up, labelled columns."""

import numpy as np

from seamless_jax import pictures


def _keep(height=40, width=60, box=(10, 20, 30, 50)):
  keep = np.ones((height, width), bool)
  top, left, bottom, right = box
  keep[top:bottom, left:right] = False
  return keep


def test_upscale_nearest_uses_the_smallest_whole_factor_and_copies_pixels():
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  big = pictures.upscale_nearest(image, 5)  # 5 / 2 -> factor 3
  assert big.shape == (6, 9, 3)
  np.testing.assert_array_equal(big[::3, ::3], image)
  np.testing.assert_array_equal(big[2, 8], image[0, 2])
  assert pictures.upscale_nearest(image, 2) is image  # already large enough


def test_close_up_is_centred_on_the_border_and_stays_inside():
  keep = _keep()
  row, col = pictures.border_centre(keep)
  assert abs(row - 20) <= 10 and abs(col - 35) <= 15
  image = np.zeros((40, 60, 3), np.uint8)
  image[~keep] = 255
  crop = pictures.close_up(image, keep, 16)
  assert crop.shape == (16, 16, 3)
  assert crop.min() == 0 and crop.max() == 255  # both sides of the border are in it
  assert pictures.close_up(image, keep, 100).shape == (40, 60, 3)  # larger than the image
  shown = pictures.border_close_up(image, keep, 256)
  assert min(shown.shape[:2]) >= 256 and shown.shape[0] == shown.shape[1]


def test_label_columns_adds_a_caption_strip_with_text_over_each_column():
  grid = np.full((32, 4 * 32, 3), 128, np.uint8)
  labelled = pictures.label_columns(grid, ["image", "masked", "result", "border"])
  assert labelled.shape == (32 + pictures.LABEL_HEIGHT, 128, 3)
  np.testing.assert_array_equal(labelled[pictures.LABEL_HEIGHT:], grid)
  strip = labelled[:pictures.LABEL_HEIGHT]
  for column in range(4):  # some dark text pixels above every column
    assert strip[:, column * 32:(column + 1) * 32].min() < 100
