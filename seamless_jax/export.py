"""Training checkpoint (orbax workdir) -> diffusers folder that PyTorch users load directly.

``python -m seamless_jax.export --workdir W [--step N] [--ema/--no-ema] --out DIR [--base DIR]
[--vae W_OR_DIR]``

* A ``two_step`` / ``standard`` workdir becomes a complete ``StableDiffusionPipeline`` folder:
  ``model_index.json``, ``unet/`` (the trained weights), ``scheduler/`` (DDIM with the run's β
  schedule and ``prediction_type="v_prediction"``: these runs train v-prediction, paper Alg. 1),
  and ``vae/``, ``text_encoder/``, ``tokenizer/``. The parts training did not change are copied
  file by file from the base model (``--base``, default the run's ``config.pretrained``; only
  ``*.safetensors`` / ``*.json`` / ``*.txt`` files are copied). Tiny runs have no base folder:
  their frozen random models are written from the params training used (bit-identical).
  ``--vae`` puts the decoder of a VAE source (a ``vae_finetune`` workdir: the blend-aware Eq. 6
  decoder, or an exported VAE folder) beside the base encoder in ``vae/``.
* A ``vae_finetune`` workdir becomes a VAE folder (``config.json`` +
  ``diffusion_pytorch_model.safetensors``): ``diffusers.AutoencoderKL.from_pretrained(DIR)`` loads
  it, the drop-in "seamless VAE" for an SD-1.5 pipeline (``pipe.vae = vae``).

Checkpoints are read through :mod:`seamless_jax.loading` (host numpy, no device mesh, so a run
saved on any mesh exports on one host). Weights are written with ``safetensors.numpy``; this
module imports no torch. The folder is assembled under ``DIR.partial-<pid>`` and renamed to
``DIR`` at the end, so a crash leaves no half export under ``DIR``.
"""

from __future__ import annotations

from seamless_jax import console

console.import_jax_quietly()  # first: no JAX plugin start-up chatter on this command's console
# pylint: disable=wrong-import-position

import argparse
import contextlib
import json
import os
import shutil
import sys
from typing import Callable
from importlib import metadata

from seamless_jax import convert
from seamless_jax import loading
from seamless_jax import objectives
from seamless_jax import workdir as workdir_lib
from seamless_jax.runtime import hardware

# File kinds copied from a base model's part folder; everything else (pickles, ONNX, Flax
# msgpack) is left behind: the export is safetensors-only.
COPIED_SUFFIXES = (".safetensors", ".json", ".txt")
# Part folder -> the weights stem its safetensors must have (None: no weights, e.g. tokenizer).
BASE_PARTS = {"text_encoder": convert.TRANSFORMERS_WEIGHTS, "tokenizer": None,
              "vae": convert.DIFFUSERS_WEIGHTS}


class ExportError(ValueError):
  """An export that cannot be made as asked; the message names the folder or flag at fault."""


Log = Callable[[str], None]


def _print(message: str) -> None:
  print(f"export: {message}", flush=True)


# ============================================================================ entry points

def export(workdir: str, out: str, *, step: int | None = None, ema: bool = True,
           base: str | None = None, vae: str | None = None, vae_step: int | None = None,
           overwrite: bool = False, log: Log = _print) -> str:
  """Exports ``workdir`` (any mode) to ``out``; returns ``out``. See the module docstring."""
  objective = objectives.for_config(workdir_lib.read_config(workdir))
  if objective.exports == "vae":
    if vae or base:
      raise ExportError(f"{workdir} is a {objective.name} workdir (exports a VAE folder): "
                        "--vae and --base apply to two_step/standard workdirs only")
    return export_vae(workdir, out, step=step, ema=ema, overwrite=overwrite, log=log)
  return export_pipeline(workdir, out, step=step, ema=ema, base=base, vae=vae,
                         vae_step=vae_step, overwrite=overwrite, log=log)


