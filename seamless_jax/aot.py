"""Compile the real train step (or the sampler) for a TPU/GPU target on any machine.

  python -m seamless_jax.aot --config=configs/two_step.py:sd15,v5e --topology=v5e-8
  python -m seamless_jax.aot --config=configs/vae_finetune.py:sd15 --topology=h100-8
  python -m seamless_jax.aot --config=configs/two_step.py:sd15 --topology=h100-1 \\
      --what=sample --sample_batch=8

Needs ``pip install -e ".[aot]"`` (libtpu and the CUDA PJRT plugin; neither needs the chips).
The step is the one ``seamless_jax.main`` trains: the same config (every ``--config.FIELD``
override), mesh, shardings, attention kernels and compile options, built from shapes alone (no
weights, no data; ``config.pretrained``'s ``config.json`` files are read when it is a folder,
the SD-1.5 presets otherwise). The target's devices are compile-only devices
(:mod:`seamless_jax.runtime.hardware`), multi-host slices included (a v5e-256 is 64 hosts).

It prints one table: per-device bytes of params, optimizer state, EMA, frozen params, batch and
XLA's temporaries, the peak against the device's HBM, whether it **fits** (on TPU XLA refuses a
program over the limit: its figure is quoted), lowering and compile time, this process's peak
host RAM, FLOPs per step (the analytic count of :mod:`seamless_jax.runtime.flops` and XLA's where
it gives one) and the images/s that 40 % MFU would give.

Exit status: 0 fits; 2 does not fit (the message lists settings to try); 1 an error in the
config or the set-up (one line).
"""

from __future__ import annotations

import os

# Before JAX loads: compute stays on this machine's CPU (the CUDA plugin then registers without
# looking for a driver; libtpu's settings are in seamless_jax.runtime.hardware.LIBTPU_ENV).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from seamless_jax import console  # pylint: disable=wrong-import-position

console.import_jax_quietly()
# pylint: disable=wrong-import-position
import copy
import dataclasses
import json
import math
import re
import resource
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import app
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from seamless_jax import build
from seamless_jax import convert
from seamless_jax import inpaint
from seamless_jax import objectives
from seamless_jax.diffusion import schedule as schedule_lib
from seamless_jax.models import attention
from seamless_jax.runtime import compilation
from seamless_jax.runtime import hardware
from seamless_jax.runtime import sharding as shd
from seamless_jax.train import config_check
from seamless_jax.train import trainer as trainer_lib

FLAGS = flags.FLAGS

EXIT_FITS, EXIT_ERROR, EXIT_DOES_NOT_FIT = 0, 1, 2
MFU_FOR_ESTIMATE = 0.40
GIB = 2 ** 30


@dataclasses.dataclass
class Report:
  """What compiling one program for one target showed. Bytes are per device."""
  target: str
  what: str
  config: str
  devices: int
  hosts: int
  global_batch: int
  settings: dict
  hbm_bytes: int
  usable_bytes: int
  fits: bool
  bytes: dict = dataclasses.field(default_factory=dict)
  xla_message: str = ""
  lower_s: float | None = None  # None: XLA refused the program (compile_s = time until then)
  compile_s: float = 0.0
  host_peak_rss_bytes: int = 0
  flops_per_step: float | None = None
  xla_flops_per_device: float | None = None
  img_s_at_40_mfu: float | None = None
  attention: dict = dataclasses.field(default_factory=dict)

  @property
  def peak_bytes(self) -> int | None:
    return self.bytes.get("peak")


# ============================================================================ accounting

def per_device_bytes(tree: Any, shardings: Any = None) -> int:
  """Bytes one device holds of ``tree`` (arrays or ShapeDtypeStructs), by each leaf's sharding
  (``shardings`` or the leaf's own; unsharded leaves count whole)."""
  leaves = jax.tree.leaves(tree)
  shards = jax.tree.leaves(shardings) if shardings is not None else [None] * len(leaves)
  total = 0
  for leaf, sharding in zip(leaves, shards):
    sharding = sharding or getattr(leaf, "sharding", None)
    shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return int(total)


