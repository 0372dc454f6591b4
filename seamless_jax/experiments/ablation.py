"""The paper's ablation (Table 4) end to end: train, fine-tune, evaluate, write the report.

    python -m seamless_jax.experiments.ablation --scale small --workdir runs/ablation
    python -m seamless_jax.experiments.ablation --scale medium --workdir runs/ablation_medium
    python -m seamless_jax.experiments.ablation --scale smoke --workdir /tmp/ablation_smoke
    python -m seamless_jax.experiments.ablation --scale sd15 --workdir runs/ablation_sd15 \\
        --pretrained /ckpt/stable-diffusion-v1-5 --lpips /ckpt/lpips_vgg.safetensors \\
        --data '/data/laion/*.arrayrecord' --data-source arrayrecord \\
        --eval-images /data/brushbench/images

Stages (each is skipped when its output exists, so a rerun resumes):
  data       small scales: the bundled demo photos at ``resolution``, split into
             ``data/train`` and the held-out ``data/eval`` (photos in ``scales.EVAL_PHOTOS``).
  init       small scales: randomly initialised models (the scale's configs) as a diffusers folder.
  base_vae   small scales: VAE (encoder + decoder) from scratch, plain reconstruction D(E(x));
             exported as ``base_vae/`` with the scaling factor 1/std of its latents.
  base_unet  small scales: UNet from scratch, standard v-prediction objective, on base_vae's
             latents; ``base/`` = base UNet + base VAE + text encoder (the "base model").
             At ``sd15`` the base model is ``--pretrained``.
  eq6_vae    Eq. 6 decoder fine-tune from the base (encoder frozen).
  plain_vae  the decoder's control: the same fine-tune (decoder, steps, batch, learning rate,
             data, seed) on ordinary reconstructions D(E(x)) instead of Eq. 6 blends; Eq. 6 −
             plain is the method's effect, Eq. 6 − base also contains the extra training.
  two_step   two-step UNet fine-tune (Alg. 1) from the base.
  standard   standard v-prediction UNet fine-tune from the base, same steps and batch as
             two_step: the "base" UNet of the comparison (equal training, only the loss differs).
  eval       BLD on held-out images with inpaint and outpaint masks for each UNet with each
             decoder (base, Eq. 6, plain fine-tune), the post-hoc fixes (paste-back, blurred
             paste-back, Poisson blending) of the base row, and the VAE-only measurement
             (``evaluate.py``); ``eval/results.json``.
  report     ``<report>`` Markdown + PNG figures (``report.py``).
Wall time per stage goes to ``timings.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

import jax
import numpy as np
from PIL import Image

from seamless_jax import build
from seamless_jax import convert
from seamless_jax import loading
from seamless_jax.data import demo
from seamless_jax.data import transforms
from seamless_jax.data.tokenizer import CLIPTokenizer
from seamless_jax.diffusion import schedule as schedule_lib
from seamless_jax.experiments import evaluate
from seamless_jax.experiments import report
from seamless_jax.experiments import scales as scales_lib
from seamless_jax.models import AutoencoderKL, CLIPTextModel, UNet2DConditionModel
from seamless_jax.train import loop

TRAIN_STAGES = ("base_vae", "base_unet", "eq6_vae", "plain_vae", "two_step", "standard")
ALL_STAGES = ("data", "init") + TRAIN_STAGES + ("eval", "report")


# ============================================================================ paths

class Paths:
  """Where each stage writes, under the experiment's workdir."""

  def __init__(self, workdir: str, *, pretrained: str = "", data: str = "",
               eval_images: str = ""):
    self.root = os.path.abspath(workdir)
    self.data_all = os.path.join(self.root, "data", "all")
    self.train_data = data or os.path.join(self.root, "data", "train")
    self.eval_images = eval_images or os.path.join(self.root, "data", "eval")
    self.init = os.path.join(self.root, "init")
    self.base_vae = os.path.join(self.root, "base_vae")
    self.base = pretrained or os.path.join(self.root, "base")
    self.eval = os.path.join(self.root, "eval")
    self.timings = os.path.join(self.root, "timings.json")

  def run(self, stage: str) -> str:
    return os.path.join(self.root, "runs", stage)

  def tokenizer(self) -> str:
    for folder in (os.path.join(self.train_data, "tokenizer"),
                   os.path.join(self.base, "tokenizer")):
      if os.path.isdir(folder):
        return folder
    raise FileNotFoundError(f"no tokenizer: neither {self.train_data}/tokenizer nor "
                            f"{self.base}/tokenizer exists")


