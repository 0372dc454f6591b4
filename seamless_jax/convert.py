"""diffusers / transformers folders <-> Flax params, with ONE rename/transpose table.

Flax parameter paths mirror the PyTorch state-dict keys: a module list entry
``down_blocks.0`` is the Flax submodule ``down_blocks_0``, and leaves are
renamed and transposed as follows (used in both directions):

=================  ===============  ======================================
Flax leaf          PyTorch leaf     layout
=================  ===============  ======================================
``kernel`` (4-D)   ``weight``       HWIO  <->  OIHW   (convolutions)
``kernel`` (2-D)   ``weight``       (in, out) <-> (out, in)  (linear)
``scale``          ``weight``       same  (GroupNorm / LayerNorm)
``embedding``      ``weight``       same  (nn.Embed)
``bias``           ``bias``         same
=================  ===============  ======================================

Readers (``read_unet``, ``read_vae``, ``read_text_encoder``, ``read_pipeline``) take only
``*.safetensors`` (sharded ``*.index.json`` too) and never unpickle; missing, unexpected or
mis-shaped weights are an error listing them. Writers (``write_*``) produce the same layout,
loadable by ``diffusers``/``transformers`` ``from_pretrained``. These handle diffusers folders
only; :mod:`seamless_jax.loading` loads any model source (a folder or a training workdir).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from importlib import metadata
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from seamless_jax.data.tokenizer import CLIPTokenizer
from seamless_jax.diffusion import schedule as schedule_lib
from seamless_jax.models import AutoencoderKL, CLIPTextModel, UNet2DConditionModel

# Flax submodule names of the form ``<container>_<index>`` that are PyTorch
# ModuleLists (``<container>.<index>``). Anything else keeps its underscores
# (``linear_1``, ``conv_in``, ``time_emb_proj``).
LIST_CONTAINERS = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers",
                   "upsamplers", "transformer_blocks", "to_out", "net", "layers")
_LIST_ENTRY = re.compile(r"^(%s)_(\d+)$" % "|".join(LIST_CONTAINERS))

# Leaf name in Flax -> leaf name in PyTorch.
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}

# Old diffusers VAE checkpoints name the mid-block attention differently.
LEGACY_KEY_RENAMES = ((".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."),
                      (".proj_attn.", ".to_out.0."))

# PyTorch buffers that are not parameters.
IGNORED_TORCH_KEYS = re.compile(r"(^|\.)position_ids$")

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
TRANSFORMERS_WEIGHTS = "model"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ConversionError(ValueError):
  """A checkpoint folder does not match the module it is loaded into."""


# --------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------
def torch_key(flax_path: tuple[str, ...]) -> str:
  """``('down_blocks_0', 'resnets_1', 'conv1', 'kernel')`` -> ``down_blocks.0.resnets.1.conv1.weight``."""
  *modules, leaf = flax_path
  if leaf not in LEAF_NAMES:
    raise ConversionError(f"no PyTorch name for Flax leaf {'/'.join(flax_path)}")
  parts = [_LIST_ENTRY.sub(r"\1.\2", name) for name in modules]
  return ".".join(parts + [LEAF_NAMES[leaf]])


def to_torch_layout(flax_path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  """Flax array -> the PyTorch tensor layout of the same weight."""
  if flax_path[-1] == "kernel":
    if value.ndim == 4:
      return np.transpose(value, (3, 2, 0, 1))
    if value.ndim == 2:
      return value.T
  return value


def from_torch_layout(flax_path: tuple[str, ...], value: np.ndarray,
                      flax_shape: tuple[int, ...]) -> np.ndarray:
  """PyTorch tensor -> Flax layout; inverse of `to_torch_layout`.

  A (out, in, 1, 1) 1x1-conv weight is accepted where Flax has a Dense kernel
  (legacy VAE attention checkpoints store projections that way).
  """
  if flax_path[-1] == "kernel":
    if len(flax_shape) == 4 and value.ndim == 4:
      return np.transpose(value, (2, 3, 1, 0))
    if len(flax_shape) == 2:
      if value.ndim == 4 and value.shape[2:] == (1, 1):
        value = value[:, :, 0, 0]
      if value.ndim == 2:
        return value.T
  return value


# --------------------------------------------------------------------------
# State dicts <-> Flax params.
# --------------------------------------------------------------------------
def params_to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flax param tree -> PyTorch-named, PyTorch-laid-out float32 numpy arrays."""
  state = {}
  for path, value in traverse_util.flatten_dict(dict(params)).items():
    array = np.asarray(jax.device_get(value), dtype=np.float32)
    state[torch_key(path)] = np.ascontiguousarray(to_torch_layout(path, array))
  return state


