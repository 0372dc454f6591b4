"""A small real-photo demo set in the image-folder format (no downloads).

    python -m seamless_jax.data.demo --out /tmp/demo_data [--resolution 512]

Uses the photographs shipped inside the scikit-image wheel (astronaut, coffee, cat, rocket,
motorcycle, Hubble deep field, retina, cameraman, moon, textures), plus
``sklearn.datasets.load_sample_images`` when scikit-learn is installed. Each photo gives four
images (full frame, two crops, a mirrored frame), resized so the shorter side equals
``resolution``, saved as JPEG with a short caption in ``metadata.jsonl``. The byte-level CLIP
tokenizer goes to ``OUT/tokenizer`` so the demo is self-contained (``data.tokenizer_dir``).
"""

from __future__ import annotations

import argparse
import json
import os

import skimage
from PIL import Image, ImageOps

from seamless_jax.data.tokenizer import write_byte_level_tokenizer

# file in skimage/data -> caption
SKIMAGE_PHOTOS = {
    "astronaut.png": "a portrait of an astronaut in a white space suit in front of a flag",
    "coffee.png": "a cup of coffee on a saucer with a spoon on a table",
    "chelsea.png": "a close up photo of a cat",
    "rocket.jpg": "a rocket on the launch pad under a blue sky",
    "motorcycle_left.png": "a motorcycle parked in a room",
    "hubble_deep_field.jpg": "a photo of many galaxies in the dark night sky",
    "retina.jpg": "a photo of the retina of an eye",
    "camera.png": "a black and white photo of a man with a camera in a field",
    "moon.png": "a black and white photo of the surface of the moon",
    "grass.png": "a black and white photo of grass, texture",
    "gravel.png": "a black and white photo of gravel, texture",
    "brick.png": "a black and white photo of a brick wall, texture",
    "ihc.png": "a microscope image of stained tissue",
}
_SKLEARN_CAPTIONS = {
    "china.jpg": "a temple with a roof among green trees",
    "flower.jpg": "a close up photo of a pink flower",
}


def _shipped_photos() -> list[tuple[str, Image.Image, str]]:
  """(name, RGB image, caption) for every photo available without a download."""
  folder = os.path.join(os.path.dirname(skimage.__file__), "data")
  photos = []
  for file_name, caption in SKIMAGE_PHOTOS.items():
    path = os.path.join(folder, file_name)
    if os.path.exists(path):
      with Image.open(path) as img:
        photos.append((os.path.splitext(file_name)[0], img.convert("RGB"), caption))
  try:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    bunch = datasets.load_sample_images()
    for file_name, array in zip(bunch.filenames, bunch.images):
      base = os.path.basename(file_name)
      photos.append((os.path.splitext(base)[0], Image.fromarray(array),
                     _SKLEARN_CAPTIONS.get(base, "a photo")))
  except Exception:  # pylint: disable=broad-except  (optional extra)
    pass
  if not photos:
    raise RuntimeError("no photographs found in the installed scikit-image")
  return photos


def _variants(img: Image.Image, caption: str):
  """Full frame, two crops (70 % and 80 % of the side, deterministic places), mirrored frame."""
  w, h = img.size
  yield "full", img, caption
  for tag, frac, (fx, fy) in (("crop_a", 0.7, (0.1, 0.2)), ("crop_b", 0.8, (0.9, 0.6))):
    cw, ch = int(w * frac), int(h * frac)
    left, top = int((w - cw) * fx), int((h - ch) * fy)
    yield tag, img.crop((left, top, left + cw, top + ch)), f"{caption}, detail"
  yield "flip", ImageOps.mirror(img), caption


def write_demo_dataset(out_dir: str, resolution: int = 512) -> str:
  """Writes the demo image folder (+ ``tokenizer/``) to ``out_dir``; returns ``out_dir``."""
  os.makedirs(out_dir, exist_ok=True)
  rows = []
  for name, img, caption in _shipped_photos():
    for tag, variant, text in _variants(img, caption):
      scale = resolution / min(variant.size)
      size = (max(resolution, round(variant.size[0] * scale)),
              max(resolution, round(variant.size[1] * scale)))
      variant = variant.resize(size, Image.BICUBIC)
      file_name = f"{name}_{tag}.jpg"
      variant.save(os.path.join(out_dir, file_name), quality=95)
      rows.append({"file_name": file_name, "text": text})
  with open(os.path.join(out_dir, "metadata.jsonl"), "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  write_byte_level_tokenizer(os.path.join(out_dir, "tokenizer"))
  return out_dir


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--resolution", type=int, default=512, help="shorter side of the images")
  args = parser.parse_args(argv)
  out = write_demo_dataset(args.out, args.resolution)
  count = sum(1 for _ in open(os.path.join(out, "metadata.jsonl"), encoding="utf-8"))
  print(f"wrote {count} images + tokenizer to {out}")


if __name__ == "__main__":
  main()
