"""Builds, from a training config, the Flax modules its objective needs and their params.

* :func:`build_models` returns a :class:`Models` bundle: the modules (runtime options from the
  config: dtype, attention kernel, remat) and, for each, either pretrained params read from the
  diffusers folder ``config.pretrained`` (numpy, host memory, never put on one device) or
  ``None`` = random init (``model='tiny'``). (A replacement VAE, ``config.vae_pretrained``, is
  any model source: :func:`seamless_jax.loading.build_models` adds it.)
* :func:`initial_params` gives the objective's ``(trainable, frozen)`` params, pretrained where
  given, random from ``config.seed`` otherwise; training runs it sharded
  (:mod:`seamless_jax.train.state`), :func:`initial_frozen_params` rebuilds the frozen part that
  checkpoints do not hold, bit for bit, for loading a workdir.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seamless_jax import convert
from seamless_jax import objectives
from seamless_jax.models import AutoencoderKL, CLIPTextModel, UNet2DConditionModel
from seamless_jax.models import presets
from seamless_jax.models import vae as vae_lib
from seamless_jax.runtime import compilation

MODELS = ("sd15", "tiny")  # config.model: a pretrained SD-1.5 folder, or tiny random models
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}
FROZEN_DTYPES = ("float32", "bfloat16")  # config.frozen_dtype: see cast_frozen


@dataclasses.dataclass
class Models:
  """Modules plus host-side pretrained params (``None`` where randomly initialised)."""
  vae: Any
  text: Any
  unet: Any = None            # None for mode='vae_finetune'
  vae_params: Any = None
  text_params: Any = None
  unet_params: Any = None
  scaling_factor: float = vae_lib.SD15_SCALING_FACTOR


def runtime_options(config) -> dict:
  """How the modules run: compute dtype, attention kernel, remat (off, or the policy's name)."""
  remat = str(config.get("remat_policy", "nothing_saveable")) if config.remat else False
  return dict(dtype=DTYPES[config.dtype], attention_implementation=config.attention or None,
              remat=remat)


def _require_folder(config, sub: str) -> str:
  root = config.pretrained
  if not root:
    raise ValueError("config.pretrained must name an SD-1.5 diffusers folder for model='sd15' "
                     "(or use a ':tiny'/':demo' config); it is empty")
  path = os.path.join(root, sub)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"config.pretrained={root!r} has no {sub}/ folder (expected a "
                            f"diffusers SD-1.5 folder with unet/ vae/ text_encoder/ tokenizer/)")
  return path


def _to_host(params):
  return jax.tree.map(np.asarray, params)


def tiny_text_config(vocab_size: int | None = None) -> dict:
  """TINY_TEXT, with ``vocab_size`` raised to fit a tokenizer when given."""
  cfg = dict(presets.TINY_TEXT)
  if vocab_size is not None and vocab_size > cfg.get("vocab_size", 0):
    cfg["vocab_size"] = int(vocab_size)
  return cfg


def build_models(config, vocab_size: int | None = None, *,
                 with_unet_params: bool = True, shapes_only: bool = False) -> Models:
  """Modules (+ pretrained params when ``config.model == 'sd15'``) for the config's objective.

  ``vocab_size``: the tokenizer's, to size the tiny text encoder's embedding table.
  ``with_unet_params=False`` skips reading the pretrained UNet (a caller that restores it).
  ``shapes_only``: the modules alone, no weights read (every ``*_params`` is ``None``): for
  ``sd15`` from the ``config.json`` files of ``config.pretrained`` when it is a folder, else
  from the SD-1.5 presets. What ahead-of-time compilation needs (:mod:`seamless_jax.aot`).
  """
  if shapes_only:
    return _modules_only(config, vocab_size)
  return _build_base_models(config, vocab_size, with_unet_params)


def _build_base_models(config, vocab_size, with_unet_params: bool) -> Models:
  rt = runtime_options(config)
  need_unet = objectives.for_config(config).needs_unet
  if config.model == "tiny":
    vae = AutoencoderKL.from_config(presets.TINY_VAE, **rt)
    text = CLIPTextModel.from_config(tiny_text_config(vocab_size), **rt)
    unet = (UNet2DConditionModel.from_config(presets.TINY_UNET, **rt)
            if need_unet else None)
    return Models(vae=vae, text=text, unet=unet, scaling_factor=scaling_factor(vae))

  vae, vae_params = convert.read_vae(_require_folder(config, "vae"), **rt)
  text, text_params = convert.read_text_encoder(_require_folder(config, "text_encoder"), **rt)
  unet = unet_params = None
  if need_unet:
    unet_folder = _require_folder(config, "unet")
    if with_unet_params:
      unet, unet_params = convert.read_unet(unet_folder, **rt)
      unet_params = _to_host(unet_params)
    else:
      unet = UNet2DConditionModel.from_config(convert.read_config(unet_folder), **rt)
  return Models(vae=vae, text=text, unet=unet, vae_params=_to_host(vae_params),
                text_params=_to_host(text_params), unet_params=unet_params,
                scaling_factor=scaling_factor(vae))


