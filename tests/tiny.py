"""Tiny configs for tests and benchmarks: fast CPU runs on a small image folder.

Lives in tests/ (not in the package) because it reads the repository's ``configs/``, which
the installed package does not ship (loaded by path: ``seamless_jax.config_files``). Tests import
it as ``import tiny`` (pytest puts tests/ on ``sys.path``); benchmarks add tests/ to
``sys.path`` first.
"""

from __future__ import annotations

import os

import ml_collections

from seamless_jax import config_files


def write_tiny_data(folder: str, resolution: int = 32) -> str:
  """The bundled demo photos at ``resolution`` (+ tokenizer) in ``folder``, written once."""
  from seamless_jax.data import demo  # pylint: disable=import-outside-toplevel
  if not os.path.exists(os.path.join(folder, "metadata.jsonl")):
    demo.write_demo_dataset(folder, resolution=resolution)
  return folder


def tiny_config(mode: str, data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """``configs/<mode>.py:tiny`` pointed at ``data_dir``; ``overrides`` as dotted keys
  (``{'two_step.weight': 1.0}`` may be given as ``two_step__weight=1.0``)."""
  if mode not in ("two_step", "standard", "vae_finetune"):
    raise KeyError(mode)
  config = config_files.load(mode, "tiny")
  config.data.path = data_dir
  config.data.tokenizer_dir = os.path.join(data_dir, "tokenizer")
  config.data.shuffle = True
  for key, value in overrides.items():
    target = config
    parts = key.split("__")
    for part in parts[:-1]:
      target = target[part]
    target[parts[-1]] = value
  return config


def nan_frozen(frozen):
  """A copy of a trainer's ``frozen`` params with one NaN in the VAE encoder's ``conv_in`` bias:
  every latent, hence the loss, becomes NaN (pipeline batches are uint8 and cannot hold one)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  poisoned = jax.tree.map(jnp.copy, frozen)
  conv_in = poisoned["vae"]["encoder"]["conv_in"]
  conv_in["bias"] = conv_in["bias"].at[0].set(jnp.nan)
  return poisoned
