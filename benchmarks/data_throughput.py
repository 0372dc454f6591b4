"""Images/s of the Grain input pipeline at 512x512 on this machine.

    python benchmarks/data_throughput.py [--workers 0 1 2] [--seconds 20] [--data DIR]

Without --data it writes the bundled demo set (JPEG, shorter side 640 so every image is
decoded, resized and cropped as for LAION data) to a temporary folder. Reports steady-state
images/s per worker setting (after a warm-up batch) and a per-stage breakdown in one process.
"""

import argparse
import os
import tempfile
import time

import numpy as np

from seamless_jax.data import demo, get_data_config, make_dataset
from seamless_jax.data import masks as masks_lib
from seamless_jax.data.sources import ImageFolderSource
from seamless_jax.data.tokenizer import CLIPTokenizer
from seamless_jax.data.transforms import ExamplePreparer


def measure(config, batch_size, seconds):
  it = iter(make_dataset(config, batch_size=batch_size, seed=0))
  next(it)  # warm-up: worker start, first decode
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    count += len(next(it)["image"])
  return count / (time.perf_counter() - start)


def stage_breakdown(config, n=40):
  source = ImageFolderSource(config.path)
  tok = CLIPTokenizer.from_folder(config.tokenizer_dir)
  prep = ExamplePreparer(config, tok)
  rng = np.random.default_rng(0)
  records = [source[i % len(source)] for i in range(n)]
  t0 = time.perf_counter()
  for r in records:
    prep(r, rng)
  total = (time.perf_counter() - t0) / n
  image = np.zeros((config.resolution,) * 2 + (3,), np.uint8)
  mix = masks_lib.MaskMixture.from_config(config.masks)
  t0 = time.perf_counter()
  for _ in range(n):
    masks_lib.sample_keep(rng, image + rng.integers(0, 255, dtype=np.uint8), mix)
  mask = (time.perf_counter() - t0) / n
  t0 = time.perf_counter()
  for r in records:
    tok([r["text"]])
  text = (time.perf_counter() - t0) / n
  return total, mask, text


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--seconds", type=float, default=20)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--resolution", type=int, default=512)
  parser.add_argument("--data", default="")
  args = parser.parse_args()
  data = args.data or demo.write_demo_dataset(tempfile.mkdtemp(), resolution=640)
  config = get_data_config()
  config.path, config.tokenizer_dir = data, os.path.join(data, "tokenizer")
  config.resolution = args.resolution
  config.read_threads = 1
  total, mask, text = stage_breakdown(config)
  print(f"one example, one core: {total * 1e3:.1f} ms total ({1 / total:.1f} img/s); "
        f"mask {mask * 1e3:.1f} ms, tokenise {text * 1e3:.2f} ms")
  for workers in args.workers:
    config.worker_count = workers
    rate = measure(config, args.batch, args.seconds)
    print(f"workers={workers}: {rate:.1f} img/s at {args.resolution}^2 "
          f"(batch {args.batch}, {os.cpu_count()} cores)")


if __name__ == "__main__":
  main()
