"""Image folder / metadata.jsonl -> ArrayRecord shards (the fast path for big runs).

    python -m seamless_jax.data.prepare --src DIR --out OUT_DIR \
        [--split train] [--min-side 512] [--min-aesthetic 6.0] [--shard-size 2000]

``--min-side 512 --min-aesthetic 6.0`` is the paper's LAION-Aesthetics filter (records without an
``aesthetic_score`` fail a positive ``--min-aesthetic``). Each record stores the encoded image
bytes as they are (no re-encoding), the caption, the size, the score and the optional saliency
map (see ``sources.encode_record``). Output: ``OUT_DIR/<split>-00000-of-000NN.array_record``,
read with ``data.source='arrayrecord'``, ``data.path=OUT_DIR``. Unreadable images and missing
captions are left out and counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os

from PIL import Image
from array_record.python import array_record_module

from seamless_jax.data.sources import ImageFolderSource, encode_record


@dataclasses.dataclass
class PrepareStats:
  written: int = 0
  too_small: int = 0
  low_aesthetic: int = 0
  bad: int = 0
  shards: tuple[str, ...] = ()


def prepare(src: str, out_dir: str, *, split: str = "train", min_side: int = 0,
            min_aesthetic: float | None = None, shard_size: int = 2000) -> PrepareStats:
  """Filters ``src`` (image folder) and writes ArrayRecord shards to ``out_dir``."""
  source = ImageFolderSource(src, split)
  stats = PrepareStats()
  kept = []
  for i in range(len(source)):
    record = source[i]
    if record["image"] is None or not record["text"]:
      stats.bad += 1
      continue
    try:
      with Image.open(io.BytesIO(record["image"])) as img:
        width, height = img.size  # header only: fast
    except Exception:  # pylint: disable=broad-except
      stats.bad += 1
      continue
    if min(width, height) < min_side:
      stats.too_small += 1
      continue
    score = record["aesthetic_score"]
    if min_aesthetic is not None and (math.isnan(score) or score < min_aesthetic):
      stats.low_aesthetic += 1
      continue
    kept.append((i, width, height))
  os.makedirs(out_dir, exist_ok=True)
  num_shards = max(1, math.ceil(len(kept) / shard_size))
  paths = []
  for shard in range(num_shards):
    path = os.path.join(out_dir, f"{split}-{shard:05d}-of-{num_shards:05d}.array_record")
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for i, width, height in kept[shard * shard_size:(shard + 1) * shard_size]:
      record = source[i]
      writer.write(encode_record(
          record["image"], record["text"], name=os.path.basename(record["name"]),
          width=width, height=height, aesthetic_score=record["aesthetic_score"],
          saliency=record["saliency"]))
      stats.written += 1
    writer.close()
    paths.append(path)
  stats.shards = tuple(paths)
  return stats


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m seamless_jax.data.prepare",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True, help="image folder (imagefolder layout)")
  parser.add_argument("--out", required=True, help="output folder for .array_record shards")
  parser.add_argument("--split", default="train",
                      help="split of the image folder to read; also the shard name prefix "
                           "(default: train)")
  parser.add_argument("--min-side", type=int, default=0,
                      help="drop images with a shorter side (default 0: keep all; the paper: "
                           "512)")
  parser.add_argument("--min-aesthetic", type=float, default=None,
                      help="drop records with a lower (or no) aesthetic_score (default: no "
                           "filter; the paper: 6.0)")
  parser.add_argument("--shard-size", type=int, default=2000,
                      help="records per shard (default 2000)")
  return parser


def main(argv=None) -> None:
  args = build_parser().parse_args(argv)
  stats = prepare(args.src, args.out, split=args.split, min_side=args.min_side,
                  min_aesthetic=args.min_aesthetic, shard_size=args.shard_size)
  print(f"wrote {stats.written} records in {len(stats.shards)} shards to {args.out}; "
        f"dropped {stats.too_small} too small, {stats.low_aesthetic} below the aesthetic "
        f"threshold, {stats.bad} unreadable or without caption")


if __name__ == "__main__":
  main()
