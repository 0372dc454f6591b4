"""seamless_jax.inpaint: the Inpainter API and ``python -m seamless_jax.inpaint`` on tiny models.

The models are the session's tiny trained workdirs (tests/conftest.py) and a diffusers folder
saved from the two-step one; sampling uses 3 DDIM steps so every call is fast.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from seamless_jax import convert
from seamless_jax import inpaint
from seamless_jax import loading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
H, W = 37, 45  # odd sizes: padded to the tiny model's multiple (4) and cropped back


def _image(height=H, width=W, seed=0):
  rng = np.random.default_rng(seed)
  ys, xs = np.mgrid[0:height, 0:width]
  base = np.stack([xs * 255 / width, ys * 255 / height, np.full_like(xs, 128.0)], -1)
  return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def _mask(height=H, width=W, box=(10, 12, 25, 30)):
  mask = np.zeros((height, width), np.uint8)
  top, left, bottom, right = box
  mask[top:bottom, left:right] = 255
  return mask


def _save(array, path):
  Image.fromarray(array).save(path)
  return str(path)


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "seamless_jax.inpaint", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model_folder(tiny_workdirs, tmp_path_factory):
  """The tiny two-step model as a diffusers folder (v-prediction scheduler)."""
  pipe = loading.load_pipeline(tiny_workdirs["two_step"])
  folder = str(tmp_path_factory.mktemp("tiny_sd"))
  convert.write_pipeline(pipe, folder,
                        tokenizer_folder=os.path.join(tiny_workdirs["data"], "tokenizer"),
                        scheduler_overrides={"prediction_type": "v_prediction"})
  return folder


@pytest.fixture(scope="module")
def full_system(tiny_workdirs):
  """Two-step workdir UNet + the vae_finetune workdir's Eq. 6 decoder."""
  return inpaint.Inpainter.load(tiny_workdirs["two_step"], vae=tiny_workdirs["vae_finetune"],
                                dtype="float32")


# ------------------------------------------------------------------ pure input handling

def test_outpaint_canvas_has_the_requested_size_and_marks_only_the_new_area():
  image = _image(10, 12)
  canvas, mask = inpaint.outpaint_canvas(image, 3, 4, 5, 6)
  assert canvas.shape == (10 + 4 + 6, 12 + 3 + 5, 3) and canvas.dtype == np.uint8
  assert mask.shape == canvas.shape[:2]
  np.testing.assert_array_equal(canvas[4:14, 3:15], image)
  expected = np.full(mask.shape, 255, np.uint8)
  expected[4:14, 3:15] = 0
  np.testing.assert_array_equal(mask, expected)
  np.testing.assert_array_equal(canvas[0, 0], image[0, 0])  # 'edge' copies the corner pixel
  mean, _ = inpaint.outpaint_canvas(image, 0, 0, 2, 0, fill="mean")
  np.testing.assert_array_equal(mean[:, -1], np.broadcast_to(
      image.reshape(-1, 3).mean(0).round().astype(np.uint8), (10, 3)))
  black, _ = inpaint.outpaint_canvas(image, 1, 0, 0, 0, fill="black")
  assert black[:, 0].max() == 0
  with pytest.raises(inpaint.InputError, match="all 0"):
    inpaint.outpaint_canvas(image, 0, 0, 0, 0)
  with pytest.raises(inpaint.InputError, match=">= 0"):
    inpaint.outpaint_canvas(image, -1, 0, 0, 0)


def test_mask_rules_resize_same_aspect_and_refuse_the_rest():
  half = np.zeros((20, 30), np.uint8)
  half[:, 15:] = 200  # > 127: generate
  keep = inpaint.mask_to_keep(half, (40, 60))
  assert keep.shape == (40, 60)
  assert keep[:, :30].all() and not keep[:, 30:].any()
  np.testing.assert_array_equal(inpaint.mask_to_keep(half > 127, (20, 30)), keep[::2, ::2])
  with pytest.raises(inpaint.InputError, match="aspect ratio"):
    inpaint.mask_to_keep(half, (40, 40))
  with pytest.raises(inpaint.InputError, match="is empty"):
    inpaint.mask_to_keep(np.full((20, 30), 127, np.uint8), (20, 30))
  with pytest.raises(inpaint.InputError, match="is full"):
    inpaint.mask_to_keep(np.full((20, 30), 255, np.uint8), (20, 30))


