"""BrushBench runner: the paper's inpaint/outpaint evaluation (Sec. 4, Tables 1–2).

    # our model (a training workdir or diffusers folder; --vae = the Eq. 6 VAE-finetune workdir)
    python -m seamless_jax.eval.brushbench --bench data/BrushBench --out runs/bb_ours \\
        --model runs/two_step --vae runs/vae_finetune --name Ours \\
        --inception pt_inception-2015-12-05-6726825d.pth \\
        --clip clip-vit-large-patch14 --aesthetic-head sa_0_4_vit_l_14_linear.pth
    # the plain SD-1.5 + BLD baseline: the same command with --model stable-diffusion-v1-5, no --vae
    # another method's images: --images DIR (DIR/inpaint/<stem>.png, DIR/outpaint/<stem>.png)

Benchmark layout (BrushNet's BrushBench): ``BENCH/mapping_file.json`` maps a key to
``{"image": "images/<file>", "caption": ..., "inpainting_mask": RLE, "outpainting_mask": RLE}``,
the image path relative to ``BENCH``. RLE (BrushNet's ``rle2mask``): a flat list of
``start, length`` pairs, starts 1-based, over the row-major flattened (H, W) mask; 1 = generate
(decoded by :func:`seamless_jax.data.masks.rle_decode`).

Masks. Outpaint: ``outpainting_mask`` as given. Inpaint (paper Sec. 4): the segmentation mask is
replaced by its convex hull (``skimage.morphology.convex_hull_image`` of all mask pixels),
"slightly expanded": dilated by ``--hull-dilation`` pixels (square element; the paper gives no
number, default 10 px on BrushBench's 512² images); :func:`seamless_jax.data.masks.benchmark_hole`.
The masks used are written to ``OUT/masks/<task>/<stem>.png`` (white = generate) so other
methods can be run on exactly them.

Outputs in ``OUT``: generated images ``<task>/<stem>.png`` (resumable: existing files are
skipped), ``per_image.csv`` (CD, excess CD, kept-region PSNR, aesthetic score per image and
task), ``results.csv`` and ``results.md`` (the paper's table: FID / AS / CD per task, plus
excess CD and kept-region PSNR), ``contact_sheet.png``.

Metrics: CD, excess CD, PSNR from :mod:`seamless_jax.metrics` with ``keep`` = not
generated; FID (:mod:`seamless_jax.eval.fid`) between a task's outputs and the benchmark's
source images; AS (:mod:`seamless_jax.eval.aesthetic`) mean over the outputs. FID and AS need
their weight files and are left empty without them. An output whose size differs from its
source image is resized to it (bicubic) before scoring.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import os
import time
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from seamless_jax import inpaint
from seamless_jax import metrics
from seamless_jax.data import masks as masks_lib
from seamless_jax.eval import aesthetic
from seamless_jax.eval import fid
from seamless_jax.models import lpips as lpips_model

TASKS = ("inpaint", "outpaint")
MASK_KEYS = {"inpaint": "inpainting_mask", "outpaint": "outpainting_mask"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# The paper's Tables 1 and 2 (BrushBench, 512²), for the reference rows of results.md.
PAPER_ROWS = (
    ("paper: Ours", "inpaint", 15.434, 5.991, 8.538),
    ("paper: BLD", "inpaint", 18.466, 5.367, 15.735),
    ("paper: Ours", "outpaint", 19.530, 6.131, 10.249),
)


# ============================================================================ benchmark I/O

@dataclasses.dataclass(frozen=True)
class Entry:
  """One BrushBench item: ``image_path`` absolute; ``rle`` maps a task to its RLE list."""
  key: str
  image_path: str
  caption: str
  rle: dict

  @property
  def stem(self) -> str:
    """File stem shared by the source image, the generated images and the mask files."""
    return os.path.splitext(os.path.basename(self.image_path))[0]


def load_benchmark(bench_dir: str, limit: int | None = None) -> list[Entry]:
  """Entries of ``bench_dir/mapping_file.json`` in file order (first ``limit`` if given)."""
  mapping_path = os.path.join(bench_dir, "mapping_file.json")
  if not os.path.isfile(mapping_path):
    raise FileNotFoundError(f"{mapping_path} not found: --bench must be a BrushBench folder "
                            "(images/ + mapping_file.json)")
  with open(mapping_path) as f:
    mapping = json.load(f)
  entries = []
  for key, item in mapping.items():
    missing = [k for k in ("image", *MASK_KEYS.values()) if k not in item]
    if missing:
      raise ValueError(f"{mapping_path}: entry {key!r} lacks {missing}")
    image_path = os.path.join(bench_dir, item["image"])
    entries.append(Entry(key=str(key), image_path=image_path, caption=item.get("caption", ""),
                         rle={task: item[name] for task, name in MASK_KEYS.items()}))
  stems = [e.stem for e in entries]
  if len(set(stems)) != len(stems):
    raise ValueError(f"{mapping_path}: image file names are not unique")
  return entries[:limit] if limit else entries


def load_rgb(path: str) -> np.ndarray:
  """uint8 (H, W, 3) RGB of an image file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image not found: {path}")
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def generate_mask(entry: Entry, task: str, shape: tuple[int, int], dilation_px: int) -> np.ndarray:
  """bool (H, W), True = generate: the paper's mask of ``entry`` for ``task``."""
  try:
    mask = masks_lib.rle_decode(entry.rle[task], shape)
  except ValueError as err:
    raise ValueError(f"entry {entry.key!r} {MASK_KEYS[task]}: {err}") from None
  return masks_lib.benchmark_hole(mask, dilation_px) if task == "inpaint" else mask