def export_vae(workdir: str, out: str, *, step: int | None = None, ema: bool = True,
               overwrite: bool = False, log: Log = _print) -> str:
  """A ``vae_finetune`` workdir -> a diffusers ``AutoencoderKL`` folder at ``out``.

  The VAE is complete: the trained parts (decoder + post_quant_conv by default) over the frozen
  ones the run started from.
  """
  _check_out(out, overwrite)
  log(f"reading {workdir} ...")
  model = loading.restore_workdir(workdir, step=step, ema=ema, dtype="float32")
  log(f"{workdir}: mode {objectives.for_config(model.config).name}, step {model.step}, "
      f"{_weights_name(model.ema)}")
  with _staging(out, overwrite, log) as folder:
    log("writing the VAE (config.json, diffusion_pytorch_model.safetensors)")
    convert.write_vae(model.models.vae, model.vae_params, folder)
  return out


def export_pipeline(workdir: str, out: str, *, step: int | None = None, ema: bool = True,
                    base: str | None = None, vae: str | None = None,
                    vae_step: int | None = None, overwrite: bool = False,
                    log: Log = _print) -> str:
  """A ``two_step`` / ``standard`` workdir (+ the decoder of ``vae``) -> a diffusers
  ``StableDiffusionPipeline`` folder at ``out``."""
  _check_out(out, overwrite)
  config = workdir_lib.read_config(workdir)
  base = _base_folder(workdir, config, base)
  log(f"reading {workdir} ..." + (f" and the VAE decoder of {vae}" if vae else ""))
  pipe = loading.load_pipeline(workdir, step=step, ema=ema, vae=vae, vae_step=vae_step,
                               dtype="float32")
  info = pipe.info
  log(f"{workdir}: mode {info['mode']}, step {info['step']}, {_weights_name(info['ema'])}; "
      f"base parts from {base or 'the run (tiny random models, no pretrained folder)'}")
  # The VAE is the base's file when training used the base's and no decoder replaces it.
  copy_vae = bool(base) and not vae and not config.get("vae_pretrained", "")
  with _staging(out, overwrite, log) as folder:
    log("writing unet/ (trained weights)")
    convert.write_unet(pipe.unet, pipe.unet_params, os.path.join(folder, "unet"))
    if copy_vae:
      _copy_part(base, "vae", folder, log)
    else:
      log("writing vae/" + (f" (decoder from {vae})" if vae else " (the VAE training used)"))
      convert.write_vae(pipe.vae, pipe.vae_params, os.path.join(folder, "vae"))
    if base:
      _copy_part(base, "text_encoder", folder, log)
      _copy_part(base, "tokenizer", folder, log)
    else:
      log("writing text_encoder/ and tokenizer/ (the frozen models training used)")
      convert.write_text_encoder(pipe.text_encoder, pipe.text_encoder_params,
                                os.path.join(folder, "text_encoder"))
      _copy_files(loading.workdir_tokenizer_folder(config, workdir),
                  os.path.join(folder, "tokenizer"))
    scheduler = loading.scheduler_config(config)
    log(f"writing scheduler/ ({scheduler['_class_name']}, "
        f"prediction_type={scheduler['prediction_type']}) and model_index.json")
    _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), scheduler)
    _write_json(os.path.join(folder, "model_index.json"), model_index(scheduler["_class_name"]))
  return out


def model_index(scheduler_class: str) -> dict:
  """``model_index.json`` of an exported SD-1.5 pipeline (no safety checker)."""
  return {"_class_name": "StableDiffusionPipeline",
          "_diffusers_version": _diffusers_version(),
          "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
          "text_encoder": ["transformers", "CLIPTextModel"],
          "tokenizer": ["transformers", "CLIPTokenizer"],
          "scheduler": ["diffusers", scheduler_class],
          "safety_checker": [None, None], "feature_extractor": [None, None],
          "image_encoder": [None, None], "requires_safety_checker": False}


# ============================================================================ helpers

def _diffusers_version() -> str:
  """The installed diffusers version for the folder header (none installed: an old one that
  every diffusers >= 0.30 reads)."""
  try:
    return metadata.version("diffusers")
  except metadata.PackageNotFoundError:
    return "0.30.0"


def _weights_name(ema: bool) -> str:
  return "EMA weights" if ema else "raw (non-EMA) weights"


