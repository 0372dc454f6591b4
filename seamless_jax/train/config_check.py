"""Validates a training config before anything is built; errors name the field at fault.

``config_flags`` already rejects unknown ``--config.x=...`` overrides; this checks the values.
"""

from __future__ import annotations

import os

MODES = ("vae_finetune", "two_step", "standard")
CHOICES = {
    "mode": MODES,
    "model": ("sd15", "tiny"),
    "dtype": ("bfloat16", "float32", "float16"),
    "parallelism": ("jit", "shard_map"),
    "lr_schedule": ("cosine", "constant"),
    "attention": ("", "xla", "cudnn"),
    "two_step.second_t": ("prev", "same"),
    "two_step.keep_method": ("nearest", "nearest_corner", "area", "min", "max"),
}
POSITIVE = ("batch_size", "total_steps", "grad_accum_steps", "log_every", "keep_checkpoints",
            "max_nonfinite_steps", "sample.num_images", "sample.num_inference_steps")
NON_NEGATIVE = ("learning_rate", "warmup_steps", "max_grad_norm", "weight_decay",
                "checkpoint_every", "sample_every", "two_step.weight", "two_step.stride",
                "two_step.min_t", "stop_at_step", "fsdp_min_size")


def _get(config, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def validate(config, num_devices: int | None = None) -> None:
  """Raises ``ValueError`` (or ``FileNotFoundError``) naming ``config.<field>``."""
  for field, choices in CHOICES.items():
    value = _get(config, field)
    if value not in choices:
      raise ValueError(f"config.{field}={value!r} is not one of {list(choices)}")
  for field in POSITIVE:
    if _get(config, field) <= 0:
      raise ValueError(f"config.{field} must be > 0, got {_get(config, field)!r}")
  for field in NON_NEGATIVE:
    if _get(config, field) < 0:
      raise ValueError(f"config.{field} must be >= 0, got {_get(config, field)!r}")
  if not 0.0 <= config.ema_decay < 1.0:
    raise ValueError(f"config.ema_decay must be in [0, 1), got {config.ema_decay!r}")
  if config.batch_size % config.grad_accum_steps:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by "
                     f"config.grad_accum_steps={config.grad_accum_steps}")
  if num_devices is not None:
    micro = config.batch_size // config.grad_accum_steps
    if micro % num_devices:
      raise ValueError(f"config.batch_size / config.grad_accum_steps = {micro} is not divisible "
                       f"by the {num_devices} devices")
  if config.model == "sd15":
    if not config.pretrained:
      raise ValueError("config.pretrained must name an SD-1.5 diffusers folder for "
                       "config.model='sd15' (or use a ':tiny'/':demo' config variant)")
    if not os.path.isdir(config.pretrained):
      raise FileNotFoundError(f"config.pretrained={config.pretrained!r} is not a folder")
  if config.mode == "vae_finetune":
    if config.vae.lpips_weight > 0 and not config.vae.lpips_path:
      raise ValueError("config.vae.lpips_weight > 0 needs config.vae.lpips_path (converted "
                       "LPIPS weights, tools/convert_lpips.py); set lpips_weight=0 to train "
                       "without LPIPS")
    if config.vae.lpips_path and not os.path.isfile(config.vae.lpips_path):
      raise FileNotFoundError(f"config.vae.lpips_path={config.vae.lpips_path!r} does not exist")
    if config.parallelism == "shard_map":
      raise ValueError("config.parallelism='shard_map' supports the diffusion modes only; the "
                       "VAE discriminator uses whole-batch statistics: use 'jit'")
  if config.mode == "two_step" and config.two_step.second_t == "prev":
    lowest = config.two_step.stride + config.two_step.min_t
    if lowest >= config.schedule.num_train_timesteps:
      raise ValueError(f"config.two_step.stride + config.two_step.min_t = {lowest} leaves no "
                       f"timestep below {config.schedule.num_train_timesteps}")
  if not config.data.path and not config.demo_data and config.data.source != "tfds":
    raise ValueError("config.data.path is empty: point it at the training data "
                     "(or set config.demo_data=True for the bundled demo photos)")
