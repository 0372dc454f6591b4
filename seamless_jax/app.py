"""The web app: paint a mask on a photo, inpaint it with BLD, look at the seam.

  pip install -e ".[app]"
  python -m seamless_jax.app --model runs/demo                          # CPU, the demo workdir
  python -m seamless_jax.app --model runs/two_step --vae runs/vae --compare-vae /ckpt/sd15
  python -m seamless_jax.app --model runs/demo --share                  # also a public link

``--model``/``--vae`` are the model sources of ``python -m seamless_jax.inpaint`` (a diffusers
folder, a training workdir or its export; ``--vae``: the Eq. 6 decoder). ``--compare-vae BASE``
renders the same final latents (same seed) with the decoder of BASE too, side by side: the
blend-aware decoder against the base one on identical latents.

The page: upload a photo and paint the region to generate on it (or upload a mask, white =
generate, or set outpaint margins); prompt, negative prompt, DDIM steps, guidance, seed, and
the cheap fixes to compare (paste-back, blurred paste-back, Poisson blending: OpenCV, the
``[eval]`` extra). It shows each result, a close-up of the mask border (enlarged, nearest), the
seam CD and excess CD (the paper's Color Distance on the mask border; excess = minus the
photo's own CD there, inpainting only), progress in DDIM steps, and a download of the result. The first run at an image size compiles the sampler
(said on the page); later runs reuse it. Bad input is a message on the page.

Everything but :func:`build_ui` and :func:`launch` is plain functions of numpy arrays (tests
call them without a browser); only those two import gradio (the ``[app]`` extra).
"""

from __future__ import annotations

from seamless_jax import console

console.import_jax_quietly()  # first: no JAX plugin start-up chatter on this command's console
# pylint: disable=wrong-import-position

import argparse
import contextvars
import dataclasses
import os
import sys
import tempfile
import threading
import time
from typing import Callable, Sequence

import jax
import numpy as np
from PIL import Image

from seamless_jax import inpaint
from seamless_jax import loading
from seamless_jax import metrics
from seamless_jax import pictures

# "none", then the page names of inpaint.PASTE_BACK_MODES (hard, blurred, poisson)
PASTE_MODES = ("none", "paste-back", "blurred paste-back", "Poisson blending")
CLOSE_UP_SIZE = 256  # px: the border close-up is enlarged (nearest) to at least this
COMPILE_NOTE = ("first run at this image size: compiling the sampler (once per size and step "
                "count; later runs reuse it)")
INSTALL_HINT = 'the web app needs gradio: pip install -e ".[app]"'
# Results fill their boxes with square pixels: a small image is shown enlarged, never smoothed.
PAGE_CSS = ".seam-image img {image-rendering: pixelated; width: 100%; height: 100%; "\
           "object-fit: contain;}"


@dataclasses.dataclass
class Request:
  """One generation a user asked for. ``image`` uint8 (H, W, 3); ``keep`` bool (H, W), True =
  known pixel; ``outpaint``: the generated area is new canvas (no real pixels under it, so no
  excess CD)."""
  image: np.ndarray
  keep: np.ndarray
  outpaint: bool = False
  prompt: str = inpaint.DEFAULT_PROMPT
  negative_prompt: str = ""
  steps: int = 50
  guidance: float = 3.0
  seed: int = 0
  paste: str = "none"


@dataclasses.dataclass
class Panel:
  """One decoder's rendering: ``result`` uint8 (H, W, 3) after the paste mode, ``close_up``
  uint8 (the mask border enlarged), ``cd`` and ``excess_cd`` (None when outpainting)."""
  name: str
  result: np.ndarray
  close_up: np.ndarray
  cd: float
  excess_cd: float | None


@dataclasses.dataclass
class Outcome:
  """What the page shows: one :class:`Panel` per decoder (the model's first), the seam
  ``report`` (markdown) and ``path``, the first result as a PNG file for download."""
  panels: list[Panel]
  report: str
  path: str


# ============================================================================ page inputs

def painted_mask(layers: Sequence[np.ndarray] | None) -> np.ndarray | None:
  """uint8 (H, W) mask, 255 (generate) wherever any brush layer (H, W, 4) RGBA is painted
  (alpha > 0); None when nothing is painted."""
  painted = None
  for layer in layers or ():
    layer = np.asarray(layer)
    if layer.ndim == 3 and layer.shape[-1] == 4:
      stroke = layer[..., 3] > 0
      painted = stroke if painted is None else painted | stroke
  if painted is None or not painted.any():
    return None
  return np.where(painted, 255, 0).astype(np.uint8)


