"""One loader for every model source: a diffusers SD-1.5 folder or a training workdir.

Inference (:mod:`seamless_jax.inpaint`), evaluation, export and the notebooks read models
through this module only, so a workdir is a model source exactly like a diffusers folder:

* :func:`load_pipeline(model, vae=...)` -> :class:`seamless_jax.convert.Pipeline` (UNet, VAE,
  text encoder, tokenizer, scheduler config) from a diffusers folder or a ``two_step`` /
  ``standard`` workdir; ``vae=`` puts the decoder of another VAE source (a ``vae_finetune``
  workdir: the paper's Eq. 6 decoder) beside the base model's encoder — the paper's full system.
* :func:`load_vae(source)` -> ``(AutoencoderKL, params)`` from a diffusers folder (``vae/`` or the
  VAE folder itself) or any workdir (a ``vae_finetune`` workdir: its trained VAE).
* :func:`restore_workdir(workdir)` -> :class:`WorkdirModel`: the workdir's config, the chosen
  step's trainable params (EMA or raw) and the frozen params training used with them.

A workdir (its format: :mod:`seamless_jax.workdir`) is read without a device mesh: only the
needed arrays, into host numpy, so a checkpoint written on any mesh loads on one host. The frozen
parts that are not checkpointed
are rebuilt as training built them: from ``config.pretrained`` / ``config.vae_pretrained``, or,
for tiny random models, from ``config.seed`` (bit-identical).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from seamless_jax import build
from seamless_jax import convert
from seamless_jax import objectives
from seamless_jax import workdir as workdir_lib
from seamless_jax.data.tokenizer import CLIPTokenizer
from seamless_jax.diffusion import schedule as schedule_lib
from seamless_jax.objectives.vae_finetune import VAE_DECODER_PARTS
from seamless_jax.workdir import SourceError


@dataclasses.dataclass
class WorkdirModel:
  """A training workdir restored for use.

  config: the training config (``runtime`` overrides applied to dtype/attention).
  step: the checkpoint step loaded; ema: whether ``params`` are the EMA weights.
  params: trainable params (host numpy): the UNet's for two_step/standard,
    ``{'vae', 'logvar', 'disc'}`` for vae_finetune.
  frozen: ``{'vae', 'text'}`` (two_step/standard) or ``{'vae'}`` (vae_finetune, the untrained
    VAE parts), as training used them.
  models: the Flax modules (:class:`seamless_jax.build.Models`).
  tokenizer: the CLIP tokenizer training used.
  """
  workdir: str
  config: Any
  step: int
  ema: bool
  params: Any
  frozen: Any
  models: Any
  tokenizer: Any

  @property
  def vae_params(self) -> dict:
    """The complete VAE param tree (trained parts over frozen ones for vae_finetune)."""
    return objectives.for_config(self.config).vae_params(self.params, self.frozen)


def build_models(config, vocab_size: int | None = None, *,
                 with_unet_params: bool = True) -> build.Models:
  """:func:`seamless_jax.build.build_models` with ``config.vae_pretrained`` (any VAE source:
  a diffusers folder or a ``vae_finetune`` workdir, :func:`load_vae`) in place of the VAE."""
  models = build.build_models(config, vocab_size, with_unet_params=with_unet_params)
  if not config.get("vae_pretrained"):
    return models
  vae, vae_params = load_vae(config.vae_pretrained, dtype=config.dtype,
                             attention=config.attention or None)
  vae = vae.clone(remat=build.runtime_options(config)["remat"])
  return dataclasses.replace(models, vae=vae, vae_params=jax.tree.map(np.asarray, vae_params),
                             scaling_factor=build.scaling_factor(vae))


def workdir_tokenizer_folder(config, workdir: str) -> str:
  """The tokenizer folder a workdir's run used (``data.tokenizer_dir``, ``pretrained/tokenizer``
  or the demo set's ``workdir/demo_data/tokenizer``), resolved like the config's other paths."""
  folder = workdir_lib.resolve_path(build.tokenizer_dir(config), workdir)
  fallback = os.path.join(workdir, "demo_data", "tokenizer")
  if (not folder or not os.path.isdir(folder)) and os.path.isdir(fallback):
    folder = fallback
  if not folder or not os.path.isdir(folder):
    raise SourceError(f"{workdir}: the tokenizer folder of its config "
                      f"(data.tokenizer_dir={config.data.tokenizer_dir!r}, pretrained="
                      f"{config.pretrained!r}) does not exist")
  return folder


def _workdir_tokenizer(config, workdir: str) -> CLIPTokenizer:
  return CLIPTokenizer.from_folder(workdir_tokenizer_folder(config, workdir))


def restore_workdir(workdir: str, *, step: int | None = None, ema: bool = True,
                    dtype: str | None = None, attention: str | None = None) -> WorkdirModel:
  """Loads ``workdir`` at ``step`` (default: latest) with EMA (default) or raw params.

  ``dtype`` / ``attention`` override the config's compute dtype and attention kernel
  (e.g. ``'float32'`` for CPU inference of a bf16-trained model).
  """
  config = workdir_lib.read_config(workdir)
  with config.unlocked():
    if dtype:
      config.dtype = dtype
    if attention is not None:
      config.attention = attention
    if "frozen_dtype" in config:  # a training-memory setting: load the frozen parts unrounded
      config.frozen_dtype = "float32"
    config.pretrained = workdir_lib.resolve_path(config.pretrained, workdir)
    if "vae_pretrained" in config:
      config.vae_pretrained = workdir_lib.resolve_path(config.vae_pretrained, workdir)
  chosen = workdir_lib.choose_step(workdir, step)
  name = "ema_params" if ema else "params"
  restored = workdir_lib.restore_arrays(workdir, chosen, (name,))[name]
  tokenizer = _workdir_tokenizer(config, workdir)
  models = build_models(config, vocab_size=tokenizer.vocab_size, with_unet_params=False)
  frozen = jax.tree.map(np.asarray, build.initial_frozen_params(config, models))
  return WorkdirModel(workdir, config, chosen, ema, restored, frozen, models, tokenizer)


def scheduler_config(config) -> dict:
  """diffusers DDIM scheduler config of a trained workdir (v-prediction, its β schedule)."""
  sc = config.schedule
  return {**convert.SD15_SCHEDULER, "num_train_timesteps": int(sc.num_train_timesteps),
          "beta_start": float(sc.beta_start), "beta_end": float(sc.beta_end),
          "beta_schedule": str(sc.beta_schedule),
          "prediction_type": schedule_lib.TRAINED_PREDICTION_TYPE}


# ============================================================================ any source

def _runtime(dtype: str | None, attention: str | None) -> dict:
  runtime = {}
  if dtype:
    runtime["dtype"] = build.DTYPES[dtype]
  if attention:
    runtime["attention_implementation"] = attention
  return runtime


def load_vae(source: str, *, step: int | None = None, ema: bool = True,
             dtype: str | None = None, attention: str | None = None):
  """``(AutoencoderKL, params)`` from a VAE source.

  ``source``: a diffusers pipeline folder (its ``vae/``), a VAE folder (``config.json`` +
  ``diffusion_pytorch_model.safetensors``), or a training workdir (a ``vae_finetune`` run gives
  its trained VAE; a diffusion run the VAE it trained with).
  """
  if workdir_lib.is_workdir(source):
    model = restore_workdir(source, step=step, ema=ema, dtype=dtype, attention=attention)
    return model.models.vae, model.vae_params
  folder = os.path.join(source, "vae") if os.path.isdir(os.path.join(source, "vae")) else source
  _require_dir(source, "a VAE folder, an SD-1.5 folder with vae/ or a training workdir")
  return convert.read_vae(folder, **_runtime(dtype, attention))


def with_decoder(vae_params: dict, decoder_source_params: dict) -> dict:
  """``vae_params`` with the decoder (+ post_quant_conv) of ``decoder_source_params``:
  the base encoder keeps the UNet's latent space, the Eq. 6 decoder renders it."""
  replaced = {k: decoder_source_params[k] for k in VAE_DECODER_PARTS}
  for name, tree in replaced.items():
    base_shapes = jax.tree.map(np.shape, vae_params[name])
    if jax.tree.map(np.shape, tree) != base_shapes:
      raise SourceError(f"the decoder's {name} does not match the base VAE's shapes "
                        "(a VAE of a different architecture)")
  return {**vae_params, **replaced}