def _modules_only(config, vocab_size) -> Models:
  if config.model == "tiny":
    return _build_base_models(config, vocab_size, with_unet_params=False)
  rt = runtime_options(config)
  folder = config.pretrained if config.pretrained and os.path.isdir(config.pretrained) else ""

  def model_config(sub: str, preset: dict) -> dict:
    return convert.read_config(os.path.join(folder, sub)) if folder else dict(preset)

  vae = AutoencoderKL.from_config(model_config("vae", presets.SD15_VAE), **rt)
  text = CLIPTextModel.from_config(model_config("text_encoder", presets.SD15_TEXT), **rt)
  unet = (UNet2DConditionModel.from_config(model_config("unet", presets.SD15_UNET), **rt)
          if objectives.for_config(config).needs_unet else None)
  return Models(vae=vae, text=text, unet=unet, scaling_factor=scaling_factor(vae))


def scaling_factor(vae) -> float:
  """The VAE config's ``scaling_factor`` (a module field; the module never applies it)."""
  return float(getattr(vae, "scaling_factor", vae_lib.SD15_SCALING_FACTOR))


def tokenizer_dir(config) -> str:
  """The tokenizer folder: ``data.tokenizer_dir``, else ``pretrained/tokenizer``."""
  if config.data.tokenizer_dir:
    return config.data.tokenizer_dir
  if config.pretrained:
    return os.path.join(config.pretrained, "tokenizer")
  return ""


# ============================================================================ params

def init_keys(config) -> tuple[jax.Array, jax.Array]:
  """``(init_key, rng)``: the key that initialises random params and the train state's key."""
  return tuple(jax.random.split(jax.random.PRNGKey(int(config.seed))))


def host_params(models: Models) -> dict:
  """``{'unet', 'vae', 'text'}``: the pretrained host params the bundle holds (no ``None``)."""
  host = {"unet": models.unet_params, "vae": models.vae_params, "text": models.text_params}
  return {k: v for k, v in host.items() if v is not None}


def with_params(models: Models, pretrained: dict) -> Models:
  """The bundle with its params replaced by ``pretrained`` (missing names: ``None``)."""
  return dataclasses.replace(models, unet_params=pretrained.get("unet"),
                             vae_params=pretrained.get("vae"),
                             text_params=pretrained.get("text"))


def cast_frozen(config, frozen):
  """``frozen`` with its float leaves in ``config.frozen_dtype`` ('bfloat16' halves the frozen
  VAE/text encoder's memory and reads; the modules compute in ``config.dtype`` either way)."""
  dtype = jnp.dtype(config.get("frozen_dtype", "float32"))
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      frozen)


def initial_params(config, models: Models, key) -> tuple[Any, Any]:
  """The objective's ``(trainable, frozen)`` params (traceable): pretrained where ``models``
  holds them, random from ``key`` otherwise; ``frozen`` in ``config.frozen_dtype``."""
  trainable, frozen = objectives.for_config(config).init_params(config, models, key)
  return trainable, cast_frozen(config, frozen)


def compile_init(init_jit, *args):
  """The jitted random init compiled for ``args`` with :func:`compilation.run_once_options`
  (training and :func:`initial_frozen_params` must compile it alike to get the same bits)."""
  return compilation.aot_compile(init_jit, *args, count_flops=False,
                                 compiler_options=compilation.run_once_options()).fn


def initial_frozen_params(config, models: Models) -> Any:
  """``frozen`` exactly as training starts it (the parts that are never checkpointed).

  Random parts come from the same key as training's init, so a tiny model's frozen VAE/text
  encoder is rebuilt bit-for-bit from ``config.seed``; the trainable params are neither
  initialised nor moved to the device (a restore supplies them).
  """
  init_key, _ = init_keys(config)
  host = {k: v for k, v in host_params(models).items() if k != "unet"}

  def init(key, pretrained):  # compiled as in training (other options round differently)
    m = dataclasses.replace(with_params(models, pretrained), unet_params={})  # skip UNet init
    return initial_params(config, m, key)[1]
  return compile_init(jax.jit(init), init_key, host)(init_key, host)