# ============================================================================ data + init

def recolour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A random colour variant of uint8 (H, W, 3): channel permutation, then per-channel gain
  (0.7–1.3) and offset (±25). Half of the demo photos are grey, and a VAE trained on ten
  photos otherwise learns their palette and casts it onto held-out photos."""
  x = image[..., rng.permutation(3)].astype(np.float32)
  x = x * rng.uniform(0.7, 1.3, 3) + rng.uniform(-25, 25, 3)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def split_demo_data(paths: Paths, resolution: int, tiles_per_image: int, seed: int = 0) -> None:
  """Demo photos -> ``data/train`` + held-out ``data/eval`` (image folders).

  The photos are written at 4x ``resolution`` (shorter side, at least 128 px). Training gets
  every variant of the training photos at ``resolution`` plus ``tiles_per_image`` random square
  crops of each (30–100 % of the shorter side, resized to ``resolution``, :func:`recolour`ed):
  ten photos are few for a VAE, and more distinct patches and colours generalise better to the
  held-out photos. The held-out
  variants are copied at full size (the evaluation resizes and centre-crops them).
  """
  if os.path.isfile(os.path.join(paths.eval_images, "metadata.jsonl")):
    return
  demo.write_demo_dataset(paths.data_all, resolution=max(128, 4 * resolution))
  with open(os.path.join(paths.data_all, "metadata.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  prefixes = tuple(name + "_" for name in scales_lib.EVAL_PHOTOS)
  held_out = [r for r in rows if r["file_name"].startswith(prefixes)]
  train = [r for r in rows if not r["file_name"].startswith(prefixes)]
  rng = np.random.default_rng(seed)
  train_rows = []
  os.makedirs(paths.train_data, exist_ok=True)
  for row in train:
    with Image.open(os.path.join(paths.data_all, row["file_name"])) as img:
      img = img.convert("RGB")
    stem = os.path.splitext(row["file_name"])[0]
    side = min(img.size)
    scale = resolution / side
    views = [(f"{stem}.jpg", img.resize((max(resolution, round(img.width * scale)),
                                         max(resolution, round(img.height * scale))),
                                        Image.BICUBIC))]
    for k in range(tiles_per_image):
      size = int(side * rng.uniform(0.3, 1.0))
      left = int(rng.integers(0, img.width - size + 1))
      top = int(rng.integers(0, img.height - size + 1))
      tile = img.crop((left, top, left + size, top + size)).resize((resolution, resolution),
                                                                   Image.BICUBIC)
      views.append((f"{stem}_tile{k}.jpg", Image.fromarray(recolour(np.asarray(tile), rng))))
    for name, view in views:
      view.save(os.path.join(paths.train_data, name), quality=95)
      train_rows.append({"file_name": name, "text": row["text"]})
  os.makedirs(paths.eval_images, exist_ok=True)
  for row in held_out:
    shutil.copy(os.path.join(paths.data_all, row["file_name"]), paths.eval_images)
  for folder, chosen in ((paths.train_data, train_rows), (paths.eval_images, held_out)):
    shutil.copytree(os.path.join(paths.data_all, "tokenizer"), os.path.join(folder, "tokenizer"),
                    dirs_exist_ok=True)
    with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(row) + "\n" for row in chosen)


def write_init_folder(paths: Paths, scale: scales_lib.Scale, seed: int) -> None:
  """Randomly initialised VAE, UNet and text encoder of the scale as a diffusers folder."""
  if os.path.isfile(os.path.join(paths.init, "model_index.json")):
    return
  tokenizer = CLIPTokenizer.from_folder(paths.tokenizer())
  unet_config = dict(scale.unet_config)
  text_config = build.tiny_text_config(tokenizer.vocab_size)
  text_config["hidden_size"] = text_config["projection_dim"] = unet_config["cross_attention_dim"]
  vae = AutoencoderKL.from_config(scale.vae_config)
  unet = UNet2DConditionModel.from_config(unet_config)
  text = CLIPTextModel.from_config(text_config)
  k_vae, k_unet, k_text = jax.random.split(jax.random.PRNGKey(seed), 3)
  def init(module, key):  # compiled like training's random init (LLVM -O0 on CPU: runs once)
    inputs = (key, *module.dummy_inputs())
    params = build.compile_init(jax.jit(module.init), *inputs)(*inputs)["params"]
    return jax.tree.map(np.asarray, params)
  scheduler = {"prediction_type": schedule_lib.TRAINED_PREDICTION_TYPE}
  pipe = convert.Pipeline(unet, init(unet, k_unet), vae, init(vae, k_vae), text,
                          init(text, k_text), None, scheduler)
  convert.write_pipeline(pipe, paths.init, tokenizer_folder=paths.tokenizer(),
                        scheduler_overrides=scheduler)


def latent_scaling_factor(vae, vae_params, image_folder: str, resolution: int,
                          max_images: int = 32) -> float:
  """1 / std of the VAE's latent means on ``image_folder`` (LDM's rule for ``scale_factor``)."""
  images = evaluate.read_eval_images(image_folder, resolution, max_images)
  x = transforms.image_to_float(images)
  mean, _ = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=vae.encode))(vae_params, x)
  return float(1.0 / np.std(np.asarray(mean)))


def export_base_vae(paths: Paths, resolution: int) -> None:
  """``runs/base_vae`` -> ``base_vae/`` (a VAE folder) with its measured scaling factor."""
  if os.path.isfile(os.path.join(paths.base_vae, "config.json")):
    return
  vae, params = loading.load_vae(paths.run("base_vae"), dtype="float32")
  factor = latent_scaling_factor(vae, params, paths.train_data, resolution)
  convert.write_vae(vae.clone(scaling_factor=factor), params, paths.base_vae)


def export_base_model(paths: Paths) -> None:
  """``runs/base_unet`` (+ its VAE and text encoder) -> ``base/`` diffusers folder."""
  if os.path.isfile(os.path.join(paths.base, "model_index.json")):
    return
  pipe = loading.load_pipeline(paths.run("base_unet"), dtype="float32")
  convert.write_pipeline(
      pipe, paths.base, tokenizer_folder=paths.tokenizer(),
      scheduler_overrides={"prediction_type": schedule_lib.TRAINED_PREDICTION_TYPE})


# ============================================================================ training

def train_stage(stage: str, scale: scales_lib.Scale, paths: Paths, args) -> dict:
  """Runs one training stage (resumes / returns at once when already finished)."""
  starts = {"base_vae": paths.init, "base_unet": paths.init}
  config = scales_lib.stage_config(
      scale, stage, configs_dir=args.configs or None,
      pretrained=starts.get(stage, paths.base), train_data=paths.train_data,
      tokenizer_dir=paths.tokenizer(),
      vae_pretrained=paths.base_vae if stage == "base_unet" else "",
      lpips_path=args.lpips, seed=args.seed, data_source=args.data_source)
  if args.steps:
    config.total_steps = args.steps
    config.checkpoint_every = min(int(config.checkpoint_every), args.steps)
  return loop.train(config, paths.run(stage))


def _record_time(paths: Paths, stage: str, seconds: float) -> None:
  """Adds a training stage's time (a resumed run adds up); other stages replace theirs."""
  timings = {}
  if os.path.isfile(paths.timings):
    with open(paths.timings, encoding="utf-8") as f:
      timings = json.load(f)
  before = timings.get(stage, 0.0) if stage in TRAIN_STAGES else 0.0
  timings[stage] = round(before + seconds, 1)
  with open(paths.timings, "w", encoding="utf-8") as f:
    json.dump(timings, f, indent=1)


