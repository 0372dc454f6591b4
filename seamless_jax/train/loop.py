"""``train(config, workdir)``: the training loop shared by all objectives.

Sections: setup (mesh, data, models, state) -> restore -> compile -> train -> final save.
Resuming is automatic: when ``workdir/checkpoints`` holds a checkpoint the state (params,
optimizer, EMA, step, RNG, skip counters) and the Grain iterator continue from the newest one
that restores (damaged newer steps are moved to ``checkpoints/damaged/``). The config is checked
before the workdir is created, and a workdir whose checkpoints already reach the end returns
before anything is built.

Hooks: after each step the loop calls the hooks it is handed (``hook.due(step)``, then
``hook(ema_params, frozen, step)``); by default :func:`default_hooks` builds them from the
config (the sample grids and seam scores of :mod:`seamless_jax.train.samples`), as big_vision
builds its evaluators.

Stopping early: SIGTERM, the first Ctrl-C, ``stop_at_step`` and a tripped ``data.max_bad_fraction``
save a checkpoint at the current step first, once a step was trained (before that there is
nothing to save). Every process takes the same decision at the same step
(:func:`checkpoint.any_process`), so none enters a collective step the others skip. On one
process a signal during the compilation returns at once (the compiling thread is left behind:
``compile_abandoned`` in the result tells the command to exit).

The console: each long phase is announced before it starts and repeated while it lasts
(:func:`seamless_jax.console.phase`: set-up, compiling, sampling), progress lines follow every
``log_every`` steps, and the log ends with a summary (:mod:`seamless_jax.train.summary`): where
the checkpoints, metrics, TensorBoard events and samples are, the last loss and seam CD, and the
next commands.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from seamless_jax import console
from seamless_jax import workdir as workdir_lib
from seamless_jax.data import pipeline
from seamless_jax.runtime import compilation
from seamless_jax.train import checkpoint as ckpt_lib
from seamless_jax.train import config_check
from seamless_jax.train import metric_writer as log_lib
from seamless_jax.train import samples
from seamless_jax.train import state as state_lib
from seamless_jax.train import summary
from seamless_jax.train import trainer as trainer_lib


class NonFiniteError(RuntimeError):
  """Too many non-finite steps in a row; the last good checkpoint is kept."""


def default_hooks(trainer: trainer_lib.Trainer, workdir: str, writer) -> list:
  """The hooks a config asks for: the sample grid every ``sample_every`` steps (if > 0)."""
  if int(trainer.config.sample_every) <= 0:
    return []
  return [samples.SampleHook(trainer, workdir, writer)]


def train(config, workdir: str, *, make_hooks: Callable = default_hooks) -> dict:
  """Trains ``config``'s objective in ``workdir`` (resuming from its latest intact checkpoint).

  ``make_hooks(trainer, workdir, writer) -> [hook]`` builds the hooks (module doc).
  Returns the last logged metrics (a dict of floats), ``step`` and ``stopped``: '' when the run
  reached ``total_steps``/``stop_at_step`` (or had nothing left to do), 'signal' after SIGTERM /
  Ctrl-C (``compile_abandoned`` True when that came during the compilation). Raises
  ``config_check.ConfigError`` (before creating the workdir), ``checkpoint.CheckpointError``
  when no checkpoint restores, ``pipeline.BadDataError`` (after saving) when
  ``data.max_bad_fraction`` trips, :class:`NonFiniteError`.
  """
  config_check.validate(config)  # before anything is written: a typo leaves no workdir behind
  config_check.check_paths(config)
  done = _finished_step(config, workdir)
  if done is not None:
    return {"step": done, "stopped": ""}
  os.makedirs(workdir, exist_ok=True)
  stop_signal = ckpt_lib.StopSignal()  # from here on SIGTERM / Ctrl-C save before stopping
  try:
    return _train(config, workdir, stop_signal, make_hooks)
  finally:
    stop_signal.close()


def _train(config, workdir: str, stop_signal, make_hooks: Callable) -> dict:
  """:func:`train` after the checks, with the stop-signal handlers installed."""
  # ------------------------------------------------------------------ setup
  stop_signal.note = stop_signal.NOTHING_TO_SAVE
  with console.phase("setting up (mesh, data, models, train state)", logging.info):
    trainer = trainer_lib.setup(config, workdir)
    run = _Run(trainer, *_open_run(config, workdir, trainer.objective.metric_names), stop_signal)
  try:
    # ---------------------------------------------------------------- restore
    state = _restored_state(trainer, run.checkpointer, run.data_iter)
    start_step = int(jax.device_get(state.step))
    stopped = "signal" if ckpt_lib.any_process(stop_signal.requested)[0] else ""
    if stopped or start_step >= int(config.total_steps):
      logging.info("stopping at step %d before compiling (%s)", start_step,
                   "stop signal" if stopped else f"config.total_steps={config.total_steps}")
      return {"step": start_step, "stopped": stopped}

    # ---------------------------------------------------------------- compile
    compiled = _compile_unless_stopped(trainer, state, stop_signal, workdir)
    if compiled is None:
      logging.warning("stopped while compiling, before step %d: nothing trained, nothing "
                      "saved", start_step + 1)
      return {"step": start_step, "stopped": "signal", "compile_abandoned": True}
    window = MetricWindow(config, _logged_flops(trainer, compiled),
                          lambda m: _check_finite(m, config, run.checkpointer))
    hooks = make_hooks(trainer, workdir, run.writer)
    logging.info("training from step %d; a progress line every %d steps", start_step,
                 int(config.log_every))

    # ---------------------------------------------------------------- train
    state, step, stopped, data_error = _train_steps(run, compiled, state, start_step, window,
                                                    hooks)

    # ---------------------------------------------------------------- final save
    _final_save(run.checkpointer, step, state, run.data_iter, stopped, data_error,
                trained=step > start_step)
  finally:
    run.checkpointer.close()
    run.writer.close()
  if jax.process_index() == 0:
    for line in summary.summary_lines(workdir, trainer.objective.exports, step, stopped):
      logging.info("%s", line)
  return dict(window.last, step=step, stopped=stopped)


def _compile_unless_stopped(trainer: trainer_lib.Trainer, state, stop_signal,
                            workdir: str) -> compilation.Compiled | None:
  """The compiled step, or ``None`` when a stop signal came while compiling (one process).

  XLA compiles in one long C++ call, during which Python runs no signal handler; so on one
  process the compilation runs in a helper thread while this (the main) thread watches
  ``stop_signal`` and returns at once when it is set, leaving that thread behind (the caller
  exits the process). Several processes must take one decision together: they wait for the
  compilation and decide at the first step."""
  cache = compilation.cache_dir(trainer.config, workdir)
  note = (f"(the first run only: later runs load it from {cache})" if cache
          else "(config.compilation_cache is off: every run compiles)")
  what = f"compiling the {trainer.objective.name} train step"
  with console.phase(what, logging.info, note=note):
    if jax.process_count() > 1:
      return trainer_lib.compile_step(trainer, state)
    outcome: dict = {}

    def work():
      try:
        outcome["compiled"] = trainer_lib.compile_step(trainer, state)
      except BaseException as e:  # pylint: disable=broad-except  (re-raised below)
        outcome["error"] = e

    worker = threading.Thread(target=work, name=what, daemon=True)
    worker.start()
    while worker.is_alive():
      worker.join(0.2)  # the main thread returns here, so Ctrl-C is handled within 0.2 s
      if stop_signal.requested:
        return None
  if "error" in outcome:
    raise outcome["error"]
  return outcome["compiled"]


# ============================================================================ run set-up

def _finished_step(config, workdir: str) -> int | None:
  """The newest saved step when it already reaches the end of the run, else None.

  Reads only the checkpoint folder names, so a finished run returns in seconds instead of
  building models and compiling first.
  """
  steps = workdir_lib.saved_steps(workdir)
  if not steps or steps[-1] < _end_step(config):
    return None
  logging.info("nothing to do: %s holds step %d, the end of this run (config.total_steps=%d, "
               "config.stop_at_step=%d); raise --config.total_steps to train longer",
               workdir_lib.checkpoint_dir(workdir), steps[-1], int(config.total_steps),
               int(config.stop_at_step))
  return steps[-1]


def _end_step(config) -> int:
  """The step this run stops at: ``total_steps``, or ``stop_at_step`` when set and earlier."""
  end = int(config.total_steps)
  return min(end, int(config.stop_at_step)) if int(config.stop_at_step) else end


def _open_run(config, workdir: str, terms: tuple[str, ...]):
  """``(data_iter, checkpointer, writer)`` of a run; process 0 writes ``workdir/config.json``."""
  per_host = int(config.batch_size) // jax.process_count()
  dataset = pipeline.make_dataset(config.data, batch_size=per_host, seed=int(config.seed),
                                  shard_index=jax.process_index(),
                                  shard_count=jax.process_count())
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=int(config.keep_checkpoints),
                                       async_save=bool(config.async_checkpointing))
  writer = log_lib.MetricWriter(workdir, int(config.total_steps), terms=terms[:2])
  if jax.process_index() == 0:
    workdir_lib.write_config(config, workdir)
  return iter(dataset), checkpointer, writer


def _restored_state(trainer: trainer_lib.Trainer, checkpointer, data_iter):
  """The trainer's fresh state, or the newest checkpoint's that restores (damaged newer ones
  are moved aside; the fresh state is freed first)."""
  if not checkpointer.all_steps():
    return trainer.state
  target = state_lib.abstract_with_shardings(trainer.state, trainer.state_shardings)
  trainer.state = None  # free the fresh state before the restored one arrives
  return checkpointer.restore_latest(target, data_iter)[1]


# ============================================================================ each step

@dataclasses.dataclass
class _Run:
  """What one call of :func:`train` works with besides the state."""
  trainer: trainer_lib.Trainer
  data_iter: Any
  checkpointer: ckpt_lib.Checkpointer
  writer: log_lib.MetricWriter
  stop_signal: ckpt_lib.StopSignal


def _logged_flops(trainer: trainer_lib.Trainer, compiled: compilation.Compiled) -> float | None:
  """FLOPs per device of one step (``None``: unknown), logged with the compile times."""
  flops = trainer_lib.compiled_flops(compiled, trainer.mesh.size)
  logging.info("compiled the %s step in %.1fs (lowering %.1fs); %s GFLOP per device per step",
               trainer.objective.name, compiled.compile_s, compiled.lower_s,
               f"{flops / 1e9:.1f}" if flops else "?")
  return flops


def _train_steps(run: _Run, compiled: compilation.Compiled, state, step: int,
                 window: MetricWindow, hooks: list):
  """Trains from ``step`` to the end step or an agreed stop: ``(state, step, stopped,
  data_error)`` (``stopped``: '', 'signal' or 'bad_data'; ``data_error``: the
  :class:`pipeline.BadDataError` of this process, saved by the caller and raised)."""
  trainer = run.trainer
  config = trainer.config
  start_step, stopped, data_error = step, "", None
  while step < _end_step(config):
    data_state = copy.deepcopy(run.data_iter.get_state())  # small dicts; iterators reuse theirs
    try:
      batch = next(run.data_iter)
    except pipeline.BadDataError as e:  # saved by the caller, then raised
      batch, data_error = None, e
    stopped = _agreed_stop(run.stop_signal, run.checkpointer, step, data_error)
    if stopped:
      run.data_iter.set_state(data_state)  # this step's batch was not trained on
      logging.warning("stopping at step %d (%s)%s", step,
                      "data.max_bad_fraction exceeded" if stopped == "bad_data"
                      else "stop signal", ": saving a checkpoint" if step > start_step else "")
      break
    window.data_skipped += int(np.sum(batch.get("num_skipped", 0)))
    state, metrics = compiled(state, trainer.frozen,
                              trainer_lib.global_batch_arrays(batch, trainer.mesh))
    step += 1
    run.stop_signal.note = run.stop_signal.SAVING
    window.add(metrics)  # read one step late: the device stays busy
    if step % int(config.log_every) == 0 or step == int(config.total_steps):
      run.writer.write(step, window.scalars(step))
    with window.paused():
      _run_hooks(hooks, step, state, trainer.frozen)
      _save_if_due(config, step, state, run.data_iter, run.checkpointer, window)
  window.read()
  return state, step, stopped, data_error



class MetricWindow:
  """The metrics of the steps since the last log line, and the run's speed over them.

  A step's metrics are read one step late (:meth:`add`), so reading never stalls the device;
  :meth:`read` reads the pending ones now (before a checkpoint: know the step's outcome).
  ``check(metrics) -> metrics`` sees every step's floats (the non-finite guard).
  """

  def __init__(self, config, flops_per_device: float | None, check: Callable[[dict], dict]):
    self.batch_size = int(config.batch_size)
    self.flops, self.peak = flops_per_device, trainer_lib.peak_flops(config)
    self.check = check
    self.history: list[dict] = []
    self.pending = None
    self.last: dict = {}
    self.data_skipped = 0  # over the run, not the window
    self.start, self.steps, self.pause = time.perf_counter(), 0, 0.0

  def add(self, metrics) -> None:
    self.steps += 1
    self.read()
    self.pending = metrics

  def read(self) -> None:
    if self.pending is not None:
      self.history.append(self.check(jax.device_get(self.pending)))
      self.pending = None

  @contextlib.contextmanager
  def paused(self):
    """Time spent inside (samples, checkpoints) does not count as training time."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self.pause += time.perf_counter() - start

  def streak(self) -> int:
    """Non-finite streak of the latest step whose metrics were read."""
    return int((self.history[-1] if self.history else self.last).get("nonfinite_streak", 0))

  def scalars(self, step: int) -> dict:
    """The window's logged scalars (mean metrics, counters, speed, TFLOP/s and MFU where the
    FLOPs and peak are known); starts the next window."""
    self.read()
    elapsed = time.perf_counter() - self.start - self.pause
    keys = [k for k in self.history[0] if k != "skipped"]
    scalars = {k: float(np.mean([h[k] for h in self.history])) for k in keys}
    scalars.update(skipped_total=self.history[-1]["skipped_total"],
                   nonfinite_streak=self.history[-1]["nonfinite_streak"],
                   data_skipped=self.data_skipped, step_time=elapsed / self.steps,
                   steps_per_sec=self.steps / elapsed,
                   examples_per_sec=self.steps * self.batch_size / elapsed)
    if self.flops:
      scalars["tflops_per_device"] = self.flops * self.steps / elapsed / 1e12
      if self.peak:
        scalars["mfu"] = self.flops * self.steps / elapsed / self.peak
    self.last = dict(scalars, step=step)  # keeps nonfinite_streak of this step
    self.history, self.start, self.steps, self.pause = [], time.perf_counter(), 0, 0.0
    return scalars


def _agreed_stop(stop_signal, checkpointer, step: int, data_error) -> str:
  """Why every process stops before ``step``: 'signal', 'bad_data', or '' to go on.

  One agreed decision per step: no process may start a step another one skips."""
  signal_stop, data_stop = ckpt_lib.any_process(
      stop_signal.requested or (jax.process_count() > 1
                                and checkpointer.manager.reached_preemption(step)),
      data_error is not None)
  if data_stop:
    return "bad_data"
  return "signal" if signal_stop else ""


def _run_hooks(hooks: list, step: int, state, frozen) -> None:
  for hook in hooks:
    if hook.due(step):
      hook(state.ema_params, frozen, step)  # EMA weights, as eval and export


def _save_if_due(config, step: int, state, data_iter, checkpointer,
                 window: MetricWindow) -> None:
  """Checkpoints every ``checkpoint_every`` steps, once this step's outcome is known; never
  during a non-finite streak."""
  if not int(config.checkpoint_every) or step % int(config.checkpoint_every):
    return
  window.read()
  if window.streak() > 0:
    logging.warning("step %d: not saving during a non-finite streak", step)
  else:
    checkpointer.save(step, state, data_iter)


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


# ============================================================================ the end

def _final_save(checkpointer, step: int, state, data_iter, stopped: str, data_error, *,
                trained: bool = True) -> None:
  """Saves ``step`` unless it is saved or nothing was ``trained`` in this run (an untrained
  step 0 is not worth a checkpoint); a bad-data stop then raises :class:`BadDataError`."""
  if trained and checkpointer.latest_step() != step:
    checkpointer.save(step, state, data_iter, force=True)
  if stopped == "bad_data":
    checkpointer.wait()
    reason = (str(data_error) if data_error is not None else
              "another process exceeded data.max_bad_fraction (its log lists the files)")
    saved = f"saved in {checkpointer.directory}" if trained else "nothing trained to save"
    raise pipeline.BadDataError(
        f"stopped at step {step}, {saved}; rerun to resume once the data is fixed. {reason}")