def memory_breakdown(compiled, parts: dict[str, int]) -> dict[str, int]:
  """``parts`` (named argument bytes) plus XLA's figures: ``arguments``, ``outputs``,
  ``aliased`` (donated), ``temporaries``, ``code`` and ``peak`` = arguments + outputs −
  aliased + temporaries + code."""
  stats = compiled.memory_analysis()
  figures = dict(parts)
  if stats is None:
    return figures
  figures.update(arguments=int(stats.argument_size_in_bytes),
                 outputs=int(stats.output_size_in_bytes),
                 aliased=int(stats.alias_size_in_bytes),
                 temporaries=int(stats.temp_size_in_bytes),
                 code=int(stats.generated_code_size_in_bytes))
  figures["peak"] = (figures["arguments"] + figures["outputs"] - figures["aliased"]
                     + figures["temporaries"] + figures["code"])
  return figures


def xla_flops(compiled) -> float | None:
  """XLA's FLOP count per device (``None`` where it gives none, e.g. the GPU plugin)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (backends without a cost model raise)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and cost.get("flops") else None


def host_peak_rss_bytes() -> int:
  """This process's peak resident memory (Linux reports KiB)."""
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


OOM_PATTERN = re.compile(r"RESOURCE_EXHAUSTED|Ran out of memory|exceeds available", re.I)


def out_of_memory_message(error: Exception) -> str | None:
  """XLA's one-line "does not fit" figure from a compile error, ``None`` for other errors."""
  text = str(error)
  if not OOM_PATTERN.search(text):
    return None
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  figures = [line for line in lines if re.search(r"\d+(\.\d+)?[GM]", line)]
  return (figures or lines)[0][:400]


# ============================================================================ compiling

def target_mesh(config, t: hardware.Target) -> Mesh:
  """The training mesh (``config.mesh``) over ``t``'s compile-only devices."""
  with console.native_stderr_captured():
    devices = hardware.compile_only_devices(t)
  return shd.make_mesh(int(config.mesh.data), int(config.mesh.fsdp), devices=devices)


def settings_of(config) -> dict:
  """The config fields that decide memory, as the report shows them."""
  keys = ("batch_size", "grad_accum_steps", "mesh.data", "mesh.fsdp", "parallelism", "remat",
          "remat_policy", "frozen_dtype", "dtype", "attention", "data.resolution")
  values = {}
  for key in keys:
    value = config
    for part in key.split("."):
      value = value[part]
    values[key] = value
  return values


# XLA options for compiling without the device. GPU: the Triton GEMM emitter picks its tiles by
# autotuning on the device; without one, SD-1.5's (16384 x 320) projections fail ("Couldn't find
# output tile sizes"), so GEMMs compile as cuBLAS calls (same buffers, the same memory figure).
COMPILE_ONLY_OPTIONS = {"gpu": {"xla_gpu_enable_triton_gemm": False}}


def _compile(jitted, args, mesh: Mesh, name: str):
  """``(compiled, '')``, or ``(None, XLA's message)`` when the program does not fit; attention
  traced for ``mesh``; libtpu's compile chatter kept off the console."""
  platform = attention.target_of(mesh).platform
  with attention.kernel_target(mesh), console.chatter_filtered():
    try:
      return compilation.aot_compile(jitted, *args, name=name, release_trace=True,
                                     compiler_options=COMPILE_ONLY_OPTIONS.get(platform)), ""
    except jax.errors.JaxRuntimeError as e:
      message = out_of_memory_message(e)
      if message is None:
        raise
      return None, message