def _base_folder(workdir: str, config, base: str | None) -> str:
  """The folder the untouched parts come from ('' for tiny runs without one)."""
  if base is None:
    base = workdir_lib.resolve_path(config.get("pretrained", ""), workdir)
  if not base:
    return ""
  if not os.path.isfile(os.path.join(base, "model_index.json")):
    raise ExportError(f"base model {base} is not a diffusers pipeline folder (no model_index"
                      ".json); pass --base DIR: the SD-1.5 folder the run started from")
  for part, weights in BASE_PARTS.items():
    folder = os.path.join(base, part)
    if not os.path.isdir(folder):
      raise ExportError(f"base model {base} has no {part}/ folder")
    if weights and not any(name.startswith(weights) and name.endswith(
        (".safetensors", ".safetensors.index.json")) for name in os.listdir(folder)):
      raise ExportError(f"{folder} has no {weights}.safetensors (pickle weights are not "
                        "exported; convert the base model to safetensors first)")
  return base


def _copy_part(base: str, part: str, folder: str, log: Log) -> None:
  log(f"copying {part}/ from {base}")
  _copy_files(os.path.join(base, part), os.path.join(folder, part))


def _copy_files(source: str, target: str) -> None:
  """Copies the safetensors/json/txt files of ``source`` (not recursive) into ``target``."""
  os.makedirs(target, exist_ok=True)
  for name in sorted(os.listdir(source)):
    path = os.path.join(source, name)
    if os.path.isfile(path) and name.endswith(COPIED_SUFFIXES):
      shutil.copyfile(path, os.path.join(target, name))


def _write_json(path: str, content: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(content, f, indent=2, sort_keys=True)


def _check_out(out: str, overwrite: bool) -> None:
  if os.path.exists(out) and not overwrite and not _is_empty_dir(out):
    raise ExportError(f"--out {out} already exists; choose another folder or pass --overwrite")


def _is_empty_dir(path: str) -> bool:
  return os.path.isdir(path) and not os.listdir(path)


@contextlib.contextmanager
def _staging(out: str, overwrite: bool, log: Log):
  """Yields a fresh sibling folder of ``out``; renames it to ``out`` when the block succeeds
  and removes it when the block fails."""
  out = os.path.abspath(out)
  staging = f"{out}.partial-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  try:
    yield staging
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  _check_out(out, overwrite)  # nobody wrote there meanwhile
  old = f"{out}.old-{os.getpid()}"
  if os.path.lexists(out):
    os.replace(out, old)
  os.replace(staging, out)
  if os.path.isdir(old):
    shutil.rmtree(old)
  elif os.path.lexists(old):
    os.remove(old)
  log(f"done: {out} ({_size_mb(out):.1f} MB)")


def _size_mb(folder: str) -> float:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(folder) for name in names) / 2 ** 20


# ============================================================================ CLI

def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m seamless_jax.export",
      description="Export a training workdir (orbax checkpoint) to a diffusers folder.")
  parser.add_argument("--workdir", required=True, help="training workdir (config.json + "
                      "checkpoints/); a vae_finetune workdir exports a VAE folder")
  parser.add_argument("--out", required=True, help="output folder (created; must not exist "
                      "unless --overwrite)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                      help="export the EMA weights (default) or the raw ones (--no-ema)")
  parser.add_argument("--base", default=None, help="SD-1.5 diffusers folder the untouched parts "
                      "are copied from (default: the run's config.pretrained)")
  parser.add_argument("--vae", default=None, help="VAE source whose decoder goes into vae/: a "
                      "vae_finetune workdir (Eq. 6 decoder) or a VAE/SD-1.5 folder")
  parser.add_argument("--vae-step", type=int, default=None,
                      help="checkpoint step of a --vae workdir (default latest)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  hardware.start_backends()  # without the plugins' start-up chatter on a CPU machine
  try:
    export(args.workdir, args.out, step=args.step, ema=args.ema, base=args.base, vae=args.vae,
           vae_step=args.vae_step, overwrite=args.overwrite)
  except (loading.SourceError, convert.ConversionError, ExportError, FileNotFoundError) as e:
    print(f"export: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