def test_output_paths_rule():
  assert inpaint.output_paths("a/r.png", "x/photo.jpg", 1) == ["a/r.png"]
  assert inpaint.output_paths("a/r.jpg", "x/photo.jpg", 2) == ["a/r_0.jpg", "a/r_1.jpg"]
  assert inpaint.output_paths("outs", "x/photo.jpg", 2) == [os.path.join("outs", "photo_0.png"),
                                                            os.path.join("outs", "photo_1.png")]


# ------------------------------------------------------------------ the API

@pytest.mark.slow
def test_batch_equals_single_calls_same_seed_same_image_one_compile(full_system):
  pipe = full_system
  images = [_image(seed=1), _image(seed=2)]
  masks = [_mask(), _mask(box=(0, 0, 12, 45))]
  batched = pipe.batch(images, masks, ["scenery", "a lake"], num_inference_steps=STEPS,
                       seed=[5, 6], num_images=2)
  assert len(batched) == 4 and all(r.shape == (H, W, 3) and r.dtype == np.uint8 for r in batched)
  single = (pipe(images[0], masks[0], "scenery", num_inference_steps=STEPS, seed=5, num_images=2)
            + pipe(images[1], masks[1], "a lake", num_inference_steps=STEPS, seed=6,
                   num_images=2))
  # Per-sample keys make the noise batch-independent; only XLA's batched-conv rounding may
  # differ, which stays within 1 grey level of uint8 output.
  for b, s in zip(batched, single):
    assert np.abs(b.astype(int) - s.astype(int)).max() <= 1
  again = pipe(images[0], masks[0], "scenery", num_inference_steps=STEPS, seed=5, num_images=2)
  np.testing.assert_array_equal(again[0], single[0])  # same seed -> the same image
  assert np.abs(single[0].astype(int) - single[1].astype(int)).max() > 0  # sample 1 differs
  compiled = pipe.num_compiled
  chunked = pipe.batch(images, masks, ["scenery", "a lake"], num_inference_steps=STEPS,
                       seed=[5, 6], num_images=2, batch_size=3)  # chunks of 3: 3 + (1 padded)
  assert pipe.num_compiled == compiled + 1  # one program for both chunks
  for b, c in zip(batched, chunked):
    assert np.abs(b.astype(int) - c.astype(int)).max() <= 1


def test_paste_back_keeps_the_known_region_exactly(full_system):
  image, mask = _image(), _mask()
  [pasted] = full_system(image, mask, num_inference_steps=STEPS, paste_back=True)
  [raw] = full_system(image, mask, num_inference_steps=STEPS)
  known = mask < 128
  np.testing.assert_array_equal(pasted[known], image[known])
  np.testing.assert_array_equal(pasted[~known], raw[~known])
  assert np.abs(raw[known].astype(int) - image[known].astype(int)).max() > 0  # a tiny VAE's error


def test_pil_inputs_give_what_arrays_give(full_system):
  """README's snippet: PIL images and masks work as uint8 arrays do; results are uint8 arrays."""
  image, mask = _image(), _mask()
  [from_pil] = full_system(Image.fromarray(image), Image.fromarray(mask),
                           num_inference_steps=STEPS, seed=7)
  [from_arrays] = full_system(image, mask, num_inference_steps=STEPS, seed=7)
  assert isinstance(from_pil, np.ndarray) and from_pil.dtype == np.uint8
  np.testing.assert_array_equal(from_pil, from_arrays)


