"""Validates a training config before anything is built; errors name the field at fault.

``config_flags`` already rejects unknown ``--config.x=...`` overrides (``main.py`` turns that into
one line); :func:`validate` checks the values, :func:`check_paths` the folders the run reads.
Both raise :class:`ConfigError` with a one-line message that names ``config.<field>``.
"""

from __future__ import annotations

import os

from seamless_jax import build
from seamless_jax import objectives
from seamless_jax.diffusion import blending
from seamless_jax.diffusion import losses
from seamless_jax.models import attention
from seamless_jax.models import layers
from seamless_jax.train import state
from seamless_jax.train import steps

# Each choice list is defined where it is implemented.
CHOICES = {
    "mode": objectives.MODES,
    "model": build.MODELS,
    "dtype": tuple(build.DTYPES),
    "parallelism": steps.PARALLELISMS,
    "lr_schedule": state.LR_SCHEDULES,
    "attention": attention.IMPLEMENTATIONS,
    "remat_policy": tuple(layers.REMAT_POLICIES),
    "frozen_dtype": build.FROZEN_DTYPES,
    "two_step.second_t": losses.SECOND_T,
    "two_step.keep_method": blending.KEEP_METHODS,
}
POSITIVE = ("batch_size", "total_steps", "grad_accum_steps", "log_every", "keep_checkpoints",
            "max_nonfinite_steps", "sample.num_images", "sample.num_inference_steps")


class ConfigError(ValueError):
  """A config value the user has to change; the message is one line naming the field."""


class ConfigPathError(ConfigError, FileNotFoundError):
  """A config field names a file or folder that is missing or is not what it should be."""


NON_NEGATIVE = ("learning_rate", "warmup_steps", "max_grad_norm", "weight_decay",
                "checkpoint_every", "sample_every", "two_step.weight", "two_step.stride",
                "two_step.min_t", "stop_at_step", "fsdp_min_size")


def _get(config, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def validate(config, num_devices: int | None = None, *, shapes_only: bool = False) -> None:
  """Raises :class:`ConfigError` (:class:`ConfigPathError` for paths) naming the field.

  ``shapes_only``: the config is only compiled, not run (:mod:`seamless_jax.aot`): the
  weights, LPIPS and data paths are not required.
  """
  for field, choices in CHOICES.items():
    value = _get(config, field)
    if value not in choices:
      raise ConfigError(f"config.{field}={value!r} is not one of {list(choices)}")
  for field in POSITIVE:
    if _get(config, field) <= 0:
      raise ConfigError(f"config.{field} must be > 0, got {_get(config, field)!r}")
  for field in NON_NEGATIVE:
    if _get(config, field) < 0:
      raise ConfigError(f"config.{field} must be >= 0, got {_get(config, field)!r}")
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(f"config.ema_decay must be in [0, 1), got {config.ema_decay!r}")
  if config.batch_size % config.grad_accum_steps:
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by "
                      f"config.grad_accum_steps={config.grad_accum_steps}")
  if num_devices is not None:
    check_device_count(config, num_devices)
  if config.model == "sd15" and not shapes_only:
    if not config.pretrained:
      raise ConfigError("config.pretrained must name an SD-1.5 diffusers folder for "
                        "config.model='sd15' (or use a ':tiny'/':demo' config variant)")
    if not os.path.isdir(config.pretrained):
      raise ConfigPathError(f"config.pretrained={config.pretrained!r} is not a folder")
    needed = objectives.for_config(config).pretrained_parts
    missing = [sub for sub in needed if not os.path.isdir(os.path.join(config.pretrained, sub))]
    if missing:
      raise ConfigPathError(
          f"config.pretrained={config.pretrained!r} is a folder but not a diffusers SD-1.5 "
          f"folder: it has no {'/, '.join(missing)}/ (expected unet/ vae/ text_encoder/ "
          f"tokenizer/, e.g. a download of stable-diffusion-v1-5)")
  problem = objectives.for_config(config).config_problem(config, shapes_only=shapes_only)
  if problem:
    message, is_path = problem
    raise (ConfigPathError if is_path else ConfigError)(message)
  if (not config.data.path and not config.demo_data and config.data.source != "tfds"
      and not shapes_only):
    raise ConfigError("config.data.path is empty: point it at the training data "
                      "(or set config.demo_data=True for the bundled demo photos)")


def check_device_count(config, num_devices: int) -> None:
  """The micro-batch splits evenly over ``num_devices`` (:class:`ConfigError` otherwise)."""
  micro = config.batch_size // config.grad_accum_steps
  if micro % num_devices:
    raise ConfigError(f"config.batch_size / config.grad_accum_steps = {micro} is not divisible "
                      f"by the {num_devices} devices")


def check_paths(config) -> None:
  """The data and tokenizer folders exist (local paths; demo data is written later).

  Raises :class:`ConfigPathError` naming the field, with the flag to set when one is missing.
  """
  data = config.data
  if config.demo_data and not data.path:
    return  # written to WORKDIR/demo_data with its tokenizer on first use
  if data.source == "folder" and data.path and "://" not in data.path:
    if not os.path.isdir(data.path):
      raise ConfigPathError(f"config.data.path={data.path!r} is not a folder")
  tokenizer = build.tokenizer_dir(config)
  if tokenizer and os.path.isdir(tokenizer):
    return
  if data.tokenizer_dir:
    raise ConfigPathError(f"config.data.tokenizer_dir={data.tokenizer_dir!r} is not a folder "
                          "(a CLIP tokenizer folder with vocab.json and merges.txt)")
  if tokenizer:  # <pretrained>/tokenizer is missing
    raise ConfigPathError(f"config.pretrained={config.pretrained!r} has no tokenizer/ folder: "
                          "set --config.data.tokenizer_dir=DIR (vocab.json + merges.txt)")
  candidate = os.path.join(data.path, "tokenizer") if data.path else ""
  where = (f"config.data.path={data.path!r} has no tokenizer/ folder" if data.path
           else "config.data.path is empty")
  if candidate and os.path.isdir(candidate):
    where = f"config.data.path={data.path!r} has one in tokenizer/"
  raise ConfigPathError(f"config.data.tokenizer_dir is not set and {where}: set "
                        "--config.data.tokenizer_dir=DIR (a CLIP tokenizer folder with vocab.json "
                        "and merges.txt, e.g. <SD-1.5 folder>/tokenizer)")
