"""What a run trains with: mesh, tokenizer, models, sharded state and the jitted step.

:func:`setup` builds a :class:`Trainer` for a real run; :func:`shapes_only_setup` the same from
shapes alone, on any mesh (compile-only devices of a TPU/GPU target described on a CPU machine,
:mod:`seamless_jax.aot`). :func:`compile_step` compiles its step ahead of time (the loop, the
benchmarks and aot share it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from seamless_jax import build
from seamless_jax import loading
from seamless_jax import objectives
from seamless_jax.data import demo
from seamless_jax.data.tokenizer import CLIPTokenizer
from seamless_jax.diffusion import schedule as schedule_lib
from seamless_jax.models import lpips as lpips_model
from seamless_jax.runtime import compilation
from seamless_jax.runtime import hardware
from seamless_jax.runtime import sharding as shd
from seamless_jax.train import config_check
from seamless_jax.train import state as state_lib
from seamless_jax.train import steps as steps_lib


@dataclasses.dataclass
class Trainer:
  """Everything the loop needs, built by :func:`setup` (also used by tests and benchmarks)."""
  config: Any
  mesh: Any
  models: Any
  tx: Any
  state: Any
  state_shardings: Any
  frozen: Any
  frozen_shardings: Any
  step_fn: Any
  tokenizer: Any
  alphas_cumprod: Any

  @property
  def objective(self) -> objectives.Objective:
    return objectives.for_config(self.config)


def setup(config, workdir: str | None = None) -> Trainer:
  """Mesh, tokenizer, models, sharded state and the (not yet compiled) jitted step of a
  ``config`` that passed :func:`config_check.validate`.

  Turns on the persistent compilation cache first (``config.compilation_cache_dir``, by default
  ``workdir/xla_cache``), so a restart loads the init and step programs instead of compiling.
  """
  compilation.enable_cache_for(config, workdir)
  mesh = shd.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
  config_check.check_device_count(config, mesh.size)
  if workdir is not None:
    ensure_demo_data(config, workdir)
  tok_dir = build.tokenizer_dir(config)
  if not tok_dir or not os.path.isdir(tok_dir):
    raise FileNotFoundError(f"config.data.tokenizer_dir={tok_dir!r} is not a tokenizer folder")
  with config.unlocked():
    config.data.tokenizer_dir = tok_dir
  tokenizer = CLIPTokenizer.from_folder(tok_dir)
  models = loading.build_models(config, vocab_size=tokenizer.vocab_size)
  tx = state_lib.make_optimizer(config)
  state, state_sh, frozen, frozen_sh = state_lib.create_train_state(config, models, mesh, tx)
  logging.info("mesh %s; %s trainable params; %d devices, %d processes", dict(mesh.shape),
               f"{state_lib.count_params(state.params):,}", mesh.size, jax.process_count())
  return _with_step(config, mesh, models, tx, state, state_sh, frozen, frozen_sh, tokenizer)


def shapes_only_setup(config, mesh) -> Trainer:
  """:func:`setup` from shapes alone, on any mesh: ``state``/``frozen`` hold
  ``jax.ShapeDtypeStruct``s, nothing is read (weights, LPIPS, data, tokenizer) or allocated,
  ``tokenizer`` is ``None``. The step is the one training compiles."""
  config_check.validate(config, num_devices=mesh.size, shapes_only=True)
  models = build.build_models(config, shapes_only=True)
  tx = state_lib.make_optimizer(config)
  state, state_sh, frozen, frozen_sh = state_lib.abstract_train_state(config, models, mesh, tx)
  return _with_step(config, mesh, models, tx, state, state_sh, frozen, frozen_sh, None,
                    shapes_only=True)


def _with_step(config, mesh, models, tx, state, state_sh, frozen, frozen_sh, tokenizer, *,
               shapes_only: bool = False) -> Trainer:
  """The :class:`Trainer` with its jitted step (LPIPS added to ``frozen`` when the objective
  uses it)."""
  lpips_factory = None
  if objectives.for_config(config).uses_lpips(config):
    frozen, frozen_sh, lpips_factory = _add_lpips(config, frozen, frozen_sh, mesh,
                                                  shapes_only=shapes_only)
  alphas_cumprod = schedule_lib.alphas_cumprod_of(config.schedule)
  step_fn = steps_lib.make_train_step(config, models, tx, mesh, state_sh, frozen_sh,
                                      alphas_cumprod=alphas_cumprod,
                                      lpips_fn_factory=lpips_factory)
  return Trainer(config, mesh, models, tx, state, state_sh, frozen, frozen_sh, step_fn,
                 tokenizer, alphas_cumprod)


def _add_lpips(config, frozen, frozen_sh, mesh, *, shapes_only: bool = False):
  """LPIPS weights become part of ``frozen`` (arguments of the step, not constants);
  ``shapes_only``: their shapes, nothing read."""
  if shapes_only:
    module, variables = lpips_model.abstract_lpips()
  else:
    module, variables = lpips_model.load_lpips(config.vae.lpips_path)
    variables = jax.device_put(variables, shd.replicated(mesh))
  frozen = dict(frozen, lpips=variables)
  frozen_sh = dict(frozen_sh, lpips=jax.tree.map(lambda _: shd.replicated(mesh), variables))

  return frozen, frozen_sh, lambda fz: lpips_model.lpips_fn(module, fz["lpips"])


def ensure_demo_data(config, workdir: str) -> None:
  """``demo_data``: writes the bundled photos once to ``workdir/demo_data`` and points
  ``data.path`` / ``data.tokenizer_dir`` at them."""
  if not config.demo_data or config.data.path:
    return
  folder = os.path.join(os.path.abspath(workdir), "demo_data")
  if not os.path.exists(os.path.join(folder, "metadata.jsonl")):
    if jax.process_index() == 0:
      demo.write_demo_dataset(folder, resolution=max(int(config.data.resolution), 64))
  with config.unlocked():
    config.data.path = folder
    if not config.data.tokenizer_dir:
      config.data.tokenizer_dir = os.path.join(folder, "tokenizer")


# ============================================================================ the step's inputs

def global_batch_arrays(batch: dict, mesh) -> dict:
  """Host batch (numpy) -> global arrays; drops the pipeline's ``num_skipped`` bookkeeping."""
  return shd.shard_batch({k: batch[k] for k in ("image", "keep", "input_ids")}, mesh)


