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

A workdir is a folder with ``config.json`` (written by training) and ``checkpoints/<step>/state``.
Only the needed arrays are read (orbax partial restore into host numpy, no device mesh): a
checkpoint written on any mesh loads on one host. The frozen parts that are not checkpointed
are rebuilt as training built them: from ``config.pretrained`` / ``config.vae_pretrained``, or,
for tiny random models, from ``config.seed`` (bit-identical).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging as absl_logging

from seamless_jax import convert
from seamless_jax.data.tokenizer import CLIPTokenizer
from seamless_jax import build as models_lib
from seamless_jax.train import state as state_lib

VAE_DECODER_PARTS = state_lib.VAE_DECODER_PARTS
CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
# The diffusion objectives trained here predict v (paper Alg. 1).
TRAINED_PREDICTION_TYPE = "v_prediction"


class SourceError(ValueError):
  """A model source (folder or workdir) that cannot be loaded; the message names it."""


# ============================================================================ workdirs

def is_workdir(path: str) -> bool:
  """True for a training workdir (``config.json`` + ``checkpoints/``)."""
  return (os.path.isfile(os.path.join(path, CONFIG_FILE))
          and os.path.isdir(os.path.join(path, CHECKPOINTS)))


def read_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The training config saved in ``workdir/config.json``."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  except FileNotFoundError as e:
    raise SourceError(f"{workdir} is not a training workdir: no {CONFIG_FILE}") from e
  except json.JSONDecodeError as e:
    raise SourceError(f"{path} is not valid JSON: {e}") from e


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps with a finished checkpoint (``checkpoints/<step>/state``), ascending."""
  root = os.path.join(workdir, CHECKPOINTS)
  if not os.path.isdir(root):
    return []
  return sorted(int(name) for name in os.listdir(root)
                if name.isdigit() and os.path.isdir(os.path.join(root, name, "state")))


def choose_step(workdir: str, step: int | None) -> int:
  """``step`` if it was saved, else the latest saved step; a clear error otherwise."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise SourceError(f"{workdir} has no checkpoints (nothing in {CHECKPOINTS}/)")
  if step is None:
    return steps[-1]
  if int(step) not in steps:
    raise SourceError(f"{workdir} has no checkpoint for step {step}; saved steps: "
                      f"{', '.join(map(str, steps))}")
  return int(step)


def restore_arrays(workdir: str, step: int, names: tuple[str, ...]) -> dict[str, Any]:
  """Reads only the TrainState fields ``names`` of ``step`` into host numpy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(os.path.join(workdir, CHECKPOINTS, str(step), "state"))
  try:
    with _orbax_warnings_off():
      checkpointer = ocp.PyTreeCheckpointer()
      metadata = checkpointer.metadata(path)
      tree = getattr(metadata, "item_metadata", metadata)
      tree = getattr(tree, "tree", tree)
      item = {name: tree[name] for name in names}
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True))
  except Exception as e:  # noqa: BLE001  orbax raises many kinds; the file is what matters
    raise SourceError(f"checkpoint {path} is damaged or unreadable "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
  return {name: restored[name] for name in names}


@contextlib.contextmanager
def _orbax_warnings_off():
  """Reading ``<step>/state`` on its own makes orbax warn that the step's
  ``_CHECKPOINT_METADATA`` (one folder up) is missing: true, and not the user's concern."""
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(previous)


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
    if self.config.mode == "vae_finetune":
      return {**self.frozen["vae"], **self.params["vae"]}
    return self.frozen["vae"]


def resolve_path(path: str, workdir: str) -> str:
  """A path from a workdir's config: as saved if it exists, else relative to the workdir's
  parent folder (a relative path saved by a run started elsewhere)."""
  if not path or os.path.isabs(path) or os.path.exists(path):
    return path
  for base in (os.path.dirname(os.path.abspath(workdir)), os.path.abspath(workdir)):
    candidate = os.path.join(base, path)
    if os.path.exists(candidate):
      return candidate
  return path