def photo_of(background) -> np.ndarray:
  """The editor's background (H, W), (H, W, 3) or (H, W, 4) -> uint8 (H, W, 3) RGB."""
  if background is None:
    raise inpaint.InputError("no photo: upload one in the editor first")
  photo = np.asarray(background)
  if photo.ndim == 2:
    photo = np.repeat(photo[..., None], 3, axis=-1)
  return inpaint.check_image(np.ascontiguousarray(photo[..., :3]).astype(np.uint8), "photo")


def page_request(editor: dict | None, mask_upload, margins: Sequence[int] = (0, 0, 0, 0),
                 **options) -> Request:
  """The :class:`Request` of the page's inputs, or :class:`seamless_jax.inpaint.InputError`.

  editor: gradio's ImageEditor value ``{'background', 'layers', 'composite'}`` (numpy);
  mask_upload: an uploaded mask ((H, W) or (H, W, C) uint8, white = generate) or None; it wins
  over painted strokes. margins: outpaint LEFT, TOP, RIGHT, BOTTOM pixels (all 0: inpaint).
  options: the other :class:`Request` fields.
  """
  photo = photo_of((editor or {}).get("background"))
  margins = tuple(int(m or 0) for m in margins)
  mask = np.asarray(mask_upload) if mask_upload is not None else painted_mask(
      (editor or {}).get("layers"))
  if any(margins):
    if mask is not None:
      raise inpaint.InputError("give a mask (painted or uploaded) or outpaint margins, not both")
    photo, mask = inpaint.outpaint_canvas(photo, *margins)
  elif mask is None:
    raise inpaint.InputError("no mask: paint the region to generate on the photo, upload a "
                             "mask (white = generate) or set outpaint margins")
  keep = inpaint.mask_to_keep(mask, photo.shape[:2])  # the size / aspect / empty-mask checks
  return Request(photo, keep, outpaint=any(margins), **options)


# ============================================================================ the app

def apply_paste(mode: str, results: np.ndarray, inputs: np.ndarray, keep: np.ndarray
                ) -> np.ndarray:
  """``results`` (N, H, W, 3) uint8 after the paste mode (one of :data:`PASTE_MODES`, each
  :func:`seamless_jax.inpaint.apply_paste_back`'s mode of the same position)."""
  if mode not in PASTE_MODES:
    raise inpaint.InputError(f"paste mode must be one of {', '.join(PASTE_MODES)}, got {mode!r}")
  if mode == "none":
    return results
  fix = inpaint.PASTE_BACK_MODES[PASTE_MODES.index(mode) - 1]
  return inpaint.apply_paste_back(fix, results, inputs, keep)


def seam_panel(name: str, result: np.ndarray, request: Request) -> Panel:
  """The :class:`Panel` of one result (uint8 (H, W, 3)) of ``request``."""
  excess = (None if request.outpaint
            else metrics.excess_color_distance(result, request.image, request.keep))
  return Panel(name, result, pictures.border_close_up(result, request.keep, CLOSE_UP_SIZE),
               metrics.color_distance(result, request.keep), excess)


def seam_report(panels: Sequence[Panel], request: Request, seconds: float,
                compiled: bool) -> str:
  """Markdown: a row per decoder with its seam CD and excess CD, then what the numbers mean
  and how long the run took."""
  lines = ["| decoder | seam CD | excess CD |", "|---|---|---|"]
  for panel in panels:
    excess = "n/a (outpaint)" if panel.excess_cd is None else f"{panel.excess_cd:+.2f}"
    lines.append(f"| {panel.name} | {panel.cd:.2f} | {excess} |")
  height, width = request.image.shape[:2]
  lines += ["", "Seam CD: mean RGB distance (0–255) across the mask border (lower = smoother); "
            "excess CD: minus the photo's own CD on that border (0 = as smooth as the photo).",
            "", f"{width}x{height} px, {request.steps} DDIM steps, paste: {request.paste}; "
            f"{seconds:.1f} s" + (" (including the one-time compilation)" if compiled else "")]
  return "\n".join(lines)


def decoder_name(source: str) -> str:
  """'decoder of <folder name>': short enough for a table column."""
  return f"decoder of {os.path.basename(os.path.normpath(source)) or source}"