def state_dict_to_params(state: Mapping[str, np.ndarray], param_shapes: Mapping[str, Any],
                         source: str = "checkpoint") -> dict:
  """PyTorch-named arrays -> a Flax param tree shaped like ``param_shapes``.

  Args:
    state: key -> array, PyTorch names and layouts.
    param_shapes: the module's param tree (arrays or `jax.ShapeDtypeStruct`).
    source: file or folder named in error messages.

  Raises:
    ConversionError: listing missing, unexpected and mis-shaped weights.
  """
  state = {_modern_key(k): v for k, v in state.items() if not IGNORED_TORCH_KEYS.search(k)}
  flat_shapes = traverse_util.flatten_dict(dict(param_shapes))
  state = _with_root_prefix(state, flat_shapes)
  params, missing, bad_shapes, used = {}, [], [], set()
  for path, target in flat_shapes.items():
    key = torch_key(path)
    if key not in state:
      missing.append(key)
      continue
    used.add(key)
    value = from_torch_layout(path, np.asarray(state[key]), tuple(target.shape))
    if tuple(value.shape) != tuple(target.shape):
      bad_shapes.append(f"{key}: file {tuple(state[key].shape)}, model expects "
                        f"{_torch_shape(path, tuple(target.shape))}")
      continue
    params[path] = np.asarray(value, dtype=np.float32)
  unexpected = sorted(set(state) - used)
  if missing or unexpected or bad_shapes:
    raise ConversionError(_mismatch_message(source, missing, unexpected, bad_shapes))
  return traverse_util.unflatten_dict(params)


def _with_root_prefix(state: Mapping[str, np.ndarray], flat_shapes: Mapping[tuple, Any]) -> dict:
  """Restores a single-root tree's prefix that the file omits.

  transformers >= 5 saves ``CLIPTextModel`` without its ``text_model.`` prefix
  (and strips it when loading); classic SD-1.5 files keep it. The Flax tree
  keeps ``text_model`` so both load.
  """
  roots = {path[0] for path in flat_shapes}
  if len(roots) != 1:
    return dict(state)
  prefix = roots.pop() + "."
  if any(key.startswith(prefix) for key in state):
    return dict(state)
  return {prefix + key: value for key, value in state.items()}


def _modern_key(key: str) -> str:
  for old, new in LEGACY_KEY_RENAMES:
    if ".attentions." in key and old in key:
      key = key.replace(old, new)
  return key


def _torch_shape(path, flax_shape):
  return tuple(to_torch_layout(path, np.empty(flax_shape, dtype=np.uint8)).shape)


def _mismatch_message(source, missing, unexpected, bad_shapes) -> str:
  lines = [f"weights in {source} do not match the model:"]
  for title, keys in (("missing", missing), ("unexpected", unexpected),
                      ("wrong shape", bad_shapes)):
    if keys:
      shown = ", ".join(keys[:20]) + (f" ... (+{len(keys) - 20} more)" if len(keys) > 20 else "")
      lines.append(f"  {title} ({len(keys)}): {shown}")
  return "\n".join(lines)


# --------------------------------------------------------------------------
# Files.
# --------------------------------------------------------------------------
def read_safetensors_folder(folder: str, weights_name: str, variant: str | None = None
                            ) -> dict[str, np.ndarray]:
  """Reads ``<weights_name>[.variant].safetensors`` or its sharded index from ``folder``.

  Raises:
    FileNotFoundError: with the folder content when no safetensors exist, and a
      conversion hint when only pickle files (``.bin``, ``.ckpt``...) are there.
  """
  stem = f"{weights_name}.{variant}" if variant else weights_name
  single = os.path.join(folder, f"{stem}.safetensors")
  index = os.path.join(folder, f"{stem}.safetensors.index.json")
  if os.path.isfile(single):
    files = [single]
  elif os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
  else:
    raise FileNotFoundError(_no_weights_message(folder, stem))
  state = {}
  for path in files:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"shard {path} listed in {index} does not exist")
    try:
      with safe_open(path, framework="numpy") as f:  # host memory; bf16 via ml_dtypes
        for key in f.keys():
          state[key] = np.asarray(f.get_tensor(key))
    except Exception as e:  # noqa: BLE001  OSError, or safetensors' SafetensorError(Exception)
      raise ConversionError(f"cannot read {path} (corrupt or not safetensors): {e}") from e
  return state