def workdir_tokenizer_folder(config, workdir: str) -> str:
  """The tokenizer folder a workdir's run used (``data.tokenizer_dir``, ``pretrained/tokenizer``
  or the demo set's ``workdir/demo_data/tokenizer``), resolved like the config's other paths."""
  folder = resolve_path(models_lib.tokenizer_dir(config), workdir)
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
  config = read_workdir_config(workdir)
  with config.unlocked():
    if dtype:
      config.dtype = dtype
    if attention is not None:
      config.attention = attention
    if "frozen_dtype" in config:  # a training-memory setting: load the frozen parts unrounded
      config.frozen_dtype = "float32"
    config.pretrained = resolve_path(config.pretrained, workdir)
    if "vae_pretrained" in config:
      config.vae_pretrained = resolve_path(config.vae_pretrained, workdir)
  chosen = choose_step(workdir, step)
  name = "ema_params" if ema else "params"
  restored = restore_arrays(workdir, chosen, (name,))[name]
  tokenizer = _workdir_tokenizer(config, workdir)
  models = models_lib.build_models(config, vocab_size=tokenizer.vocab_size,
                                   with_unet_params=False)
  frozen = jax.tree.map(np.asarray, state_lib.initial_frozen_params(config, models))
  return WorkdirModel(workdir, config, chosen, ema, restored, frozen, models, tokenizer)


def scheduler_config(config) -> dict:
  """diffusers DDIM scheduler config of a trained workdir (v-prediction, its β schedule)."""
  sc = config.schedule
  return {**convert.SD15_SCHEDULER, "num_train_timesteps": int(sc.num_train_timesteps),
          "beta_start": float(sc.beta_start), "beta_end": float(sc.beta_end),
          "beta_schedule": str(sc.beta_schedule), "prediction_type": TRAINED_PREDICTION_TYPE}


# ============================================================================ any source

def _runtime(dtype: str | None, attention: str | None) -> dict:
  runtime = {}
  if dtype:
    runtime["dtype"] = models_lib.DTYPES[dtype]
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
  if is_workdir(source):
    model = restore_workdir(source, step=step, ema=ema, dtype=dtype, attention=attention)
    return model.models.vae, model.vae_params
  folder = os.path.join(source, "vae") if os.path.isdir(os.path.join(source, "vae")) else source
  _require_dir(source, "a VAE folder, an SD-1.5 folder with vae/ or a training workdir")
  return convert.load_vae(folder, **_runtime(dtype, attention))


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
  if is_workdir(model):
    pipe = _workdir_pipeline(model, step=step, ema=ema, dtype=dtype, attention=attention)
  else:
    _require_dir(model, "an SD-1.5 diffusers folder or a training workdir")
    if not os.path.isfile(os.path.join(model, "model_index.json")):
      raise SourceError(f"{model} is neither a diffusers pipeline folder (no model_index.json) "
                        f"nor a training workdir (no {CONFIG_FILE} + {CHECKPOINTS}/)")
    try:
      pipe = convert.load_pipeline(model, **_runtime(dtype, attention))
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
  if model.config.mode == "vae_finetune":
    raise SourceError(f"{workdir} is a vae_finetune workdir (a VAE, no UNet): give it as the "
                      "VAE (--vae / vae=) next to an SD-1.5 folder or a two_step workdir")
  m = model.models
  pipe = convert.Pipeline(m.unet, model.params, m.vae, model.frozen["vae"], m.text,
                          model.frozen["text"], model.tokenizer, scheduler_config(model.config))
  pipe.info = {"source": workdir, "kind": "workdir", "mode": model.config.mode,
               "step": model.step, "ema": model.ema}
  return pipe


def _require_dir(path: str, what: str) -> None:
  if not os.path.isdir(path):
    raise SourceError(f"{path} does not exist (expected {what})")
