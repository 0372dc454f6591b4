"""seamless_jax.app without a browser: the page's input rules, the paste modes, a whole run of
the tiny trained model with a second decoder, and the command line (tests/test_app_browser.py
drives the real page)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from seamless_jax import app as app_lib
from seamless_jax import inpaint
from seamless_jax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 24, 40  # not square: sizes must come back as given


def _photo(height=H, width=W):
  ys, xs = np.mgrid[0:height, 0:width]
  return np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 90)],
                  -1).astype(np.uint8)


def _stroke(height=H, width=W, box=(6, 10, 18, 30)):
  """A brush layer as gradio's editor gives it: RGBA, painted where alpha > 0."""
  layer = np.zeros((height, width, 4), np.uint8)
  top, left, bottom, right = box
  layer[top:bottom, left:right] = (255, 255, 255, 255)
  return layer


def _editor(layers=()):
  photo = np.concatenate([_photo(), np.full((H, W, 1), 255, np.uint8)], -1)
  return {"background": photo, "layers": list(layers), "composite": photo}


# ------------------------------------------------------------------ page inputs

def test_painted_strokes_become_the_mask():
  request = app_lib.page_request(_editor([_stroke()]), None, steps=3, seed=4)
  assert request.image.shape == (H, W, 3) and request.image.dtype == np.uint8
  np.testing.assert_array_equal(request.image, _photo())
  assert not request.keep[6:18, 10:30].any() and request.keep.sum() == H * W - 12 * 20
  assert (request.steps, request.seed, request.outpaint) == (3, 4, False)