def _no_weights_message(folder: str, stem: str) -> str:
  if not os.path.isdir(folder):
    return f"model folder {folder} does not exist"
  pickles = [p for p in sorted(os.listdir(folder)) if p.endswith(PICKLE_SUFFIXES)]
  if pickles:
    return (f"{folder} holds only pickle weights ({', '.join(pickles)}); seamless_jax never "
            f"unpickles files. Convert once to safetensors, e.g. in PyTorch: "
            f"`Model.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`.")
  return (f"no {stem}.safetensors (or {stem}.safetensors.index.json) in {folder}; "
          f"found: {', '.join(sorted(os.listdir(folder))) or 'nothing'}")


def read_config(folder: str) -> dict:
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config.json in model folder {folder}")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ConversionError(f"{path} is not valid JSON: {e}") from e


def write_folder(folder: str, config: Mapping[str, Any], state: Mapping[str, np.ndarray],
                 weights_name: str) -> None:
  """Writes ``config.json`` and ``<weights_name>.safetensors`` into ``folder``.

  The weights go to a temporary name first and are renamed into place, so a
  crash never leaves a truncated file under the real name.
  """
  os.makedirs(folder, exist_ok=True)
  weights_path = os.path.join(folder, f"{weights_name}.safetensors")
  save_file(dict(state), weights_path + ".tmp", metadata={"format": "pt"})
  os.replace(weights_path + ".tmp", weights_path)
  config_path = os.path.join(folder, "config.json")
  with open(config_path + ".tmp", "w") as f:
    json.dump(dict(config), f, indent=2, sort_keys=True)
  os.replace(config_path + ".tmp", config_path)


# --------------------------------------------------------------------------
# Per-model entry points.
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelFormat:
  """How one model kind is stored: its Flax class, weights file stem and config header."""
  module_cls: Callable[..., Any]
  weights_name: str
  header: Callable[[], dict]


def _diffusers_header(class_name: str) -> Callable[[], dict]:
  def header():
    return {"_class_name": class_name, "_diffusers_version": _package_version("diffusers", "0.30.0")}
  return header


def _package_version(name: str, fallback: str) -> str:
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return fallback


def _formats() -> dict[str, ModelFormat]:
  return {
      "unet": ModelFormat(UNet2DConditionModel, DIFFUSERS_WEIGHTS,
                          _diffusers_header("UNet2DConditionModel")),
      "vae": ModelFormat(AutoencoderKL, DIFFUSERS_WEIGHTS, _diffusers_header("AutoencoderKL")),
      "text_encoder": ModelFormat(CLIPTextModel, TRANSFORMERS_WEIGHTS, dict),
  }