def save_png(array: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def find_output(images_dir: str, task: str, entry: Entry) -> str | None:
  """``images_dir/<task>/<stem>.<ext>``, else ``images_dir/<task>/<key>.<ext>``; None if absent."""
  for name in (entry.stem, entry.key):
    for ext in IMAGE_EXTENSIONS:
      path = os.path.join(images_dir, task, name + ext)
      if os.path.isfile(path):
        return path
  return None


def prepare_masks(entries: Sequence[Entry], tasks: Sequence[str], out: str,
                  dilation_px: int) -> None:
  """Writes ``out/masks/<task>/<stem>.png`` (white = generate) for every entry and task."""
  for entry in entries:
    shape = None
    for task in tasks:
      path = os.path.join(out, "masks", task, entry.stem + ".png")
      if os.path.isfile(path):
        continue
      shape = shape or load_rgb(entry.image_path).shape[:2]
      save_png(generate_mask(entry, task, shape, dilation_px).astype(np.uint8) * 255, path)


def load_mask(out: str, task: str, entry: Entry) -> np.ndarray:
  """bool (H, W) generate-mask written by :func:`prepare_masks`."""
  with Image.open(os.path.join(out, "masks", task, entry.stem + ".png")) as image:
    return np.asarray(image.convert("L")) > 127


# ============================================================================ generation

def _chunks(items: list, size: int) -> Iterable[list]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def generate(load_pipe: Callable, entries: Sequence[Entry], tasks: Sequence[str], out: str, *,
             prompt: str | None, negative_prompt: str, steps: int, guidance: float, seed: int,
             batch_size: int, paste_back: bool) -> int:
  """Runs ``pipe.batch`` on every entry without an output yet; returns how many it generated.

  ``load_pipe()`` is called once, only if something is left to generate; the pipe follows
  :class:`seamless_jax.inpaint.Inpainter` (``batch(images, masks, prompts,
  negative_prompts, seed=[...], ...)``, masks uint8 white = generate). ``prompt=None`` uses each
  entry's caption. Batches hold same-size images; entry ``i`` of the benchmark gets the seed
  ``seed + i`` (the Inpainter's results do not depend on batching), so a resumed run makes the
  same images as an uninterrupted one. A short last batch is filled up with copies of its last
  image (results dropped) so every call has one shape and one compiled program. A batch the pipe
  refuses (``inpaint.InputError``, e.g. a hole that vanishes at latent size) is retried image by
  image; refused images are reported and skipped (they are then missing from the scores).
  """
  refused_error = inpaint.InputError
  index_of = {entry.key: i for i, entry in enumerate(entries)}
  made, pipe = 0, None
  for task in tasks:
    pending = [e for e in entries if find_output(out, task, e) is None]
    if not pending:
      print(f"[{task}] all {len(entries)} images exist, nothing to generate")
      continue
    by_size: dict[tuple[int, int], list[Entry]] = {}
    for entry in pending:
      with Image.open(entry.image_path) as image:  # reads the header only
        by_size.setdefault(image.size, []).append(entry)
    pipe = pipe or load_pipe()
    for group in by_size.values():
      for batch in _chunks(group, batch_size):
        start = time.perf_counter()
        images = [load_rgb(e.image_path) for e in batch]
        masks = [load_mask(out, task, e).astype(np.uint8) * 255 for e in batch]
        prompts = [prompt if prompt is not None else e.caption for e in batch]
        seeds = [seed + index_of[e.key] for e in batch]
        run = functools.partial(pipe.batch, negative_prompts=negative_prompt,
                                num_inference_steps=steps, guidance_scale=guidance,
                                paste_back=paste_back)
        fill = batch_size - len(batch)  # a short batch repeats its last image: no new compile
        try:
          outputs = run(images + images[-1:] * fill, masks + masks[-1:] * fill,
                        prompts + prompts[-1:] * fill, seed=seeds + seeds[-1:] * fill)
          outputs = outputs[:len(batch)]
        except refused_error as err:  # find the refused images one by one
          print(f"[{task}] batch refused ({err}); retrying image by image")
          outputs = []
          for image, mask, text, entry_seed, entry in zip(images, masks, prompts, seeds, batch):
            try:
              outputs += run([image], [mask], [text], seed=[entry_seed])
            except refused_error as single_err:
              print(f"[{task}] skipped {entry.stem}: {single_err}")
              outputs.append(None)
        if len(outputs) != len(batch):
          raise RuntimeError(f"pipe.batch returned {len(outputs)} images for {len(batch)} inputs")
        done = 0
        for entry, output in zip(batch, outputs):
          if output is not None:
            save_png(np.asarray(output, np.uint8), os.path.join(out, task, entry.stem + ".png"))
            done += 1
        made += done
        seconds = (time.perf_counter() - start) / max(done, 1)
        print(f"[{task}] {made} new images, {seconds:.2f} s/image", flush=True)
  return made


# ============================================================================ scoring

def _aligned_output(path: str, shape: tuple[int, int]) -> np.ndarray:
  output = load_rgb(path)
  if output.shape[:2] != shape:
    output = np.asarray(Image.fromarray(output).resize((shape[1], shape[0]), Image.BICUBIC))
  return output


def score_task(entries: Sequence[Entry], task: str, images_dir: str, out: str, *,
               lpips_fn=None) -> tuple[list[dict], list[np.ndarray], list[np.ndarray]]:
  """Per-image CD / excess CD / kept PSNR (+ masked LPIPS) of ``task``'s outputs.

  Returns (rows, outputs, sources) for the entries that have an output; missing outputs are
  reported and left out.
  """
  rows, outputs, sources = [], [], []
  missing = []
  for entry in entries:
    path = find_output(images_dir, task, entry)
    if path is None:
      missing.append(entry.stem)
      continue
    source = load_rgb(entry.image_path)
    output = _aligned_output(path, source.shape[:2])
    keep = ~load_mask(out, task, entry)
    row = {"task": task, "key": entry.key, "image": entry.stem}
    try:
      row["cd"] = metrics.color_distance(output, keep)
      row["excess_cd"] = row["cd"] - metrics.color_distance(source, keep)
    except ValueError:  # empty or full mask: no border
      row["cd"] = row["excess_cd"] = float("nan")
    row["psnr_kept"] = (metrics.masked_psnr(output, source, keep) if keep.any()
                        else float("nan"))
    if lpips_fn is not None and keep.any():
      row["lpips_kept"] = float(metrics.masked_lpips(output[None], source[None], keep[None],
                                                     lpips_fn)[0])
    rows.append(row)
    outputs.append(output)
    sources.append(source)
  if missing:
    shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    print(f"[{task}] {len(missing)} of {len(entries)} outputs missing in "
          f"{os.path.join(images_dir, task)}: {shown}")
  return rows, outputs, sources


def _finite_mean(values: Iterable[float]) -> float:
  values = np.asarray([v for v in values], np.float64)
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else float("nan")


def summarize(name: str, task: str, rows: list[dict], *, fid_value=None,
              aesthetic_scores=None) -> dict:
  """One table row: means over images (NaN/inf left out) + FID + mean AS."""
  summary = {"method": name, "task": task, "n": len(rows),
             "fid": np.nan if fid_value is None else fid_value,
             "as": np.nan if aesthetic_scores is None else float(np.mean(aesthetic_scores)),
             "cd": _finite_mean(r["cd"] for r in rows),
             "excess_cd": _finite_mean(r["excess_cd"] for r in rows),
             "psnr_kept": _finite_mean(r["psnr_kept"] for r in rows)}
  if rows and "lpips_kept" in rows[0]:
    summary["lpips_kept"] = _finite_mean(r["lpips_kept"] for r in rows)
  return summary


def _fmt(value) -> str:
  if isinstance(value, str):
    return value
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return "—"
  if isinstance(value, (int, np.integer)):
    return str(value)
  return f"{value:.3f}"


TABLE_COLUMNS = (("method", "Method"), ("task", "Task"), ("n", "N"), ("fid", "FID ↓"),
                 ("as", "AS ↑"), ("cd", "CD ↓"), ("excess_cd", "excess CD ↓"),
                 ("psnr_kept", "PSNR kept ↑"), ("lpips_kept", "LPIPS kept ↓"))


def write_tables(summaries: list[dict], rows: list[dict], out: str, settings: dict) -> str:
  """Writes results.csv, per_image.csv, results.md; returns the Markdown text."""
  columns = [c for c in TABLE_COLUMNS if any(c[0] in s for s in summaries)]
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, [key for key, _ in columns])
    writer.writeheader()
    for summary in summaries:
      writer.writerow({key: summary.get(key, "") for key, _ in columns})
  per_image_fields = ["task", "key", "image", "cd", "excess_cd", "psnr_kept", "lpips_kept", "as"]
  per_image_fields = [k for k in per_image_fields if any(k in r for r in rows)]
  with open(os.path.join(out, "per_image.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, per_image_fields)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: row.get(k, "") for k in per_image_fields})
  lines = ["# BrushBench results", "",
           "| " + " | ".join(title for _, title in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  for summary in summaries:
    lines.append("| " + " | ".join(_fmt(summary.get(key, np.nan)) for key, _ in columns) + " |")
  for method, task, fid_value, as_value, cd in PAPER_ROWS:
    paper = {"method": method, "task": task, "n": 600, "fid": fid_value, "as": as_value,
             "cd": cd}
    lines.append("| " + " | ".join(_fmt(paper.get(key, np.nan)) for key, _ in columns) + " |")
  lines += ["", "CD: mean RGB distance (0–255) over 4-neighbour pairs across the mask border; "
            "excess CD = CD(output) − CD(source) on the same border; PSNR/LPIPS over kept pixels. "
            "FID is biased at small N: compare only at the same N.", "",
            "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
  text = "\n".join(lines)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(text)
  return text


def contact_sheet(entries: Sequence[Entry], tasks: Sequence[str], images_dir: str, out: str,
                  *, max_rows: int = 8, thumb: int = 128) -> str | None:
  """``out/contact_sheet.png``: per row the source, then per task the masked input and the
  output with the mask border (the pixels on both sides) in red. Returns the path (None if no
  output exists)."""
  rows = []
  for entry in entries:
    if len(rows) == max_rows:
      break
    paths = {task: find_output(images_dir, task, entry) for task in tasks}
    if not any(paths.values()):
      continue
    source = load_rgb(entry.image_path)
    tiles = [source]
    for task in tasks:
      generate_region = load_mask(out, task, entry)
      masked = source.copy()
      masked[generate_region] = 127
      output = (_aligned_output(paths[task], source.shape[:2]) if paths[task]
                else np.zeros_like(source))
      output = output.copy()
      output[masks_lib.border_pixels(~generate_region)] = (255, 0, 0)
      tiles += [masked, output]
    rows.append(np.concatenate([_thumbnail(t, thumb) for t in tiles], axis=1))
  if not rows:
    return None
  path = os.path.join(out, "contact_sheet.png")
  save_png(np.concatenate(rows, axis=0), path)
  return path


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


# ============================================================================ CLI

def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m seamless_jax.eval.brushbench",
      description="BrushBench inpaint/outpaint evaluation (FID / AS / CD), paper Tables 1-2.")
  parser.add_argument("--bench", required=True, help="BrushBench folder (mapping_file.json)")
  parser.add_argument("--out", required=True, help="output folder (images, masks, tables)")
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--model", help="diffusers SD-1.5 folder or training workdir: generate")
  source.add_argument("--images", help="score another method's images: DIR/<task>/<stem>.png")
  parser.add_argument("--vae", help="VAE folder or vae_finetune workdir (Eq. 6 decoder)")
  parser.add_argument("--step", type=int, help="workdir checkpoint step (default: latest)")
  parser.add_argument("--no-ema", action="store_true", help="workdir: raw params, not EMA")
  parser.add_argument("--dtype", default=None,
                      help="compute dtype for generation (default: bfloat16 on GPU/TPU, float32 on CPU)")
  parser.add_argument("--name", default=None, help="method name in the table")
  parser.add_argument("--tasks", default="inpaint,outpaint",
                      help="comma list of inpaint,outpaint (default: both)")
  parser.add_argument("--limit", type=int, help="first N benchmark entries only")
  parser.add_argument("--hull-dilation", type=int, default=10,
                      help="pixels the inpaint convex hull is dilated by (default 10)")
  parser.add_argument("--prompt", default="scenery",
                      help="prompt for every image (default: scenery, the paper's); see "
                           "--use-captions")
  parser.add_argument("--use-captions", action="store_true", help="prompt = BrushBench caption")
  parser.add_argument("--negative-prompt", default="",
                      help="negative prompt, the unconditional text of CFG (default: empty)")
  parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, the paper's)")
  parser.add_argument("--guidance", type=float, default=3.0,
                      help="classifier-free guidance scale (default 3, the paper's)")
  parser.add_argument("--seed", type=int, default=0,
                      help="base seed: image i is sampled with seed + i (default 0)")
  parser.add_argument("--batch-size", type=int, default=4,
                      help="images per device call (default 4)")
  parser.add_argument("--paste-back", action="store_true",
                      help="paste the known pixels back (the Eq. 6 VAE makes this unneeded)")
  parser.add_argument("--inception", help="pt_inception-2015-12-05-6726825d.pth (for FID)")
  parser.add_argument("--clip", help="transformers CLIP ViT-L/14 folder (for AS)")
  parser.add_argument("--aesthetic-head", help="sa_0_4_vit_l_14_linear.pth (for AS)")
  parser.add_argument("--lpips", help="LPIPS safetensors from tools/convert_lpips.py (optional)")
  parser.add_argument("--device", default="cpu",
                      help="torch device for FID/AS, e.g. cuda (default: cpu)")
  parser.add_argument("--sheet-rows", type=int, default=8,
                      help="rows of contact_sheet.png (default 8)")
  return parser


def parse_args(argv=None) -> argparse.Namespace:
  parser = build_parser()
  args = parser.parse_args(argv)
  args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  unknown = sorted(set(args.tasks) - set(TASKS))
  if unknown or not args.tasks:
    parser.error(f"--tasks must be a comma list of {TASKS}, got {unknown or 'nothing'}")
  if bool(args.clip) != bool(args.aesthetic_head):
    parser.error("--clip and --aesthetic-head go together (both are needed for AS)")
  if (args.vae or args.step is not None or args.no_ema) and not args.model:
    parser.error("--vae/--step/--no-ema need --model")
  return args


def _load_inpainter(args):
  return inpaint.Inpainter.load(args.model, vae=args.vae, step=args.step, ema=not args.no_ema,
                                dtype=args.dtype)


def main(argv=None) -> str:
  """Runs the benchmark; returns the Markdown table (also written to ``OUT/results.md``)."""
  args = parse_args(argv)
  entries = load_benchmark(args.bench, args.limit)
  os.makedirs(args.out, exist_ok=True)
  prepare_masks(entries, args.tasks, args.out, args.hull_dilation)
  name = args.name or os.path.basename(os.path.normpath(args.model or args.images or args.out))
  if args.model:
    generate(lambda: _load_inpainter(args), entries, args.tasks, args.out,
             prompt=None if args.use_captions else args.prompt,
             negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance,
             seed=args.seed, batch_size=args.batch_size, paste_back=args.paste_back)
  images_dir = args.images or args.out

  lpips_fn = None
  if args.lpips:
    lpips_fn = lpips_model.load_lpips_fn(args.lpips)
  inception = scorer = None
  if args.inception:
    inception = fid.load_inception(args.inception, args.device)
  if args.clip:
    scorer = aesthetic.AestheticScorer(args.clip, args.aesthetic_head, args.device)

  summaries, all_rows, source_features = [], [], None
  for task in args.tasks:
    rows, outputs, sources = score_task(entries, task, images_dir, args.out, lpips_fn=lpips_fn)
    if not rows:
      print(f"[{task}] no outputs to score")
      continue
    fid_value = aesthetic_scores = None
    if inception is not None:
      if source_features is None:  # FID reference: all benchmark source images
        source_features = fid.inception_features(
            inception, (load_rgb(e.image_path) for e in entries), device=args.device)
      output_features = fid.inception_features(inception, outputs, device=args.device)
      fid_value = fid.fid_from_features(output_features, source_features)
    if scorer is not None:
      aesthetic_scores = scorer(outputs)
      for row, value in zip(rows, aesthetic_scores):
        row["as"] = float(value)
    summaries.append(summarize(name, task, rows, fid_value=fid_value,
                               aesthetic_scores=aesthetic_scores))
    all_rows += rows
  settings = {"bench": args.bench, "images": images_dir, "entries": len(entries),
              "hull_dilation": args.hull_dilation}
  if args.model:
    settings.update(model=args.model, vae=args.vae, step=args.step, ema=not args.no_ema,
                    prompt="captions" if args.use_captions else repr(args.prompt),
                    steps=args.steps, guidance=args.guidance, seed=args.seed,
                    paste_back=args.paste_back)
  text = write_tables(summaries, all_rows, args.out, settings)
  contact_sheet(entries, args.tasks, images_dir, args.out, max_rows=args.sheet_rows)
  print(text)
  return text


if __name__ == "__main__":
  main()