class SeamApp:
  """The app without a page: an :class:`~seamless_jax.inpaint.Inpainter` and, optionally, a
  second decoder that renders the same latents (``compare``: ``(name, full VAE params)``).

  :meth:`run` turns a :class:`Request` into an :class:`Outcome`; results are written as PNGs
  under ``out_dir`` (a temporary folder by default) for the download.
  """

  def __init__(self, pipe: inpaint.Inpainter, *, name: str = "model's decoder",
               compare: tuple[str, dict] | None = None, out_dir: str | None = None):
    self.pipe, self.name, self.compare = pipe, name, compare
    self.out_dir = out_dir or tempfile.mkdtemp(prefix="seamless_jax_app_")
    self._sizes: set[tuple[int, int, int]] = set()
    self._runs = 0

  @classmethod
  def load(cls, model: str, *, compare_vae: str | None = None, out_dir: str | None = None,
           **load_options) -> "SeamApp":
    """Loads ``model`` as ``python -m seamless_jax.inpaint`` does (``load_options``: those of
    :meth:`seamless_jax.inpaint.Inpainter.load`, e.g. ``vae=`` the Eq. 6 decoder);
    ``compare_vae``: a VAE source whose decoder also renders every result."""
    pipe = inpaint.Inpainter.load(model, **load_options)
    vae, dtype = load_options.get("vae"), load_options.get("dtype")
    compare = None
    if compare_vae:
      _, base = loading.load_vae(compare_vae, dtype=dtype or inpaint.default_dtype())
      params = loading.with_decoder(pipe.pipeline.vae_params, base)
      compare = (decoder_name(compare_vae), jax.device_put(params))
    name = decoder_name(vae) if vae else "model's decoder"
    return cls(pipe, name=name, compare=compare, out_dir=out_dir)

  def compiles(self, request: Request) -> bool:
    """Whether ``request`` is the first at its image size and step count (it compiles)."""
    return (*request.image.shape[:2], int(request.steps)) not in self._sizes

  def run(self, request: Request,
          on_step: Callable[[int, int], None] | None = None) -> Outcome:
    """Generates ``request`` (``on_step(done, total)`` hears each DDIM step), renders it with
    every decoder, applies the paste mode, scores the seams and writes the download."""
    t0, compiled = time.perf_counter(), self.compiles(request)
    generation = self.pipe.generate(
        [request.image], [~request.keep], request.prompt, request.negative_prompt,
        num_inference_steps=int(request.steps), guidance_scale=float(request.guidance),
        seed=int(request.seed), on_step=on_step)
    renders = [(self.name, generation.images)]
    if self.compare is not None:
      renders.append((self.compare[0], self.pipe.decode(generation, self.compare[1])))
    panels = [seam_panel(name, apply_paste(request.paste, images, generation.inputs,
                                           generation.keep)[0], request)
              for name, images in renders]
    self._sizes.add((*request.image.shape[:2], int(request.steps)))
    report = seam_report(panels, request, time.perf_counter() - t0, compiled)
    return Outcome(panels, report, self._save(panels[0].result))

  def _save(self, result: np.ndarray) -> str:
    self._runs += 1
    path = os.path.join(self.out_dir, f"result_{self._runs:04d}.png")
    Image.fromarray(result).save(path)
    return path


# ============================================================================ the page (gradio)

def import_gradio():
  """gradio (its usage statistics off: nothing leaves this machine unless ``--share``), or
  :class:`seamless_jax.inpaint.InputError` saying how to install it."""
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
  try:
    import gradio  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise inpaint.InputError(f"{INSTALL_HINT} ({e})") from None
  return gradio


def in_this_context(fn: Callable) -> Callable:
  """``fn`` callable from any thread as if from this one: gradio's ``Progress`` finds its
  request through context variables, and the sampler's step reports arrive on XLA's thread."""
  context, lock = contextvars.copy_context(), threading.Lock()

  def call(*args, **kwargs):
    with lock:  # a context is entered by one thread at a time
      return context.run(fn, *args, **kwargs)
  return call


def page_outputs(outcome: Outcome, compare: bool) -> list:
  """The output components' values: result, close-up (and the compare pair), report, file."""
  values = [outcome.panels[0].result, outcome.panels[0].close_up]
  if compare:
    values += [outcome.panels[1].result, outcome.panels[1].close_up]
  return values + [outcome.report, outcome.path]