def compile_train_step(config, target_name: str, config_name: str = "") -> Report:
  """Compiles ``config``'s train step for the target (module doc) and reports on it."""
  t = hardware.target(target_name)
  mesh = target_mesh(config, t)
  trainer = trainer_lib.shapes_only_setup(config, mesh)
  batch = trainer_lib.abstract_batch(config, mesh)
  state, state_sh = trainer.state, trainer.state_shardings
  parts = {"params": per_device_bytes(state.params, state_sh.params),
           "opt_state": per_device_bytes(state.opt_state, state_sh.opt_state),
           "ema": per_device_bytes(state.ema_params, state_sh.ema_params),
           "frozen": per_device_bytes(trainer.frozen, trainer.frozen_shardings),
           "batch": per_device_bytes(batch)}
  t0 = time.perf_counter()
  compiled, oom = _compile(trainer.step_fn, (state, trainer.frozen, batch), mesh,
                           f"{trainer.objective.name} step for {t.name}")
  report = _report(t, "train", config, config_name, int(config.batch_size), parts, compiled,
                   oom, time.perf_counter() - t0)
  report.attention = attention_kernels(trainer, mesh)
  return report


def attention_kernels(trainer, mesh: Mesh) -> dict:
  """``{'<kernel> (head dim H)': calls}`` of one UNet forward pass (the VAE's for
  vae_finetune) on a micro-batch, traced for ``mesh``."""
  counts: dict[str, int] = {}
  models, config = trainer.models, trainer.config
  micro_batch = int(config.batch_size) // int(config.grad_accum_steps)
  side = int(config.data.resolution)
  with attention.kernel_target(mesh), attention.count_kernels(counts):
    if models.unet is not None:
      unet, lat = models.unet, side // int(models.vae.downscale)
      jax.eval_shape(lambda: unet.init_with_output(
          jax.random.PRNGKey(0), jnp.zeros((micro_batch, lat, lat, 4), unet.dtype),
          jnp.zeros((micro_batch,), jnp.int32),
          jnp.zeros((micro_batch, 77, unet.cross_attention_dim), unet.dtype)))
    else:
      jax.eval_shape(lambda: models.vae.init_with_output(
          jax.random.PRNGKey(0), jnp.zeros((micro_batch, side, side, 3), models.vae.dtype)))
  return counts


def compile_sampler(config, target_name: str, batch: int, resolution: int, steps: int,
                    config_name: str = "") -> Report:
  """Compiles the BLD inference sampler (``Inpainter``'s program) for the target: the UNet of
  ``config`` (a UNet is built for every mode), ``batch`` images of ``resolution``², params
  replicated, images split over the devices when the batch divides by their number."""
  t = hardware.target(target_name)
  config = copy.deepcopy(config)
  if not objectives.for_config(config).needs_unet:  # the sampler needs a UNet: build one
    config.mode = objectives.TwoStep.name
  config_check.validate(config, shapes_only=True)
  mesh = target_mesh(config, t)
  models = build.build_models(config, shapes_only=True)
  key = jax.random.PRNGKey(0)
  abstract = lambda m: jax.eval_shape(lambda: m.init(key, *m.dummy_inputs())["params"])
  pipe = convert.Pipeline(models.unet, abstract(models.unet), models.vae, abstract(models.vae),
                          models.text, abstract(models.text), None,
                          {"prediction_type": schedule_lib.TRAINED_PREDICTION_TYPE})
  inpainter = inpaint.Inpainter(pipe)
  jitted, arguments = inpainter.sample_program(steps)
  rows = NamedSharding(mesh, P(tuple(mesh.axis_names)) if batch % mesh.size == 0 else P())
  length = int(models.text.max_position_embeddings)
  part = {"image": jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32,
                                        sharding=rows),
          "keep": jax.ShapeDtypeStruct((batch, resolution, resolution, 1), jnp.float32,
                                       sharding=rows),
          "cond_ids": jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows),
          "uncond_ids": jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows),
          "keys": jax.ShapeDtypeStruct((batch, 2), jnp.uint32, sharding=rows)}
  replicated = NamedSharding(mesh, P())
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                        inpainter.params)
  args = list(arguments(part))
  args[0] = params
  args[6] = jax.ShapeDtypeStruct(inpainter.alphas_cumprod.shape, jnp.float32, sharding=replicated)
  args[7] = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  parts = {"params": per_device_bytes(params), "batch": per_device_bytes(part)}
  t0 = time.perf_counter()
  compiled, oom = _compile(jitted, args, mesh, f"sampler for {t.name}")
  report = _report(t, "sample", config, config_name, batch, parts, compiled, oom,
                   time.perf_counter() - t0)
  report.settings.update({"sample_steps": steps, "sample_resolution": resolution})
  return report


