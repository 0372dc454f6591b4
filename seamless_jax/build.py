"""Builds the Flax modules a training mode needs and their parameters' sources.

``build_models(config)`` returns a :class:`Models` bundle: the modules (runtime options from the
config: dtype, attention kernel, remat) and, for each, either pretrained params loaded from
``config.pretrained`` (numpy, host memory, never put on one device) or ``None`` = random init
(``model='tiny'``), done sharded by :mod:`seamless_jax.train.state`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seamless_jax.models import AutoencoderKL, CLIPTextModel, UNet2DConditionModel
from seamless_jax.models import presets

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}
DEFAULT_SCALING_FACTOR = 0.18215


@dataclasses.dataclass
class Models:
  """Modules plus host-side pretrained params (``None`` where randomly initialised)."""
  vae: Any
  text: Any
  unet: Any = None            # None for mode='vae_finetune'
  vae_params: Any = None
  text_params: Any = None
  unet_params: Any = None
  scaling_factor: float = DEFAULT_SCALING_FACTOR


def runtime_options(config) -> dict:
  """How the modules run: compute dtype, attention kernel, remat (off, or the policy's name)."""
  remat = str(config.get("remat_policy", "nothing_saveable")) if config.remat else False
  return dict(dtype=DTYPES[config.dtype], attention_implementation=config.attention or None,
              remat=remat)


def _require_folder(config, sub: str) -> str:
  root = config.pretrained
  if not root:
    raise ValueError(f"config.pretrained must name an SD-1.5 diffusers folder for model='sd15' "
                     f"(or use a ':tiny'/':demo' config); it is empty")
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
  """Modules (+ pretrained params when ``config.model == 'sd15'``) for ``config.mode``.

  ``vocab_size``: the tokenizer's, to size the tiny text encoder's embedding table.
  ``with_unet_params=False`` skips reading the pretrained UNet (a caller that restores it).
  ``config.vae_pretrained`` (a VAE folder or a ``vae_finetune`` workdir) replaces the VAE.
  ``shapes_only``: the modules alone, no weights read (every ``*_params`` is ``None``): for
  ``sd15`` from the ``config.json`` files of ``config.pretrained`` when it is a folder, else
  from the SD-1.5 presets; ``vae_pretrained`` is ignored (it has the SD VAE's shapes). What
  ahead-of-time compilation needs (:mod:`seamless_jax.aot`).
  """
  if shapes_only:
    return _modules_only(config, vocab_size)
  models = _build_base_models(config, vocab_size, with_unet_params)
  if config.get("vae_pretrained"):
    from seamless_jax import loading  # pylint: disable=import-outside-toplevel
    vae, vae_params = loading.load_vae(config.vae_pretrained, dtype=config.dtype,
                                       attention=config.attention or None)
    vae = vae.clone(remat=runtime_options(config)["remat"])
    models = dataclasses.replace(models, vae=vae, vae_params=_to_host(vae_params),
                                 scaling_factor=_scaling_factor(vae))
  return models


def _build_base_models(config, vocab_size, with_unet_params: bool) -> Models:
  rt = runtime_options(config)
  need_unet = config.mode != "vae_finetune"
  if config.model == "tiny":
    vae = AutoencoderKL.from_config(presets.TINY_VAE, **rt)
    text = CLIPTextModel.from_config(tiny_text_config(vocab_size), **rt)
    unet = (UNet2DConditionModel.from_config(presets.TINY_UNET, **rt)
            if need_unet else None)
    return Models(vae=vae, text=text, unet=unet, scaling_factor=_scaling_factor(vae))

  from seamless_jax import convert  # pylint: disable=import-outside-toplevel
  vae, vae_params = convert.load_vae(_require_folder(config, "vae"), **rt)
  text, text_params = convert.load_text_encoder(_require_folder(config, "text_encoder"), **rt)
  unet = unet_params = None
  if need_unet:
    unet_folder = _require_folder(config, "unet")
    if with_unet_params:
      unet, unet_params = convert.load_unet(unet_folder, **rt)
      unet_params = _to_host(unet_params)
    else:
      unet = UNet2DConditionModel.from_config(convert.read_config(unet_folder), **rt)
  return Models(vae=vae, text=text, unet=unet, vae_params=_to_host(vae_params),
                text_params=_to_host(text_params), unet_params=unet_params,
                scaling_factor=_scaling_factor(vae))


def _modules_only(config, vocab_size) -> Models:
  if config.model == "tiny":
    return _build_base_models(config, vocab_size, with_unet_params=False)
  rt = runtime_options(config)
  folder = config.pretrained if config.pretrained and os.path.isdir(config.pretrained) else ""

  def model_config(sub: str, preset: dict) -> dict:
    from seamless_jax import convert  # pylint: disable=import-outside-toplevel
    return convert.read_config(os.path.join(folder, sub)) if folder else dict(preset)

  vae = AutoencoderKL.from_config(model_config("vae", presets.SD15_VAE), **rt)
  text = CLIPTextModel.from_config(model_config("text_encoder", presets.SD15_TEXT), **rt)
  unet = (UNet2DConditionModel.from_config(model_config("unet", presets.SD15_UNET), **rt)
          if config.mode != "vae_finetune" else None)
  return Models(vae=vae, text=text, unet=unet, scaling_factor=_scaling_factor(vae))


def _scaling_factor(vae) -> float:
  """The VAE config's ``scaling_factor`` (a module field; the module never applies it)."""
  return float(getattr(vae, "scaling_factor", DEFAULT_SCALING_FACTOR))


def tokenizer_dir(config) -> str:
  """The tokenizer folder: ``data.tokenizer_dir``, else ``pretrained/tokenizer``."""
  if config.data.tokenizer_dir:
    return config.data.tokenizer_dir
  if config.pretrained:
    return os.path.join(config.pretrained, "tokenizer")
  return ""