def param_shapes(module) -> dict:
  """The module's param tree as `jax.ShapeDtypeStruct`s, without allocating."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *module.dummy_inputs()))["params"]


def read_model(kind: str, folder: str, *, variant: str | None = None, **runtime):
  """Loads ``(module, params)`` of ``kind`` in {'unet', 'vae', 'text_encoder'} from ``folder``."""
  fmt = _formats()[kind]
  config = read_config(folder)
  try:
    module = fmt.module_cls.from_config(config, **runtime)
  except ValueError as e:
    raise ConversionError(f"{os.path.join(folder, 'config.json')}: {e}") from e
  state = read_safetensors_folder(folder, fmt.weights_name, variant)
  params = state_dict_to_params(state, param_shapes(module), source=folder)
  return module, params


def write_model(kind: str, module, params, folder: str) -> None:
  """Writes ``module``/``params`` as a diffusers/transformers folder."""
  fmt = _formats()[kind]
  config = {**fmt.header(), **module.to_config()}
  write_folder(folder, config, params_to_state_dict(params), fmt.weights_name)


def read_unet(folder: str, **runtime):
  """``(UNet2DConditionModel, params)`` from a diffusers ``unet/`` folder."""
  return read_model("unet", folder, **runtime)


def read_vae(folder: str, **runtime):
  """``(AutoencoderKL, params)`` from a diffusers ``vae/`` folder."""
  return read_model("vae", folder, **runtime)


def read_text_encoder(folder: str, **runtime):
  """``(CLIPTextModel, params)`` from a transformers ``text_encoder/`` folder."""
  return read_model("text_encoder", folder, **runtime)


def write_unet(module, params, folder: str) -> None:
  write_model("unet", module, params, folder)


def write_vae(module, params, folder: str) -> None:
  write_model("vae", module, params, folder)


def write_text_encoder(module, params, folder: str) -> None:
  write_model("text_encoder", module, params, folder)


# --------------------------------------------------------------------------
# Whole Stable Diffusion folders.
# --------------------------------------------------------------------------
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")


@dataclasses.dataclass
class Pipeline:
  """The parts of an SD-1.5 diffusers folder, as Flax modules and params.

  ``scheduler_config`` is the raw ``scheduler/scheduler_config.json`` dict
  (``prediction_type``, ``beta_schedule``, ...); ``tokenizer`` is a
  `seamless_jax.data.tokenizer.CLIPTokenizer` or None when the folder has none.
  """
  unet: Any
  unet_params: Any
  vae: Any
  vae_params: Any
  text_encoder: Any
  text_encoder_params: Any
  tokenizer: Any
  scheduler_config: dict
  info: dict = dataclasses.field(default_factory=dict)  # where it came from (seamless_jax.loading)


def read_pipeline(folder: str, *, variant: str | None = None, **runtime) -> Pipeline:
  """Loads an SD-1.5 diffusers folder (``model_index.json``, unet/, vae/, text_encoder/,
  tokenizer/, scheduler/). ``runtime`` (dtype, attention_implementation, remat)
  applies to all three models. No transformers/diffusers import happens here.
  """
  index_path = os.path.join(folder, "model_index.json")
  if not os.path.isfile(index_path):
    raise FileNotFoundError(f"{folder} is not a diffusers pipeline folder: no model_index.json")
  with open(index_path) as f:
    index = json.load(f)
  for part in ("unet", "vae", "text_encoder"):
    if part not in index:
      raise ConversionError(f"{index_path} lists no {part!r} component")
  unet, unet_params = read_model("unet", os.path.join(folder, "unet"), variant=variant, **runtime)
  vae, vae_params = read_model("vae", os.path.join(folder, "vae"), variant=variant, **runtime)
  text, text_params = read_model("text_encoder", os.path.join(folder, "text_encoder"),
                                 variant=variant, **runtime)
  return Pipeline(unet, unet_params, vae, vae_params, text, text_params,
                  _load_tokenizer(os.path.join(folder, "tokenizer")),
                  _read_json(os.path.join(folder, "scheduler", "scheduler_config.json"), {}))


def write_pipeline(pipeline: Pipeline, folder: str, *, tokenizer_folder: str | None = None,
                  scheduler_overrides: Mapping[str, Any] | None = None) -> None:
  """Writes a diffusers ``StableDiffusionPipeline`` folder loadable by ``from_pretrained``.

  ``scheduler_overrides`` updates the scheduler config (e.g.
  ``{'prediction_type': schedule.TRAINED_PREDICTION_TYPE}`` after two-step training).
  """
  os.makedirs(folder, exist_ok=True)
  write_unet(pipeline.unet, pipeline.unet_params, os.path.join(folder, "unet"))
  write_vae(pipeline.vae, pipeline.vae_params, os.path.join(folder, "vae"))
  write_text_encoder(pipeline.text_encoder, pipeline.text_encoder_params,
                    os.path.join(folder, "text_encoder"))
  if tokenizer_folder:
    os.makedirs(os.path.join(folder, "tokenizer"), exist_ok=True)
    for name in TOKENIZER_FILES:
      if os.path.isfile(os.path.join(tokenizer_folder, name)):
        shutil.copy(os.path.join(tokenizer_folder, name), os.path.join(folder, "tokenizer", name))
  scheduler = {**SD15_SCHEDULER, **pipeline.scheduler_config, **(scheduler_overrides or {})}
  _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), scheduler)
  index = {"_class_name": "StableDiffusionPipeline",
           "_diffusers_version": _package_version("diffusers", "0.30.0"),
           "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
           "text_encoder": ["transformers", "CLIPTextModel"],
           "tokenizer": ["transformers", "CLIPTokenizer"] if tokenizer_folder else [None, None],
           "scheduler": ["diffusers", scheduler.get("_class_name", "DDIMScheduler")],
           "safety_checker": [None, None], "feature_extractor": [None, None],
           "requires_safety_checker": False}
  _write_json(os.path.join(folder, "model_index.json"), index)


# SD-1.5's DDIM scheduler config as written to ``scheduler/scheduler_config.json``.
SD15_SCHEDULER = {"_class_name": "DDIMScheduler", **schedule_lib.SD15_SCHEDULER}


def _load_tokenizer(folder: str):
  if not any(os.path.isfile(os.path.join(folder, name))
             for name in ("vocab.json", "tokenizer.json")):
    return None
  return CLIPTokenizer.from_folder(folder)


def _read_json(path: str, default):
  if not os.path.isfile(path):
    return default
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, content) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(content, f, indent=2)
  os.replace(path + ".tmp", path)
