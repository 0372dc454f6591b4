"""Tiny configs for tests and benchmarks: fast CPU runs on a small image folder.

Lives in tests/ (not in the package) because it reads the repository's ``configs/``, which
the installed package does not ship (loaded by path: ``seamless_jax.config_files``). Tests import
it as ``import tiny`` (pytest puts tests/ on ``sys.path``); benchmarks add tests/ to
``sys.path`` first.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seamless_jax import config_files
from seamless_jax import convert


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


@jax.jit
def copy_tree(tree):
  """A fresh copy of every array in ``tree``, made by one compiled program (``jnp.copy`` leaf by
  leaf compiles a program per shape and dtype: some 50 for a train state)."""
  return jax.tree.map(jnp.copy, tree)


def nan_frozen(frozen):
  """A copy of a trainer's ``frozen`` params with one NaN in the VAE encoder's ``conv_in`` bias:
  every latent, hence the loss, becomes NaN (pipeline batches are uint8 and cannot hold one)."""
  poisoned = copy_tree(frozen)
  conv_in = poisoned["vae"]["encoder"]["conv_in"]
  conv_in["bias"] = conv_in["bias"].at[0].set(jnp.nan)
  return poisoned


def assert_same_params(params, params2):
  """Same tree paths in the same order and bitwise-equal leaves."""
  flat, flat2 = (jax.tree_util.tree_leaves_with_path(p) for p in (params, params2))
  assert [k for k, _ in flat] == [k for k, _ in flat2]
  for (key, a), (_, b) in zip(flat, flat2):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(key))


@functools.lru_cache(maxsize=None)
def random_params(module, seed: int = 1):
  """Random float32 params shaped like ``module``'s, drawn on the host (no init compile).

  Kernels ~ N(0, 1/fan_in), norm scales 1 + 0.05 N, biases 0.05 N, embeddings 0.5 N (large
  enough that token embeddings differ clearly). Cached per (module, seed): treat as read-only.
  """
  rng = np.random.RandomState(seed)

  def draw(path, shape):
    leaf = path[-1].key
    if leaf == "kernel":
      fan_in = int(np.prod(shape.shape[:-1]))
      return (rng.randn(*shape.shape) / np.sqrt(fan_in)).astype(np.float32)
    base = 1.0 if leaf == "scale" else 0.0
    scale = 0.5 if leaf == "embedding" else 0.05
    return (base + scale * rng.randn(*shape.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, convert.param_shapes(module))


def run_on_cpu_devices(count: int, args: list[str], timeout: int = 900):
  """``python *args`` in a subprocess that sees ``count`` CPU devices (the multi-device
  checks); the checkout and tests/ are importable there. Returns the ``CompletedProcess``."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""),
                                          f"--xla_force_host_platform_device_count={int(count)}"]),
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
                 [root, os.path.join(root, "tests"), os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True,
                        text=True, timeout=timeout)


def session_run_config(mode: str, data_dir: str, **overrides) -> ml_collections.ConfigDict:
  """The config of the session's trained workdirs (``tiny_workdirs`` in conftest): a 2-step run
  saving steps 1 and 2, with a 2-image sample grid at step 2."""
  config = tiny_config(mode, data_dir, total_steps=2, checkpoint_every=1, log_every=1,
                       sample_every=2, **overrides)
  config.sample.num_images, config.sample.num_inference_steps = 2, 2
  config.sample.prompt = "a photo"
  return config


# The session's ``python -m seamless_jax.main`` run (``cli_run`` in conftest): its step count,
# checkpoint and sample settings.
CLI_RUN_STEPS = 4


def main_command(data_dir: str, workdir: str, *overrides: str,
                 config: str = "configs/two_step.py:tiny") -> list[str]:
  """``python -m seamless_jax.main`` on ``data_dir`` (photos + tokenizer/) into ``workdir``."""
  return [sys.executable, "-m", "seamless_jax.main", f"--config={config}",
          f"--workdir={workdir}", f"--config.data.path={data_dir}",
          f"--config.data.tokenizer_dir={os.path.join(data_dir, 'tokenizer')}", *overrides]


def cpu_user_env(**extra) -> dict:
  """The environment of a user on a CPU machine: JAX picks its platforms itself (the tests'
  JAX_PLATFORMS=cpu would hide the TPU backend's start-up message)."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env.update(extra)
  return env


def run_cli_training(data_dir: str, folder: str) -> None:
  """``folder/run``: a tiny two_step run of CLI_RUN_STEPS steps through the command line as a
  CPU user starts it (a checkpoint every 2 steps, a progress line every 2, a 2-image sample
  grid at the end); ``folder/stderr.txt``: its console."""
  workdir = os.path.join(folder, "run")
  if os.path.exists(folder):  # an earlier attempt that failed: start afresh, do not resume
    shutil.rmtree(folder)
  os.makedirs(folder)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      main_command(data_dir, workdir, f"--config.total_steps={CLI_RUN_STEPS}",
                   "--config.log_every=2", "--config.checkpoint_every=2",
                   f"--config.sample_every={CLI_RUN_STEPS}", "--config.sample.num_images=2",
                   "--config.sample.num_inference_steps=2"),
      cwd=root, capture_output=True, text=True, timeout=900, env=cpu_user_env())
  with open(os.path.join(folder, "stderr.txt"), "w", encoding="utf-8") as f:
    f.write(proc.stderr)
  assert proc.returncode == 0, proc.stderr[-3000:]