def load_pipeline(model: str, *, step: int | None = None, ema: bool = True,
                  vae: str | None = None, vae_step: int | None = None, vae_ema: bool = True,
                  dtype: str | None = None, attention: str | None = None) -> convert.Pipeline:
  """The full inpainting model from ``model`` (+ the decoder of ``vae``).

  ``model``: a diffusers SD-1.5 folder (``model_index.json``) or a ``two_step``/``standard``
  training workdir (``step``: default latest; ``ema``: EMA weights, default). ``vae``: a VAE
  source (see :func:`load_vae`) whose decoder replaces the model's; the encoder stays the
  model's. ``pipeline.info`` records what was loaded (source, step, ema, vae).
  """
  if workdir_lib.is_workdir(model):
    pipe = _workdir_pipeline(model, step=step, ema=ema, dtype=dtype, attention=attention)
  else:
    _require_dir(model, "an SD-1.5 diffusers folder or a training workdir")
    if not os.path.isfile(os.path.join(model, "model_index.json")):
      raise SourceError(f"{model} is neither a diffusers pipeline folder (no model_index.json) "
                        f"nor a training workdir (no {workdir_lib.CONFIG_FILE} + "
                        f"{workdir_lib.CHECKPOINTS}/)")
    try:
      pipe = convert.read_pipeline(model, **_runtime(dtype, attention))
    except (FileNotFoundError, convert.ConversionError) as e:
      raise SourceError(str(e)) from e
    if pipe.tokenizer is None:
      raise SourceError(f"{model} has no tokenizer/ (vocab.json + merges.txt or tokenizer.json)")
    pipe.info = {"source": model, "kind": "diffusers"}
  if vae:
    _, decoder_params = load_vae(vae, step=vae_step, ema=vae_ema, dtype=dtype,
                                 attention=attention)
    pipe.vae_params = with_decoder(pipe.vae_params, decoder_params)
    pipe.info["vae"] = vae
  return pipe


def _workdir_pipeline(workdir: str, **kwargs) -> convert.Pipeline:
  model = restore_workdir(workdir, **kwargs)
  objective = objectives.for_config(model.config)
  if not objective.needs_unet:
    raise SourceError(f"{workdir} is a {objective.name} workdir (a VAE, no UNet): give it as "
                      "the VAE (--vae / vae=) next to an SD-1.5 folder or a two_step workdir")
  m = model.models
  pipe = convert.Pipeline(m.unet, model.params, m.vae, model.frozen["vae"], m.text,
                          model.frozen["text"], model.tokenizer, scheduler_config(model.config))
  pipe.info = {"source": workdir, "kind": "workdir", "mode": objective.name,
               "step": model.step, "ema": model.ema}
  return pipe


def _require_dir(path: str, what: str) -> None:
  if not os.path.isdir(path):
    raise SourceError(f"{path} does not exist (expected {what})")