def _report(t: hardware.Target, what: str, config, config_name: str, global_batch: int,
            parts: dict, compiled, oom: str, seconds: float) -> Report:
  report = Report(target=t.name, what=what, config=config_name, devices=t.num_devices,
                  hosts=t.num_hosts, global_batch=global_batch, settings=settings_of(config),
                  hbm_bytes=t.chip.hbm_bytes, usable_bytes=t.usable_hbm_bytes, fits=False,
                  bytes=dict(parts), xla_message=oom, compile_s=seconds,
                  host_peak_rss_bytes=host_peak_rss_bytes())
  if compiled is None:
    return report
  report.bytes = memory_breakdown(compiled.fn, parts)
  report.lower_s, report.compile_s = compiled.lower_s, compiled.compile_s
  report.flops_per_step = compiled.flops
  report.xla_flops_per_device = xla_flops(compiled.fn)
  peak = report.peak_bytes
  report.fits = peak is None or peak <= t.usable_hbm_bytes
  if compiled.flops:
    seconds_per_step = compiled.flops / (MFU_FOR_ESTIMATE * t.chip.peak_flops * t.num_devices)
    report.img_s_at_40_mfu = global_batch / seconds_per_step
  return report


# ============================================================================ output

def _gb(value: int | None) -> str:
  return "-" if value is None else f"{value / GIB:.2f} GiB"


def _flops(value: float) -> str:
  return f"{value / 1e12:.1f} TFLOP" if value >= 1e11 else f"{value / 1e9:.2f} GFLOP"