def test_generate_returns_the_latents_another_decoder_can_render(full_system):
  heard = []
  generation = full_system.generate([_image()], [_mask()], num_inference_steps=STEPS, seed=3,
                                    on_step=lambda done, total: heard.append((done, total)))
  [plain] = full_system(_image(), _mask(), num_inference_steps=STEPS, seed=3)
  assert np.abs(generation.images[0].astype(int) - plain.astype(int)).max() <= 1
  factor = full_system.vae_factor
  padded = -(-H // full_system.size_multiple) * full_system.size_multiple
  assert generation.latents.shape[:3] == (1, padded // factor,
                                          -(-W // full_system.size_multiple)
                                          * full_system.size_multiple // factor)
  assert sorted(heard) == [(i, STEPS) for i in range(1, STEPS + 1)]
  again = full_system.decode(generation)  # the pipeline's own decoder: the same images
  assert np.abs(again.astype(int) - generation.images.astype(int)).max() <= 1
  np.testing.assert_array_equal(generation.keep[0], _mask() < 128)
  np.testing.assert_array_equal(generation.inputs[0], _image())


def test_blurred_paste_back_feathers_inside_the_known_region_only():
  inputs = np.full((1, 24, 24, 3), 250, np.uint8)
  results = np.zeros((1, 24, 24, 3), np.uint8)
  keep = np.ones((1, 24, 24), bool)
  keep[:, :, 12:] = False
  soft = inpaint.paste_known(results, inputs, keep, blur=2.0)[0, 5, :, 0]
  assert (soft[12:] == 0).all() and soft[0] == 250  # hole untouched, deep known region exact
  assert np.all(np.diff(soft[:12].astype(int)) <= 0) and 0 < soft[11] < 250  # a soft fall
  hard = inpaint.paste_known(results, inputs, keep)[0, 5, :, 0]
  assert (hard[:12] == 250).all() and (hard[12:] == 0).all()


def _gaussian_numpy(image: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian of (H, W) with scipy's defaults written out in NumPy: kernel radius
  int(4σ + 0.5), mirrored edges (scipy 'reflect' = NumPy 'symmetric')."""
  radius = int(4 * sigma + 0.5)
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  out = np.asarray(image, np.float64)
  for axis in (0, 1):
    padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)],
                    mode="symmetric")
    out = sum(t * np.take(padded, np.arange(i, i + out.shape[axis]), axis=axis)
              for i, t in enumerate(taps))
  return out


def _paste_case(seed=0, size=(2, 40, 48)):
  rng = np.random.default_rng(seed)
  results = rng.integers(0, 256, size + (3,), dtype=np.uint8)
  inputs = rng.integers(0, 256, size + (3,), dtype=np.uint8)
  keep = np.ones(size, bool)
  keep[0, 10:25, 8:30] = False
  keep[1, :, 30:] = False
  return results, inputs, keep


def test_hard_and_blurred_paste_back_match_their_formulas():
  results, inputs, keep = _paste_case()
  hard = inpaint.apply_paste_back("hard", results, inputs, keep)
  np.testing.assert_array_equal(hard, np.where(keep[..., None], inputs, results))
  sigma = inpaint.blur_sigma(*keep.shape[1:])
  assert sigma == 1.0 and inpaint.blur_sigma(512, 768) == 4.0  # 1/128 of the shorter side
  blurred = inpaint.apply_paste_back("blurred", results, inputs, keep)
  for i in range(len(keep)):  # input weight = keep · G_σ(keep), then rounded to uint8
    weight = (keep[i] * _gaussian_numpy(keep[i].astype(np.float64), sigma))[..., None]
    expected = np.round(weight * inputs[i] + (1 - weight) * results[i])
    assert np.abs(blurred[i].astype(int) - expected).max() <= 1
  np.testing.assert_array_equal(blurred[~keep], results[~keep])  # the hole is never touched


@pytest.mark.parametrize("hole", ["inpaint", "outpaint", "edge"])
def test_poisson_blend_removes_a_colour_offset_and_keeps_known_pixels(hole):
  height, width = 48, 56
  ys, xs = np.mgrid[0:height, 0:width]
  photo = np.stack([60 + 2 * ys, 40 + 2 * xs, 50 + ys + xs], -1).astype(np.uint8)  # smooth
  keep = np.ones((height, width), bool)
  if hole == "inpaint":
    keep[12:30, 10:40] = False
  elif hole == "outpaint":  # a frame on all four sides: the hole's box is the whole image
    keep[:] = False
    keep[8:40, 10:46] = True
  else:
    keep[:, 44:] = False
  result = np.clip(photo.astype(int) + 40, 0, 255).astype(np.uint8)  # the decoder's colour shift
  under_hole = np.where(keep[..., None], photo, 0).astype(np.uint8)    # never used
  [out] = inpaint.apply_paste_back("poisson", result[None], under_hole[None], keep[None])
  assert out.shape == photo.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out[keep], photo[keep])  # known pixels (incl. the border) exact
  hard = inpaint.paste_known(result[None], photo[None], keep[None])[0]
  step = lambda image: np.abs(image.astype(int) - photo)[~keep].mean()
  assert step(hard) == 40 and step(out) <= 1.5  # the offset is gone from the hole
  [noise] = inpaint.apply_paste_back(  # a textured image: finite, valid, known pixels exact
      "poisson", np.random.default_rng(1).integers(0, 256, (1, height, width, 3), np.uint8),
      photo[None], keep[None])
  np.testing.assert_array_equal(noise[keep], photo[keep])


def test_paste_back_bad_input_is_named(monkeypatch):
  results, inputs, keep = _paste_case()
  with pytest.raises(inpaint.InputError, match="paste-back mode must be one of hard"):
    inpaint.apply_paste_back("glue", results, inputs, keep)
  with pytest.raises(inpaint.InputError, match="one size"):
    inpaint.apply_paste_back("hard", results, inputs[:, :-1], keep)
  with pytest.raises(inpaint.InputError, match="one size"):
    inpaint.apply_paste_back("poisson", results, inputs, keep[..., None])
  monkeypatch.setitem(sys.modules, "cv2", None)  # as if opencv-python-headless were missing
  with pytest.raises(inpaint.InputError, match=r"\[eval\]"):
    inpaint.apply_paste_back("poisson", results, inputs, keep)


def test_cli_paste_back_modes():
  parse = lambda *extra: inpaint.build_parser().parse_args(
      ["--model", "m", "--image", "i.png", *extra]).paste_back
  assert (parse(), parse("--paste-back"), parse("--paste-back", "poisson")) == (
      None, "hard", "poisson")
  with pytest.raises(SystemExit):
    parse("--paste-back", "glue")


def test_thin_hole_is_refused(full_system):
  mask = np.zeros((H, W), np.uint8)
  mask[4, 4] = 255  # one pixel that no latent cell samples (nearest picks odd pixels at factor 2)
  with pytest.raises(inpaint.InputError, match="too thin"):
    full_system(_image(), mask, num_inference_steps=STEPS)


@pytest.mark.slow
def test_epsilon_models_and_nine_channel_unets_are_accepted(tiny_workdirs):
  pipe = loading.load_pipeline(tiny_workdirs["two_step"])
  pipe.scheduler_config = {**pipe.scheduler_config, "prediction_type": "epsilon"}
  eps = inpaint.Inpainter(pipe)
  assert eps.prediction_type == "epsilon" and not eps.inpaint_channels
  [out] = eps(_image(), _mask(), num_inference_steps=2)
  assert out.shape == (H, W, 3)
  import jax  # pylint: disable=import-outside-toplevel
  unet9 = pipe.unet.clone(in_channels=9)
  # jitted: op by op, the init compiles some 300 tiny programs (20 s here)
  params9 = jax.jit(unet9.init)(jax.random.PRNGKey(0), *unet9.dummy_inputs())["params"]
  pipe9 = loading.load_pipeline(tiny_workdirs["two_step"])
  pipe9.unet, pipe9.unet_params = unet9, params9
  nine = inpaint.Inpainter(pipe9)
  assert nine.inpaint_channels
  [out9] = nine(_image(), _mask(), num_inference_steps=2, paste_back=True)
  assert out9.shape == (H, W, 3)


# ------------------------------------------------------------------ the CLI

@pytest.mark.slow
def test_cli_on_a_diffusers_folder_writes_results_of_the_input_size(model_folder, tmp_path):
  image = _save(_image(), tmp_path / "photo.png")
  mask = _save(_mask(H // 2 + 1, W // 2 + 1), tmp_path / "mask.png")  # same aspect: resized
  out = tmp_path / "outs"
  proc = _cli("--model", model_folder, "--image", image, "--mask", mask, "--steps", str(STEPS),
              "--num-images", "2", "--seed", "3", "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = sorted(os.listdir(out))
  assert written == ["photo_0.png", "photo_1.png"]
  for name in written:
    assert Image.open(out / name).size == (W, H)
  assert "s/image" in proc.stderr


@pytest.mark.slow
def test_cli_full_system_outpaint_with_poisson_paste_back(tiny_workdirs, tmp_path):
  image = _image()
  path = _save(image, tmp_path / "photo.png")
  out = str(tmp_path / "wide.png")
  proc = _cli("--model", tiny_workdirs["two_step"], "--vae", tiny_workdirs["vae_finetune"],
              "--image", path, "--outpaint", "6,0,9,3", "--steps", str(STEPS), "--paste-back",
              "poisson", "--out", out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = np.asarray(Image.open(out))
  assert result.shape == (H + 3, W + 6 + 9, 3)
  np.testing.assert_array_equal(result[:H, 6:6 + W], image)
  assert "decoder of" in proc.stderr and "step 2, EMA" in proc.stderr


def test_cli_error_is_one_line_without_traceback(tmp_path):
  image = _save(_image(), tmp_path / "photo.png")
  proc = _cli("--model", str(tmp_path), "--image", image, "--mask",
              _save(_mask(), tmp_path / "mask.png"), timeout=120)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "neither" in lines[0], proc.stderr


@pytest.mark.parametrize("case, expected", [
    ("mismatch", "aspect ratio"), ("empty", "is empty"), ("full", "is full"),
    ("corrupt", "photo.png is not a readable image file"), ("cmyk", "not an RGB image (mode CMYK)"),
    ("transparent", "transparent pixels"), ("missing", "does not exist"),
    ("no_weights", "neither a diffusers"),
    ("outpaint_syntax", "LEFT,TOP,RIGHT,BOTTOM"),
])
def test_cli_user_errors_are_one_line(case, expected, tmp_path):
  image_path = tmp_path / "photo.png"
  _save(_image(), image_path)
  mask = _mask()
  model = str(tmp_path / "model")  # input errors come before the model is read
  if case == "mismatch":
    mask = _mask(30, 30)
  elif case == "empty":
    mask = np.zeros((H, W), np.uint8)
  elif case == "full":
    mask = np.full((H, W), 255, np.uint8)
  elif case == "corrupt":
    image_path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  elif case == "cmyk":
    Image.fromarray(_image()).convert("CMYK").save(tmp_path / "photo.jpg")
    image_path = tmp_path / "photo.jpg"
  elif case == "transparent":
    rgba = np.concatenate([_image(), np.full((H, W, 1), 10, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(image_path)
  elif case == "missing":
    image_path = tmp_path / "nowhere.png"
  elif case == "no_weights":
    model = str(tmp_path)
  mask_path = _save(mask, tmp_path / "mask.png")
  args = ["--model", model, "--image", str(image_path), "--steps", "1",
          "--out", str(tmp_path / "o.png")]
  if case == "outpaint_syntax":
    extra = ["--outpaint", "1,2,3"]
  else:
    extra = ["--mask", mask_path]
  with pytest.raises(SystemExit) as info:
    inpaint.main(args + extra)
  message = str(info.value.code)
  assert message.startswith("error: ") and "\n" not in message and expected in message, message