def hardware() -> str:
  """One line: CPU model and count (or the accelerator), platform, jax version."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    name = platform.processor() or "CPU"
    try:
      with open("/proc/cpuinfo", encoding="utf-8") as f:
        name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
      pass
    what = f"{name}, {os.cpu_count()} cores"
  else:
    what = f"{jax.device_count()} x {device.device_kind}"
  return f"{what}; {platform.system()} {platform.release()}; jax {jax.__version__}"


def record_invocation(path: str, scale_name: str) -> None:
  """Appends this command line to ``path`` (the report lists every command that ran)."""
  info = {}
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
  commands = info.get("commands", [info["argv"]] if "argv" in info else [])
  info.update(scale=scale_name, hardware=hardware(), commands=commands + [list(sys.argv)])
  with open(path, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)


def run(args) -> None:
  scale = scales_lib.get_scale(args.scale, eval_images=args.eval_count,
                               num_inference_steps=args.inference_steps)
  if scale.from_scratch and (args.pretrained or args.data):
    raise ValueError(f"--scale={scale.name} trains from scratch on the demo photos; "
                     "--pretrained/--data belong to --scale=sd15")
  if not scale.from_scratch and not (args.pretrained and args.data and args.eval_images):
    raise ValueError(f"--scale={scale.name} needs --pretrained (SD-1.5 diffusers folder), "
                     "--data (training images) and --eval-images (held-out image folder)")
  paths = Paths(args.workdir, pretrained=args.pretrained, data=args.data,
                eval_images=args.eval_images)
  os.makedirs(paths.root, exist_ok=True)
  stages = args.stages.split(",") if args.stages else list(ALL_STAGES)
  for stage in stages:
    if stage not in ALL_STAGES:
      raise ValueError(f"--stages: unknown stage {stage!r}; expected some of {ALL_STAGES}")
  if not scale.from_scratch:
    stages = [s for s in stages if s not in ("data", "init", "base_vae", "base_unet")]
  record_invocation(os.path.join(paths.root, "ablation_args.json"), scale.name)
  for stage in stages:
    print(f"=== ablation stage {stage} ({scale.name})", flush=True)
    start = time.time()
    if stage == "data":
      split_demo_data(paths, scale.resolution, scale.tiles_per_image, args.seed)
    elif stage == "init":
      write_init_folder(paths, scale, args.seed)
    elif stage in TRAIN_STAGES:
      train_stage(stage, scale, paths, args)
      if stage == "base_vae":
        export_base_vae(paths, scale.resolution)
      elif stage == "base_unet":
        export_base_model(paths)
    elif stage == "eval":
      evaluate.evaluate_ablation(paths, scale, args)
    elif stage == "report":
      report.write_report(paths, scale, args.report)
    elapsed = time.time() - start
    if stage != "report":
      _record_time(paths, stage, elapsed)
    print(f"=== ablation stage {stage} done in {elapsed:.1f} s", flush=True)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scale", required=True, choices=sorted(scales_lib.SCALES))
  p.add_argument("--workdir", required=True, help="experiment folder (every stage writes here)")
  p.add_argument("--stages", default="", help=f"comma-separated subset of {','.join(ALL_STAGES)}")
  p.add_argument("--report", default="", help="Markdown report path (default WORKDIR/results.md)")
  p.add_argument("--configs", default="", help="the checkout's configs/ folder (default: found)")
  p.add_argument("--pretrained", default="", help="sd15: SD-1.5 diffusers folder (the base)")
  p.add_argument("--data", default="", help="sd15: training data (image folder or ArrayRecord)")
  p.add_argument("--data-source", default="folder", choices=("folder", "arrayrecord", "tfds"),
                 help="sd15: format of --data (config.data.source)")
  p.add_argument("--eval-images", default="", help="sd15: held-out image folder to evaluate on")
  p.add_argument("--lpips", default="", help="converted LPIPS safetensors (VAE loss, required "
                                             "at sd15)")
  p.add_argument("--fid-weights", default="", help="pytorch-fid Inception weights: adds FID")
  p.add_argument("--clip", default="", help="CLIP ViT-L/14 folder (with --aesthetic-head): AS")
  p.add_argument("--aesthetic-head", default="", help="LAION aesthetic linear head weights")
  p.add_argument("--steps", type=int, default=0, help="override every stage's training steps")
  p.add_argument("--eval-count", type=int, default=None, help="held-out images evaluated")
  p.add_argument("--inference-steps", type=int, default=None, help="BLD steps (default 50)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  args.report = args.report or os.path.join(args.workdir, "results.md")
  return args


def main(argv=None) -> None:
  run(parse_args(argv))


if __name__ == "__main__":
  main()