def format_report(r: Report) -> str:
  """The table the command prints."""
  b = r.bytes
  rows = [("target", f"{r.target}: {r.devices} x {hardware.target(r.target).chip.name}, "
                     f"{r.hosts} host{'s' if r.hosts > 1 else ''}"),
          ("program", f"{r.what} ({r.config})" if r.config else r.what),
          ("settings", ", ".join(f"{k}={v}" for k, v in r.settings.items())),
          ("params / device", _gb(b.get("params"))),
          ("optimizer state / device", _gb(b.get("opt_state"))),
          ("EMA / device", _gb(b.get("ema"))),
          ("frozen params / device", _gb(b.get("frozen"))),
          ("batch / device", _gb(b.get("batch"))),
          ("XLA temporaries / device", _gb(b.get("temporaries"))),
          ("peak / device", f"{_gb(r.peak_bytes)} of {_gb(r.usable_bytes)} usable "
                            f"({_gb(r.hbm_bytes)} HBM)"),
          ("fits", "yes" if r.fits else f"NO{': ' + r.xla_message if r.xla_message else ''}"),
          ("lower + compile", f"{r.lower_s:.0f} s + {r.compile_s:.0f} s" if r.lower_s is not None
           else f"{r.compile_s:.0f} s until XLA refused it"),
          ("host RAM peak", _gb(r.host_peak_rss_bytes)),
          ("FLOPs / step", "-" if not r.flops_per_step else
           f"{_flops(r.flops_per_step)} analytic"
           + (f", XLA {_flops(r.xla_flops_per_device * r.devices)}"
              if r.xla_flops_per_device else ", XLA: none on this backend")),
          ("img/s at 40 % MFU", "-" if r.img_s_at_40_mfu is None else
           f"{r.img_s_at_40_mfu:.1f}"),
          ("attention kernels", ", ".join(f"{k} x{n}" for k, n in sorted(r.attention.items()))
           or "-")]
  rows = [(k, v) for k, v in rows if not (v == "-" and k.endswith("/ device") and
                                          k.split(" /")[0] not in ("params", "peak"))]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def advice(r: Report) -> str:
  """One paragraph: why it does not fit and the settings to try, in the order they help."""
  s = r.settings
  over = (f"needs {_gb(r.peak_bytes)} of {_gb(r.usable_bytes)}" if r.peak_bytes
          else r.xla_message)
  if r.what == "sample":
    return (f"The sampler does not fit {r.target} ({over}). Try: a smaller --sample_batch or "
            "--sample_resolution, or a target with more HBM per device.")
  tries = []
  if s.get("mesh.fsdp", 1) < r.devices:
    tries.append(f"--config.mesh.fsdp={r.devices} (shards params and optimizer state)")
  if s.get("frozen_dtype") != "bfloat16":
    tries.append("--config.frozen_dtype=bfloat16")
  if not s.get("remat"):
    tries.append("--config.remat=True")
  micro = r.global_batch // max(int(s.get("grad_accum_steps", 1)), 1)
  if micro > r.devices:
    tries.append(f"--config.grad_accum_steps={2 * int(s.get('grad_accum_steps', 1))} "
                 "(same global batch, fewer images per device at once)")
  tries.append("a smaller --config.batch_size or a target with more devices / HBM")
  return (f"The {r.what} program does not fit {r.target} ({over}). Try: " + "; ".join(tries)
          + ".")


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not FLAGS.topology:
    raise app.UsageError(f"--topology is required: one of {', '.join(hardware.TARGETS)}")
  hardware.start_backends()
  config = FLAGS.config
  config_name = FLAGS["config"].serialize().split("=", 1)[-1]
  try:
    if FLAGS.what == "train":
      report = compile_train_step(config, FLAGS.topology, config_name)
    else:
      resolution = FLAGS.sample_resolution or (512 if config.model == "sd15"
                                               else int(config.data.resolution))
      report = compile_sampler(config, FLAGS.topology, FLAGS.sample_batch, resolution,
                               FLAGS.sample_steps, config_name)
  except (config_check.ConfigError, ValueError, RuntimeError, FileNotFoundError) as e:
    sys.stderr.write(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n")
    return EXIT_ERROR
  print(format_report(report))
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      json.dump(dataclasses.asdict(report), f, indent=1)
  if not report.fits:
    print("\n" + advice(report))
    return EXIT_DOES_NOT_FIT
  return EXIT_FITS


def define_flags() -> None:
  """The command's flags (defined when it runs, so that importing this module next to
  ``seamless_jax.main``, which also has ``--config``, defines nothing twice)."""
  config_flags.DEFINE_config_file("config", None,
                                  "Training config, e.g. configs/two_step.py:sd15,v5e.",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, f"Target: {', '.join(hardware.TARGETS)}.")
  flags.DEFINE_enum("what", "train", ["train", "sample"],
                    "'train': the config's train step; 'sample': the BLD inference sampler.")
  flags.DEFINE_integer("sample_batch", 1, "Images per sampler call (--what=sample).")
  flags.DEFINE_integer("sample_resolution", 0, "Sampler image side (0: 512 for sd15 models, "
                       "config.data.resolution for tiny ones).")
  flags.DEFINE_integer("sample_steps", 50, "DDIM steps of the sampler (--what=sample).")
  flags.DEFINE_string("json", None, "Also write the report as JSON to this file.")


# glibc's malloc gives each compiler thread its own arena; XLA's TPU back end then holds
# memory it has freed. Two arenas: the SD-1.5 v5e-8 two-step compile peaks at 17.5 instead of
# 21.3 GB of host RAM and compiles in 918 instead of 1208 s (docs/targets.md).
MALLOC_ARENAS = "2"


def run() -> None:
  """The command; re-executes itself once with ``MALLOC_ARENA_MAX`` set (read at process start)
  unless the caller set it."""
  if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
    os.environ["MALLOC_ARENA_MAX"] = MALLOC_ARENAS
    os.execv(sys.executable, [sys.executable, "-m", "seamless_jax.aot", *sys.argv[1:]])
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
