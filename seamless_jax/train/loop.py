"""``train_and_evaluate(config, workdir)``: the linear training loop shared by all modes.

Sections: setup (mesh, data, models, state) -> restore -> compile -> train -> final save.
Resuming is automatic: when ``workdir/checkpoints`` holds a checkpoint the state (params,
optimizer, EMA, step, RNG, skip counters) and the Grain iterator continue from the newest one
that restores (damaged newer steps are moved to ``checkpoints/damaged/``). The config is checked
before the workdir is created, and a workdir whose checkpoints already reach the end returns
before anything is built.

Stopping early: SIGTERM, the first Ctrl-C, ``stop_at_step`` and a tripped ``data.max_bad_fraction``
save a checkpoint at the current step first. Every process takes the same decision at the same
step (:func:`checkpoint.any_process`), so none enters a collective step the others skip.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from seamless_jax.data import masks as masks_lib
from seamless_jax.data import pipeline
from seamless_jax.data import transforms
from seamless_jax.data.tokenizer import CLIPTokenizer
from seamless_jax.diffusion import schedule as schedule_lib
from seamless_jax import metrics as metrics_lib
from seamless_jax.train import checkpoint as ckpt_lib
from seamless_jax.runtime import compilation
from seamless_jax.train import config_check
from seamless_jax.runtime import hardware
from seamless_jax.train import metric_writer as log_lib
from seamless_jax import build as models_lib
from seamless_jax.runtime import sharding as shd
from seamless_jax.train import state as state_lib
from seamless_jax.train import steps as steps_lib

class NonFiniteError(RuntimeError):
  """Too many non-finite steps in a row; the last good checkpoint is kept."""


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


def compile_step(trainer: "Trainer", state=None) -> compilation.Compiled:
  """The train step compiled ahead of time for ``state`` (default: the trainer's) and the
  config's global batch; shared by the training loop and ``benchmarks/``."""
  state = trainer.state if state is None else state
  return compilation.aot_compile(trainer.step_fn, state, trainer.frozen,
                                 abstract_batch(trainer.config, trainer.mesh),
                                 name=f"{trainer.config.mode} step")


def ensure_demo_data(config, workdir: str) -> None:
  """``demo_data``: writes the bundled photos once to ``workdir/demo_data`` and points
  ``data.path`` / ``data.tokenizer_dir`` at them."""
  if not config.demo_data or config.data.path:
    return
  from seamless_jax.data import demo  # pylint: disable=import-outside-toplevel
  folder = os.path.join(os.path.abspath(workdir), "demo_data")
  if not os.path.exists(os.path.join(folder, "metadata.jsonl")):
    if jax.process_index() == 0:
      demo.write_demo_dataset(folder, resolution=max(int(config.data.resolution), 64))
  with config.unlocked():
    config.data.path = folder
    if not config.data.tokenizer_dir:
      config.data.tokenizer_dir = os.path.join(folder, "tokenizer")


def global_batch_arrays(batch: dict, mesh) -> dict:
  """Host batch (numpy) -> global arrays; drops the pipeline's ``num_skipped`` bookkeeping."""
  return shd.shard_batch({k: batch[k] for k in ("image", "keep", "input_ids")}, mesh)


def abstract_batch(config, mesh) -> dict:
  b, r = int(config.batch_size), int(config.data.resolution)
  sharding = shd.batch_sharding(mesh)
  return {"image": jax.ShapeDtypeStruct((b, r, r, 3), jnp.uint8, sharding=sharding),
          "keep": jax.ShapeDtypeStruct((b, r, r, 1), jnp.uint8, sharding=sharding),
          "input_ids": jax.ShapeDtypeStruct((b, int(config.data.max_length)), jnp.int32,
                                            sharding=sharding)}


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


def setup(config, workdir: str | None = None) -> Trainer:
  """Mesh, tokenizer, models, sharded state and the (not yet compiled) jitted step.

  Turns on the persistent compilation cache first (``config.compilation_cache_dir``, by default
  ``workdir/xla_cache``), so a restart loads the init and step programs instead of compiling.
  """
  config_check.validate(config)
  compilation.enable_cache_for(config, workdir)
  mesh = shd.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
  config_check.validate(config, num_devices=mesh.size)
  if workdir is not None:
    ensure_demo_data(config, workdir)
  tok_dir = models_lib.tokenizer_dir(config)
  if not tok_dir or not os.path.isdir(tok_dir):
    raise FileNotFoundError(f"config.data.tokenizer_dir={tok_dir!r} is not a tokenizer folder")
  with config.unlocked():
    config.data.tokenizer_dir = tok_dir
  tokenizer = CLIPTokenizer.from_folder(tok_dir)
  models = models_lib.build_models(config, vocab_size=tokenizer.vocab_size)
  tx = state_lib.make_optimizer(config)
  state, state_sh, frozen, frozen_sh = state_lib.create_train_state(config, models, mesh, tx)
  return _with_step(config, mesh, models, tx, state, state_sh, frozen, frozen_sh, tokenizer)


def shapes_only_setup(config, mesh) -> Trainer:
  """:func:`setup` from shapes alone, on any mesh (compile-only devices of a TPU/GPU target
  described on a CPU machine): ``state``/``frozen`` hold ``jax.ShapeDtypeStruct``s, nothing is
  read (weights, LPIPS, data, tokenizer) or allocated, ``tokenizer`` is ``None``. The step is
  the one training compiles (:func:`compile_step` takes this trainer)."""
  config_check.validate(config, num_devices=mesh.size, shapes_only=True)
  models = models_lib.build_models(config, shapes_only=True)
  tx = state_lib.make_optimizer(config)
  state, state_sh, frozen, frozen_sh = state_lib.abstract_train_state(config, models, mesh, tx)
  return _with_step(config, mesh, models, tx, state, state_sh, frozen, frozen_sh, None,
                    shapes_only=True)


def _with_step(config, mesh, models, tx, state, state_sh, frozen, frozen_sh, tokenizer, *,
               shapes_only: bool = False) -> Trainer:
  """The :class:`Trainer` with its jitted step (LPIPS added to ``frozen`` for vae_finetune)."""
  lpips_factory = None
  if config.mode == "vae_finetune":
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
  if float(config.vae.lpips_weight) <= 0:
    return frozen, frozen_sh, lambda frozen: (
        lambda x, y: jnp.zeros((x.shape[0],), jnp.float32))
  from seamless_jax.models import lpips as lpips_model  # pylint: disable=import-outside-toplevel
  if shapes_only:
    module, variables = lpips_model.abstract_lpips()
  else:
    module, variables = lpips_model.load_lpips(config.vae.lpips_path)
    variables = jax.device_put(variables, shd.replicated(mesh))
  frozen = dict(frozen, lpips=variables)
  frozen_sh = dict(frozen_sh, lpips=jax.tree.map(lambda _: shd.replicated(mesh), variables))

  def factory(fz):
    lp = jax.lax.stop_gradient(fz["lpips"])
    return lambda x, y: module.apply(lp, x, y)
  return frozen, frozen_sh, factory


def tokenize(tokenizer, texts: list[str], max_length: int) -> np.ndarray:
  return np.asarray(tokenizer(texts, max_length=max_length), np.int32)


class Sampler:
  """Sample grids and seam quality of a fixed batch, every ``sample_every`` steps.

  The batch: ``config.sample.num_images`` images of the training source (centre crops, no flip,
  its own seed; the data has no held-out split) with fixed masks drawn once: the first half
  (rounded up) inpaint holes and the rest outpaint borders (``data/masks.py``, the training
  mixture's settings), so ``num_images >= 2`` covers both kinds. Each call samples it with the
  given (EMA) params through ``steps.make_sample_fn`` — BLD for two_step/standard, the Eq. 6
  reconstruction for vae_finetune — with the run's VAE (``config.vae_pretrained`` when set), and
  writes:

  * ``workdir/samples/step_<n>.png`` and the TensorBoard image ``samples/grid``: one row per
    example, image | masked image | result | result with the mask border drawn in red;
  * seam quality (:mod:`seamless_jax.metrics`) to ``metrics.jsonl`` and TensorBoard:
    ``seam/cd_<kind>`` (the paper's Color Distance on the mask border, 0–255 RGB) and
    ``seam/excess_cd_<kind>`` (CD of the result − CD of the real image on the same border;
    0 = as smooth as the photo), ``kind`` = inpaint / outpaint.
  """

  BORDER_COLOUR = (1.0, -1.0, -1.0)  # red, in [-1, 1]

  def __init__(self, trainer: Trainer, workdir: str, writer: log_lib.MetricWriter | None = None):
    config = trainer.config
    self.workdir = workdir
    self.trainer = trainer
    self.writer = writer
    n = int(config.sample.num_images)
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.worker_count = 0  # one batch: no worker processes
    data_config.center_crop, data_config.random_flip = True, False
    data = pipeline.make_dataset(data_config, batch_size=n, seed=int(config.seed) + 1)
    batch = next(iter(data))
    image = transforms.image_to_float(np.asarray(batch["image"]))
    keep, self.kinds = self.seam_masks(image, masks_lib.MaskMixture.from_config(
        config.data.masks), seed=int(config.seed) + 3)
    self.batch_host = {"image": image, "keep": keep, "input_ids": np.asarray(batch["input_ids"])}
    if config.sample.prompt:
      cond = tokenize(trainer.tokenizer, [config.sample.prompt] * n, int(config.data.max_length))
    else:
      cond = self.batch_host["input_ids"]
    uncond = tokenize(trainer.tokenizer, [""] * n, int(config.data.max_length))
    put = lambda x: shd.put_replicated(x, trainer.mesh)
    self.batch = jax.tree.map(put, {k: self.batch_host[k] for k in ("image", "keep")})
    self.cond, self.uncond = put(cond), put(uncond)
    self.fn = steps_lib.make_sample_fn(config, trainer.models, trainer.alphas_cumprod,
                                       trainer.mesh)
    self.key = jax.random.PRNGKey(int(config.seed) + 2)
    self.cd_real = metrics_lib.color_distance_batch(image, keep)  # the photos' own border CD

  @staticmethod
  def seam_masks(images: np.ndarray, mixture, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """keep (N, H, W, 1) float32 and kinds (N,) str: inpaint for the first ceil(N/2) images
    (holes kept off salient pixels as in training), outpaint for the rest."""
    rng = np.random.default_rng(seed)
    n, height, width = images.shape[:3]
    keeps, kinds = [], []
    for i, image in enumerate(images):
      hole = None
      if i < (n + 1) // 2:
        salient = (masks_lib.salient_pixels(masks_lib.spectral_residual_saliency(image))
                   if mixture.use_builtin_saliency else None)
        hole = masks_lib.inpaint_hole(rng, height, width, salient=salient,
                                      area_range=mixture.area_range,
                                      margin=mixture.saliency_margin,
                                      shapes=mixture.inpaint_shapes)
        if hole is None:  # everything salient: a hole anywhere
          hole = masks_lib.inpaint_hole(rng, height, width, area_range=mixture.area_range,
                                        shapes=mixture.inpaint_shapes)
      kinds.append(masks_lib.INPAINT if hole is not None else masks_lib.OUTPAINT)
      if hole is None:
        hole = masks_lib.outpaint_hole(rng, height, width, area_range=mixture.area_range,
                                       sides=mixture.outpaint_sides)
      keeps.append((~hole).astype(np.float32)[..., None])
    return np.stack(keeps), np.asarray(kinds)

  @classmethod
  def draw_borders(cls, images: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """images (N, H, W, 3) in [-1, 1] with the pixels on either side of the keep border red."""
    known = keep[..., 0] > 0.5
    border = np.zeros_like(known)
    vertical = known[:, 1:, :] != known[:, :-1, :]
    horizontal = known[:, :, 1:] != known[:, :, :-1]
    border[:, 1:, :] |= vertical
    border[:, :-1, :] |= vertical
    border[:, :, 1:] |= horizontal
    border[:, :, :-1] |= horizontal
    return np.where(border[..., None], np.asarray(cls.BORDER_COLOUR, np.float32), images)

  def seam_scalars(self, result: np.ndarray) -> dict[str, float]:
    """``seam/cd_<kind>`` and ``seam/excess_cd_<kind>`` of a sampled batch (N, H, W, 3)."""
    cd = metrics_lib.color_distance_batch(np.clip(result, -1.0, 1.0), self.batch_host["keep"])
    scalars = {}
    for kind in (masks_lib.INPAINT, masks_lib.OUTPAINT):
      rows = self.kinds == kind
      if rows.any() and np.isfinite(cd[rows]).any():
        scalars[f"seam/cd_{kind}"] = float(np.nanmean(cd[rows]))
        scalars[f"seam/excess_cd_{kind}"] = float(np.nanmean(cd[rows] - self.cd_real[rows]))
    return scalars

  def __call__(self, params, frozen, step: int) -> str:
    result = self.fn(params, frozen, self.batch, self.cond, self.uncond, self.key)
    result = shd.to_host(result)
    if jax.process_index() != 0:
      return ""
    image, keep = self.batch_host["image"], self.batch_host["keep"]
    columns = np.concatenate([result, self.draw_borders(result, keep)], axis=2)
    path = log_lib.save_sample_grid(self.workdir, step, image, keep, columns)
    scalars = self.seam_scalars(result)
    logging.info("samples: wrote %s; %s", path,
                 " ".join(f"{k} {v:.2f}" for k, v in scalars.items()))
    if self.writer is not None:
      self.writer.write_image("samples/grid", log_lib.sample_grid(image, keep, columns), step)
      if scalars:
        self.writer.write(step, scalars)
    return path


def _mean_metrics(history: list[dict]) -> dict:
  keys = history[0].keys()
  return {k: float(np.mean([h[k] for h in history])) for k in keys}


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains ``config.mode`` in ``workdir`` (resuming from its latest intact checkpoint).

  Returns the last logged metrics (a dict of floats), ``step`` and ``stopped``: '' when the run
  reached ``total_steps``/``stop_at_step`` (or had nothing left to do), 'signal' after SIGTERM /
  Ctrl-C. Raises ``config_check.ConfigError`` (before creating the workdir),
  ``checkpoint.CheckpointError`` when no checkpoint restores, ``pipeline.BadDataError`` (after
  saving) when ``data.max_bad_fraction`` trips, :class:`NonFiniteError`.
  """
  config_check.validate(config)  # before anything is written: a typo leaves no workdir behind
  config_check.check_paths(config)
  done = _finished_step(config, workdir)
  if done is not None:
    return {"step": done, "stopped": ""}
  os.makedirs(workdir, exist_ok=True)
  stop_signal = ckpt_lib.StopSignal()  # from here on SIGTERM / Ctrl-C save before stopping
  try:
    return _train(config, workdir, stop_signal)
  finally:
    stop_signal.close()


def _finished_step(config, workdir: str) -> int | None:
  """The newest saved step when it already reaches the end of the run, else None.

  Reads only the checkpoint folder names, so a finished run returns in seconds instead of
  building models and compiling first.
  """
  steps = ckpt_lib.saved_steps(workdir)
  end = int(config.total_steps)
  if int(config.stop_at_step):
    end = min(end, int(config.stop_at_step))
  if not steps or steps[-1] < end:
    return None
  logging.info("nothing to do: %s holds step %d, the end of this run (config.total_steps=%d, "
               "config.stop_at_step=%d); raise --config.total_steps to train longer",
               ckpt_lib.checkpoint_dir(workdir), steps[-1], int(config.total_steps),
               int(config.stop_at_step))
  return steps[-1]


def _train(config, workdir: str, stop_signal) -> dict:
  """:func:`train_and_evaluate` after the checks, with the stop-signal handlers installed."""
  # ------------------------------------------------------------------ setup
  trainer = setup(config, workdir)
  mesh = trainer.mesh
  logging.info("mesh %s; %s trainable params; %d devices, %d processes",
               dict(mesh.shape), f"{state_lib.count_params(trainer.state.params):,}", mesh.size,
               jax.process_count())
  data_iter, checkpointer, writer = _open_run(config, workdir)

  # ------------------------------------------------------------------ restore
  state = _restored_state(trainer, checkpointer, writer, data_iter)
  step = int(jax.device_get(state.step))
  stopped = "signal" if ckpt_lib.any_process(stop_signal.requested)[0] else ""
  if step >= int(config.total_steps) or stopped:
    logging.info("stopping at step %d before compiling (%s)", step,
                 "stop signal" if stopped else f"config.total_steps={config.total_steps}")
    _close_run(checkpointer, writer)
    return {"step": step, "stopped": stopped}

  # ------------------------------------------------------------------ compile
  compiled = compile_step(trainer, state)
  flops = compiled_flops(compiled, mesh.size)  # per device; micro-batch scans included
  _log_compiled(config, compiled, flops)
  sampler = Sampler(trainer, workdir, writer) if int(config.sample_every) > 0 else None

  # ------------------------------------------------------------------ train
  history, pending, last = [], None, {"step": step}
  data_skipped, data_error, stopped = 0, None, ""
  window_start, window_steps, pause = time.perf_counter(), 0, 0.0
  total = int(config.total_steps)
  stop_at = int(config.stop_at_step) or total
  try:
    while step < min(total, stop_at):
      data_state = copy.deepcopy(data_iter.get_state())  # small dicts; iterators may reuse theirs
      try:
        batch = next(data_iter)
      except pipeline.BadDataError as e:  # saved below, then raised
        batch, data_error = None, e
      # One agreed decision per step: no process may start a step another one skips.
      signal_stop, data_stop = ckpt_lib.any_process(
          stop_signal.requested or (jax.process_count() > 1
                                    and checkpointer.manager.reached_preemption(step)),
          data_error is not None)
      if signal_stop or data_stop:
        data_iter.set_state(data_state)  # this step's batch was not trained on
        stopped = "bad_data" if data_stop else "signal"
        logging.warning("stopping at step %d (%s): saving a checkpoint", step,
                        "data.max_bad_fraction exceeded" if data_stop else "stop signal")
        break
      data_skipped += int(np.sum(batch.get("num_skipped", 0)))
      state, metrics = compiled(state, trainer.frozen, global_batch_arrays(batch, mesh))
      step += 1
      window_steps += 1
      # Read the previous step's metrics while this one runs (keeps the device busy).
      if pending is not None:
        history.append(_check_finite(jax.device_get(pending), config, checkpointer))
      pending = metrics

      if step % int(config.log_every) == 0 or step == total:
        history.append(_check_finite(jax.device_get(pending), config, checkpointer))
        pending = None
        elapsed = time.perf_counter() - window_start - pause
        scalars = _window_scalars(config, history, data_skipped, elapsed, window_steps, flops)
        writer.write(step, scalars)
        last = dict(scalars, step=step)  # keeps nonfinite_streak of this step
        history, window_start, window_steps, pause = [], time.perf_counter(), 0, 0.0

      t_pause = time.perf_counter()
      pending = _sample_and_save(config, step, state, trainer.frozen, sampler, checkpointer,
                                 data_iter, history, pending, last)
      pause += time.perf_counter() - t_pause
    if pending is not None:
      _check_finite(jax.device_get(pending), config, checkpointer)
    # ---------------------------------------------------------------- final save
    _final_save(checkpointer, step, state, data_iter, stopped, data_error)
  finally:
    _close_run(checkpointer, writer)
  last.update(step=step, stopped=stopped)
  return last


def _open_run(config, workdir: str):
  """``(data_iter, checkpointer, writer)`` of a run; process 0 writes ``workdir/config.json``."""
  per_host = int(config.batch_size) // jax.process_count()
  dataset = pipeline.make_dataset(config.data, batch_size=per_host, seed=int(config.seed),
                                  shard_index=jax.process_index(),
                                  shard_count=jax.process_count())
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=int(config.keep_checkpoints),
                                       async_save=bool(config.async_checkpointing))
  writer = log_lib.MetricWriter(workdir, int(config.total_steps))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  return iter(dataset), checkpointer, writer


def _restored_state(trainer: Trainer, checkpointer, writer, data_iter):
  """The trainer's fresh state, or the newest checkpoint's that restores (damaged newer ones
  are moved aside; the fresh state is freed first). A failure closes the run's writers."""
  if not checkpointer.all_steps():
    return trainer.state
  target = state_lib.abstract_with_shardings(trainer.state, trainer.state_shardings)
  trainer.state = None  # free the fresh state before the restored one arrives
  try:
    return checkpointer.restore_latest(target, data_iter)[1]
  except ckpt_lib.CheckpointError:
    _close_run(checkpointer, writer)
    raise


def _close_run(checkpointer, writer) -> None:
  checkpointer.close()
  writer.close()


def _sample_and_save(config, step: int, state, frozen, sampler, checkpointer, data_iter,
                     history: list[dict], pending, last: dict):
  """After ``step``: the sample grid and the checkpoint when they are due. A checkpoint waits
  for this step's metrics (appended to ``history``) and is skipped during a non-finite streak.
  Returns the still-pending metrics (``None`` once read)."""
  if sampler is not None and (step % int(config.sample_every) == 0
                              or step == int(config.total_steps)):
    sampler(state.ema_params, frozen, step)  # EMA weights, as eval and export
  if int(config.checkpoint_every) and step % int(config.checkpoint_every) == 0:
    if pending is not None:  # know this step's outcome before saving it
      history.append(_check_finite(jax.device_get(pending), config, checkpointer))
      pending = None
    if streak_now(history, last) > 0:
      logging.warning("step %d: not saving during a non-finite streak", step)
    else:
      checkpointer.save(step, state, data_iter)
  return pending


def _log_compiled(config, compiled: compilation.Compiled, flops: float | None) -> None:
  logging.info("compiled the %s step in %.1fs (lowering %.1fs); %s GFLOP per device per step",
               config.mode, compiled.compile_s, compiled.lower_s,
               f"{flops / 1e9:.1f}" if flops else "?")


def _window_scalars(config, history: list[dict], data_skipped: int, elapsed: float,
                    window_steps: int, flops: float | None) -> dict:
  """The logged scalars of one window of ``window_steps`` steps that took ``elapsed`` s:
  mean metrics, counters, speed, and TFLOP/s and MFU where the FLOPs and peak are known."""
  scalars = _mean_metrics(history)
  scalars.update(skipped_total=history[-1]["skipped_total"],
                 nonfinite_streak=history[-1]["nonfinite_streak"],
                 data_skipped=data_skipped, step_time=elapsed / window_steps,
                 steps_per_sec=window_steps / elapsed,
                 examples_per_sec=window_steps * int(config.batch_size) / elapsed)
  del scalars["skipped"]
  peak = peak_flops(config)
  if flops:
    scalars["tflops_per_device"] = flops * window_steps / elapsed / 1e12
    if peak:
      scalars["mfu"] = flops * window_steps / elapsed / peak
  return scalars


def _final_save(checkpointer, step: int, state, data_iter, stopped: str, data_error) -> None:
  """Saves ``step`` unless it is saved; a bad-data stop then raises :class:`BadDataError`."""
  if checkpointer.latest_step() != step:
    checkpointer.save(step, state, data_iter, force=True)
  if stopped == "bad_data":
    checkpointer.wait()
    reason = (str(data_error) if data_error is not None else
              "another process exceeded data.max_bad_fraction (its log lists the files)")
    raise pipeline.BadDataError(
        f"stopped at step {step}, saved in {checkpointer.directory}; rerun to resume once the "
        f"data is fixed. {reason}")


def streak_now(history: list[dict], last: dict) -> int:
  """Non-finite streak of the latest step whose metrics were read."""
  return int((history[-1] if history else last).get("nonfinite_streak", 0))


def _check_finite(metrics: dict, config, checkpointer) -> dict:
  metrics = {k: float(v) for k, v in metrics.items()}
  streak = int(metrics["nonfinite_streak"])
  if streak:
    logging.warning("non-finite loss/gradient: update skipped (%d in a row, %d in total)",
                    streak, int(metrics["skipped_total"]))
  if streak >= int(config.max_nonfinite_steps):
    checkpointer.wait()
    raise NonFiniteError(
        f"{streak} non-finite steps in a row (config.max_nonfinite_steps="
        f"{config.max_nonfinite_steps}); stopping. Last good checkpoint: step "
        f"{checkpointer.latest_step()} in {checkpointer.directory}")
  return metrics