def test_an_uploaded_mask_wins_over_strokes_and_may_be_resized():
  mask = np.zeros((2 * H, 2 * W), np.uint8)
  mask[:, :W] = 255  # the left half, at twice the size
  request = app_lib.page_request(_editor([_stroke()]), mask)
  assert not request.keep[:, :W // 2].any() and request.keep[:, W // 2:].all()


def test_outpaint_margins_grow_the_canvas():
  request = app_lib.page_request(_editor(), None, (8, 0, 4, 0))
  assert request.image.shape == (H, W + 12, 3) and request.outpaint
  assert not request.keep[:, :8].any() and request.keep[:, 8:8 + W].all()


@pytest.mark.parametrize("editor, mask, margins, message", [
    (None, None, (0, 0, 0, 0), "no photo"),
    (_editor(), None, (0, 0, 0, 0), "no mask"),
    (_editor([_stroke()]), None, (4, 0, 0, 0), "not both"),
    (_editor(), np.full((H, H), 255, np.uint8), (0, 0, 0, 0), "aspect ratio"),
    (_editor(), np.zeros((H, W), np.uint8), (0, 0, 0, 0), "is empty"),
])
def test_bad_page_input_is_one_message(editor, mask, margins, message):
  with pytest.raises(inpaint.InputError, match=message):
    app_lib.page_request(editor, mask, margins)


def test_paste_modes():
  inputs = np.full((1, 32, 32, 3), 200, np.uint8)
  results = np.full((1, 32, 32, 3), 40, np.uint8)
  keep = np.ones((1, 32, 32), bool)
  keep[:, 8:24, 8:24] = False
  np.testing.assert_array_equal(app_lib.apply_paste("none", results, inputs, keep), results)
  hard = app_lib.apply_paste("paste-back", results, inputs, keep)
  np.testing.assert_array_equal(hard[0][keep[0]], 200)
  np.testing.assert_array_equal(hard[0][~keep[0]], 40)
  soft = app_lib.apply_paste("blurred paste-back", results, inputs, keep)[0]
  np.testing.assert_array_equal(soft[~keep[0]], 40)  # never the pixels under the hole
  assert soft[0, 0, 0] == 200  # deep in the known region: the input
  assert 40 < soft[8, 7, 0] < 200  # next to the border: in between
  poisson = app_lib.apply_paste("Poisson blending", results, inputs, keep)[0]
  np.testing.assert_array_equal(poisson[keep[0]], 200)  # a flat colour offset: blended away
  assert np.abs(poisson[~keep[0]].astype(int) - 200).max() <= 1
  with pytest.raises(inpaint.InputError, match="paste mode"):
    app_lib.apply_paste("glue", results, inputs, keep)


# ------------------------------------------------------------------ a run of the tiny model

@pytest.fixture(scope="module")
def seam_app(tiny_workdirs, tmp_path_factory):
  """The tiny two-step model + Eq. 6 decoder, compared with the run's own (base) decoder."""
  return app_lib.SeamApp.load(tiny_workdirs["two_step"], vae=tiny_workdirs["vae_finetune"],
                              compare_vae=tiny_workdirs["two_step"], dtype="float32",
                              out_dir=str(tmp_path_factory.mktemp("app_out")))


def test_a_run_shows_both_decoders_on_the_same_latents(seam_app):
  request = app_lib.page_request(_editor([_stroke()]), None, steps=3, seed=1)
  assert seam_app.compiles(request)
  heard = []
  outcome = seam_app.run(request, on_step=lambda done, total: heard.append((done, total)))
  assert sorted(heard)[-1] == (3, 3) and len(heard) >= 3
  assert not seam_app.compiles(request)  # the next run at this size reuses the program
  assert [p.name for p in outcome.panels] == ["decoder of vae_finetune", "decoder of two_step"]
  for panel in outcome.panels:
    assert panel.result.shape == (H, W, 3) and panel.result.dtype == np.uint8
    assert min(panel.close_up.shape[:2]) >= app_lib.CLOSE_UP_SIZE
    assert panel.cd == metrics.color_distance(panel.result, request.keep)
    assert np.isfinite(panel.excess_cd)
  main, other = (p.result.astype(int) for p in outcome.panels)
  assert np.abs(main - other).max() > 0  # two decoders, two renderings
  saved = np.asarray(Image.open(outcome.path))
  np.testing.assert_array_equal(saved, outcome.panels[0].result)
  assert "seam CD" in outcome.report and "excess CD" in outcome.report
  values = app_lib.page_outputs(outcome, compare=True)
  assert len(values) == 6 and values[-1] == outcome.path


def test_compare_decoder_renders_the_latents_the_model_sampled(seam_app, tiny_workdirs):
  """The compare panel is what Inpainter gives with the base decoder: same latents, seed."""
  request = app_lib.page_request(_editor([_stroke()]), None, steps=3, seed=2)
  outcome = seam_app.run(request)
  base = inpaint.Inpainter.load(tiny_workdirs["two_step"], dtype="float32")
  [expected] = base(request.image, ~request.keep, num_inference_steps=3, seed=2)
  assert np.abs(outcome.panels[1].result.astype(int) - expected.astype(int)).max() <= 1


def test_outpaint_runs_and_says_excess_cd_is_not_defined(seam_app):
  request = app_lib.page_request(_editor(), None, (8, 0, 0, 0), steps=3, paste="paste-back")
  outcome = seam_app.run(request)
  assert outcome.panels[0].result.shape == (H, W + 8, 3)
  assert outcome.panels[0].excess_cd is None and "n/a (outpaint)" in outcome.report
  np.testing.assert_array_equal(outcome.panels[0].result[:, 8:], request.image[:, 8:])


# ------------------------------------------------------------------ command line and extra

def test_help_lists_every_option_with_a_default():
  text = app_lib.build_parser().format_help()
  for option in ("--model", "--vae", "--compare-vae", "--port", "--share", "--host", "--steps"):
    assert option in text
  assert text.count("default") >= 7


def test_missing_gradio_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
  with pytest.raises(inpaint.InputError, match=r"pip install -e \"\.\[app\]\""):
    app_lib.import_gradio()


def test_a_bad_model_is_one_line_before_serving(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "seamless_jax.app", "--model",
                         str(tmp_path / "nothing")], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'nothing'} does not exist (expected an SD-1.5 diffusers folder or a "
      "training workdir)"]


def test_only_the_app_imports_gradio():
  code = ("import sys, seamless_jax.inpaint, seamless_jax.app, seamless_jax.train.loop; "
          "assert 'gradio' not in sys.modules, 'gradio imported'")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