def build_ui(app: SeamApp, gr, *, default_steps: int = 50):
  """The gradio ``Blocks`` page over ``app`` (module doc); ``gr``: the gradio module."""
  compare = app.compare is not None
  with gr.Blocks(title="Seamless inpainting (JAX)") as page:
    gr.Markdown("## Seamless inpainting: paint a mask, look at the seam\n"
                f"Model: `{inpaint.describe(app.pipe.info)}`"
                + (f"; also rendered by the {app.compare[0]}" if compare else ""))
    with gr.Row():
      with gr.Column():
        editor = gr.ImageEditor(
            label="photo: upload, then paint the region to generate", type="numpy",
            image_mode="RGBA", format="png", layers=False, elem_id="photo",
            sources=("upload", "clipboard"), brush=gr.Brush(colors=["#ffffff"]))
        mask = gr.Image(label="or upload a mask (white = generate)", type="numpy",
                        image_mode="L", sources=("upload",), elem_id="mask")
        with gr.Accordion("outpaint: grow the canvas by (px)", open=False):
          with gr.Row():
            margins = [gr.Number(0, label=side, precision=0, minimum=0)
                       for side in ("left", "top", "right", "bottom")]
        prompt = gr.Textbox(inpaint.DEFAULT_PROMPT, label="prompt", elem_id="prompt")
        negative = gr.Textbox("", label="negative prompt")
        with gr.Row():
          steps = gr.Number(default_steps, label="DDIM steps", precision=0, minimum=1,
                            maximum=1000, elem_id="steps")
          guidance = gr.Number(3.0, label="guidance", minimum=0.0)
          seed = gr.Number(0, label="seed", precision=0, minimum=0)
        paste = gr.Radio(list(PASTE_MODES), value="none", label="paste the known pixels back")
        run = gr.Button("Inpaint", variant="primary", elem_id="run")
      with gr.Column():
        outputs = _result_images(gr, app.name, "result")
        if compare:
          outputs += _result_images(gr, app.compare[0], "compare")
        outputs += [gr.Markdown(elem_id="report"),
                    gr.File(label="download the result (PNG)", elem_id="download")]

    def on_run(editor_value, mask_value, left, top, right, bottom, prompt_text, negative_text,
               steps_value, guidance_value, seed_value, paste_mode, progress=gr.Progress()):
      try:
        request = page_request(editor_value, mask_value, (left, top, right, bottom),
                               prompt=prompt_text, negative_prompt=negative_text,
                               steps=int(steps_value or 0), guidance=float(guidance_value or 0),
                               seed=int(seed_value or 0), paste=paste_mode)
        if app.compiles(request):
          gr.Info(COMPILE_NOTE)
          progress(0, desc=COMPILE_NOTE)
        report = in_this_context(progress)
        outcome = app.run(request, on_step=lambda done, total: report(
            (done, total), desc="sampling", unit="DDIM steps"))
      except inpaint.InputError as e:
        raise gr.Error(str(e), print_exception=False) from None
      return page_outputs(outcome, compare)

    run.click(on_run, inputs=[editor, mask, *margins, prompt, negative, steps, guidance, seed,
                              paste], outputs=outputs)
  return page


def _result_images(gr, name: str, elem_id: str) -> list:
  """A result and its border close-up, labelled with the decoder's name."""
  return [gr.Image(label=f"result ({name})", format="png", elem_id=elem_id,
                   interactive=False, height=CLOSE_UP_SIZE, elem_classes=["seam-image"]),
          gr.Image(label=f"mask border close-up ({name})", format="png",
                   elem_id=f"{elem_id}_close_up", interactive=False, height=CLOSE_UP_SIZE,
                   elem_classes=["seam-image"])]


def launch(app: SeamApp, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           default_steps: int = 50, block: bool = True):
  """Serves the page (one generation at a time: one device); returns the gradio page."""
  gr = import_gradio()
  page = build_ui(app, gr, default_steps=default_steps)
  page.queue(default_concurrency_limit=1)
  page.launch(server_name=host, server_port=port, share=share, allowed_paths=[app.out_dir],
              prevent_thread_lock=not block, css=PAGE_CSS)
  return page


# ============================================================================ CLI

def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m seamless_jax.app",
      description="A web page to inpaint/outpaint photos with BLD and look at the seam (needs "
                  "the [app] extra: pip install -e \".[app]\").",
      epilog="Mask: white = generate. The first run at each image size compiles the sampler.")
  inpaint.add_model_arguments(parser)  # --model, --vae... as python -m seamless_jax.inpaint
  parser.add_argument("--compare-vae", default=None, metavar="BASE",
                      help="a second VAE source whose decoder renders the same latents side by "
                           "side (e.g. the base SD-1.5 folder; default: none)")
  parser.add_argument("--steps", type=int, default=50,
                      help="DDIM steps the page starts with (default 50, the paper's)")
  parser.add_argument("--host", default="127.0.0.1",
                      help="address to serve on (default 127.0.0.1: this machine only; "
                           "0.0.0.0 for others on the network)")
  parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
  parser.add_argument("--share", action="store_true",
                      help="also make a temporary public gradio.live link (e.g. on Colab; "
                           "default: off)")
  parser.add_argument("--verbose", action="store_true",
                      help="show library log messages (checkpoint reading etc.)")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  with inpaint.user_command(args.verbose):
    import_gradio()  # before loading weights: a missing extra is the first thing said
    t0 = time.perf_counter()
    app = SeamApp.load(args.model, compare_vae=args.compare_vae,
                       **inpaint.model_options(args))
    print(f"loaded {inpaint.describe(app.pipe.info)} in {time.perf_counter() - t0:.1f}s; "
          f"serving on http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr,
          flush=True)
    launch(app, host=args.host, port=args.port, share=args.share, default_steps=args.steps)
  return 0


if __name__ == "__main__":
  sys.exit(main())
