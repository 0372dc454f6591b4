"""Makes the README's before/after figure from the demo run (README command 1).

    python docs/make_demo_figure.py --model runs/demo --out docs/demo_figure.png --paste-back

Rows: inpainting (a hole in the background) and outpainting (a quarter of the width added on
each side) of the astronaut photo shipped with scikit-image, at ``--size`` pixels. Columns:
before (the hole shown grey), after, and a 4x close-up of the mask border. Prints the Color
Distance (CD) of each result and of the photo on the same border.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from seamless_jax import inpaint
from seamless_jax import metrics
from seamless_jax import pictures

GREY = np.array([128, 128, 128], np.uint8)


def astronaut(size: int) -> np.ndarray:
  import skimage.data  # pylint: disable=import-outside-toplevel
  return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((size, size), Image.LANCZOS))


def panel(image: np.ndarray, height: int) -> Image.Image:
  """``image`` enlarged (nearest, a whole factor) to about ``height`` px."""
  return Image.fromarray(pictures.upscale_nearest(image, height))


def figure_row(pipe, image, mask, steps: int, height: int, label: str, paste_back: bool):
  [result] = pipe(image, mask, num_inference_steps=steps, seed=0, paste_back=paste_back)
  keep = mask <= 127
  before = np.where(keep[..., None], image, GREY)
  side = image.shape[0] // 2
  panels = [panel(before, height), panel(result, height),
            panel(pictures.close_up(result, keep, side), height)]
  cd = metrics.color_distance(result, keep), metrics.color_distance(image, keep)
  print(f"{label}: CD of the result {cd[0]:.2f} (photo on the same border {cd[1]:.2f})")
  return panels, f"{label}: before | after | border close-up (CD {cd[0]:.1f})"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="runs/demo")
  parser.add_argument("--vae", default=None)
  parser.add_argument("--out", default="docs/demo_figure.png")
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--paste-back", action="store_true",
                      help="copy the known pixels over the result (needed when the model's VAE "
                           "cannot reconstruct them, e.g. the demo's random tiny VAE)")
  args = parser.parse_args()

  pipe = inpaint.Inpainter.load(args.model, vae=args.vae)
  image = astronaut(args.size)
  hole = np.zeros(image.shape[:2], np.uint8)
  hole[args.size // 8: args.size // 2, args.size // 2: 7 * args.size // 8] = 255
  canvas, side_mask = inpaint.outpaint_canvas(image, args.size // 4, 0, args.size // 4, 0)
  height = 4 * args.size
  rows = [figure_row(pipe, image, hole, args.steps, height, "inpainting", args.paste_back),
          figure_row(pipe, canvas, side_mask, args.steps, height, "outpainting", args.paste_back)]
  gap, caption = 8, 18
  width = max(sum(p.width for p in panels) + gap * (len(panels) - 1) for panels, _ in rows)
  sheet = Image.new("RGB", (width, len(rows) * (height + caption + gap)), "white")
  draw = ImageDraw.Draw(sheet)
  y = 0
  for panels, text in rows:
    draw.text((2, y + 3), text, fill="black")
    x = 0
    for picture in panels:
      sheet.paste(picture, (x, y + caption))
      x += picture.width + gap
    y += height + caption + gap
  sheet.save(args.out)
  print("wrote", args.out, sheet.size)


if __name__ == "__main__":
  main()