def abstract_batch(config, mesh) -> dict:
  """The step's batch as ``ShapeDtypeStruct``s (uint8 images and keep, int32 ids)."""
  b, r = int(config.batch_size), int(config.data.resolution)
  sharding = shd.batch_sharding(mesh)
  return {"image": jax.ShapeDtypeStruct((b, r, r, 3), jnp.uint8, sharding=sharding),
          "keep": jax.ShapeDtypeStruct((b, r, r, 1), jnp.uint8, sharding=sharding),
          "input_ids": jax.ShapeDtypeStruct((b, int(config.data.max_length)), jnp.int32,
                                            sharding=sharding)}


# ============================================================================ compile

def compile_step(trainer: Trainer, state=None) -> compilation.Compiled:
  """The train step compiled ahead of time for ``state`` (default: the trainer's) and the
  config's global batch."""
  state = trainer.state if state is None else state
  return compilation.aot_compile(trainer.step_fn, state, trainer.frozen,
                                 abstract_batch(trainer.config, trainer.mesh),
                                 name=f"{trainer.objective.name} step")


def peak_flops(config) -> float | None:
  """Peak FLOP/s of one device for MFU: ``config.peak_flops_per_device``, else the chip table
  of :mod:`seamless_jax.runtime.hardware` (``None`` for unknown devices, e.g. CPUs)."""
  if config.peak_flops_per_device:
    return float(config.peak_flops_per_device)
  return hardware.peak_flops(jax.devices()[0].device_kind)


def compiled_flops(compiled: compilation.Compiled, num_devices: int) -> float | None:
  """FLOPs of one call of an AOT-compiled step per device, by the analytic jaxpr count
  (:mod:`seamless_jax.runtime.flops`: convolutions and attention kernels included on every
  backend, unlike XLA's cost analysis on GPU)."""
  if not compiled.flops:
    return None
  return compiled.flops / max(int(num_devices), 1)
