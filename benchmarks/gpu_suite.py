"""One prepared GPU benchmark run (< 8 minutes on one GPU): train step and BLD sampler, JAX vs PyTorch.

  python benchmarks/gpu_suite.py                 # one GPU: SD-1.5 sizes at 512², bf16
  python benchmarks/gpu_suite.py --tiny          # CPU: tiny models at 32², same code (CI)

Parts, each in its own subprocess (one framework per process) with a wall-clock limit (order and
limits: ``PLAN``; the driver also keeps the whole run under ``--budget`` seconds):

* ``jax_step``: the two-step train step built as training builds it (``trainer_lib.setup`` +
  ``trainer_lib.compile_step``), batch 8 with an empty compilation cache, then batch 8 again (a
  restart: init and step come from the persistent cache), and last batch 16 (in the time left);
* ``torch_step``: the PyTorch peer of ``benchmarks/train_step.py`` (diffusers UNet, bf16
  autocast, SDPA, fused AdamW), batch 8 and 16;
* ``jax_sampler``: the 50-step BLD sampler (``diffusion.sampler.make_bld_sampler``, one jit,
  AOT-compiled by ``compilation.aot_compile``) at 64² latents (512² images), batch 1 and 4;
* ``torch_sampler`` / ``torch_compile_sampler``: the same loop with the diffusers UNet
  (``benchmarks/sampler.py``'s ``torch_bld``), eager and ``torch.compile``d.

Every part reports phase times (set-up, compile, steady state), img/s, MFU (analytic FLOP count,
:mod:`seamless_jax.runtime.flops`, for both frameworks' identical work) and peak memory; the driver
prints Markdown rows for docs/benchmarks.md. Weights are random: the JAX models get host-side
random parameters of the real shapes, which takes the same path as pretrained weights loaded from
a diffusers folder (no random-init program to compile).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # seamless_jax from the checkout
sys.path.insert(0, HERE)                    # train_step.py, sampler.py (benchmarks/)

RESULT = "RESULT "
SIZES = {  # model, resolution, step batches, sampler batches, sampler latent side, dtype
    "gpu": dict(model="sd15", resolution=512, step_batches=(8, 16), sample_batches=(1, 4),
                latent=64, dtype="bfloat16", steps=5, repeats=3, sample_repeats=2),
    "tiny": dict(model="tiny", resolution=32, step_batches=(2, 4), sample_batches=(1,),
                 latent=8, dtype="float32", steps=2, repeats=2, sample_repeats=1),
}
# (part, argument, wall-clock limit in seconds). On a GPU: batch 8 cold, the PyTorch peer, batch
# 8 again from the compilation cache (a restart), the samplers, and batch 16 with what is left.
PLAN = (("jax_step", "b0-cold", 160), ("torch_step", "all", 60), ("jax_step", "b0-warm", 45),
        ("jax_sampler", "all", 80), ("torch_sampler", "all", 30),
        ("torch_compile_sampler", "all", 90), ("jax_step", "b1", 150))
# --tiny (CI on CPU): every part once, the JAX step at one batch size.
TINY_PLAN = (("jax_step", "b0-cold", 120), ("torch_step", "all", 60), ("jax_sampler", "all", 60),
             ("torch_sampler", "all", 60), ("torch_compile_sampler", "all", 120))


def emit(result: dict) -> None:
  print(RESULT + json.dumps(result), flush=True)


def host_random_params(module, seed: int = 0):
  """Random float32 params of ``module``'s shapes as host numpy (no device program): kernels and
  embeddings N(0, 0.02²), norm scales 1, biases 0."""
  import jax  # pylint: disable=import-outside-toplevel
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                                *module.dummy_inputs())["params"])
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "bias":
      return np.zeros(leaf.shape, np.float32)
    if name == "scale":
      return np.ones(leaf.shape, np.float32)
    return (0.02 * rng.standard_normal(leaf.shape, dtype=np.float32)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(make, abstract)


# ============================================================================ parts

def part_jax_step(size: dict, arg: str, cache_dir: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import train_step  # pylint: disable=import-outside-toplevel
  from seamless_jax import build as models_lib  # pylint: disable=import-outside-toplevel
  batch_size = size["step_batches"][int(arg[1])]
  build_random = train_step.random_models(size["model"])

  def build_models(cfg, vocab_size=None):
    models = build_random(cfg, vocab_size)
    return models_lib.Models(vae=models.vae, text=models.text, unet=models.unet,
                             vae_params=host_random_params(models.vae, 1),
                             text_params=host_random_params(models.text, 2),
                             unet_params=host_random_params(models.unet, 3))
  config = train_step.bench_config(size["model"], batch_size, size["resolution"], size["dtype"],
                                   os.path.join(os.path.dirname(cache_dir), "data"),
                                   compilation_cache_dir=cache_dir)
  batch = train_step.random_batch(batch_size, size["resolution"])
  r = train_step.jax_step_benchmark(config, batch, size["steps"], size["repeats"],
                                    build_models=build_models)
  emit({"part": "jax_step", "label": f"JAX (seamless_jax, {size['dtype']}"
        f"{', from compilation cache' if arg.endswith('warm') else ''})", "batch": batch_size,
        "setup_s": r["setup_s"], "compile_s": r["lower_s"] + r["compile_s"],
        "first_step_s": r["first_step_s"], "img_s": r["steps_per_s"] * batch_size,
        "flops_per_img": r["flops"] / batch_size if r["flops"] else None, "mfu": r["mfu"],
        "peak_gb": r["peak_gb"], "device": jax.devices()[0].device_kind})


def _device_peak_flops(device_name: str) -> float | None:
  """Dense bf16 peak of a device by name (the chip table of seamless_jax.runtime.hardware)."""
  from seamless_jax.runtime import hardware  # pylint: disable=import-outside-toplevel
  return hardware.peak_flops(device_name)


def part_torch_step(size: dict, arg: str, cache_dir: str) -> None:
  del arg, cache_dir
  import torch  # pylint: disable=import-outside-toplevel
  import train_step  # pylint: disable=import-outside-toplevel
  cuda = torch.cuda.is_available()
  for batch_size in size["step_batches"]:
    if cuda:
      torch.cuda.reset_peak_memory_stats()
    r = train_step.torch_step_benchmark(size["model"],
                                        train_step.random_batch(batch_size, size["resolution"]),
                                        size["steps"], size["repeats"],
                                        device="cuda" if cuda else "cpu",
                                        bf16=cuda and size["dtype"] == "bfloat16")
    emit({"part": "torch_step", "batch": batch_size,
          "label": "PyTorch (diffusers, bf16 autocast, SDPA, fused AdamW)" if cuda
          else "PyTorch (diffusers, float32, CPU)",
          "setup_s": r["setup_s"], "compile_s": 0.0, "first_step_s": r["first_step_s"],
          "img_s": r["steps_per_s"] * batch_size, "peak_gb": r["peak_gb"],
          "device": torch.cuda.get_device_name() if cuda else "cpu",
          "peak_flops": _device_peak_flops(torch.cuda.get_device_name()) if cuda else None})


def _unet_config(size: dict) -> dict:
  import train_step  # pylint: disable=import-outside-toplevel
  return dict(train_step.MODEL_CONFIGS[size["model"]][0])


def part_jax_sampler(size: dict, arg: str, cache_dir: str) -> None:
  del arg
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import sampler as sampler_bench  # pylint: disable=import-outside-toplevel
  from seamless_jax.diffusion import schedule as sched  # pylint: disable=import-outside-toplevel
  from seamless_jax.diffusion.sampler import make_bld_sampler  # pylint: disable=import-outside-toplevel
  from seamless_jax.models import UNet2DConditionModel  # pylint: disable=import-outside-toplevel
  from seamless_jax.runtime import compilation  # pylint: disable=import-outside-toplevel
  from seamless_jax import build as models_lib  # pylint: disable=import-outside-toplevel
  compilation.enable_cache(cache_dir)
  t0 = time.perf_counter()
  config = _unet_config(size)
  unet = UNet2DConditionModel.from_config(config, dtype=models_lib.DTYPES[size["dtype"]])
  params = jax.device_put(host_random_params(unet))
  sample = make_bld_sampler(lambda p, z, t, c: unet.apply({"params": p}, z, t, c),
                            num_inference_steps=50)
  alphas_cumprod = sched.make_schedule().alphas_cumprod
  setup_s = time.perf_counter() - t0
  peak = _device_peak_flops(jax.devices()[0].device_kind) if size["dtype"] == "bfloat16" else None
  for batch_size in size["sample_batches"]:
    inputs = [jnp.asarray(x) for x in sampler_bench.make_inputs(
        batch_size, size["latent"], config["cross_attention_dim"])]
    args = (params, *inputs, jax.random.PRNGKey(0), alphas_cumprod)
    compiled = compilation.aot_compile(sample, *args)
    jax.block_until_ready(compiled(*args))
    seconds = sampler_bench.median_seconds(lambda: jax.block_until_ready(compiled(*args)),
                                           size["sample_repeats"])
    emit({"part": "jax_sampler", "label": f"JAX (one jit, {size['dtype']})",
          "batch": batch_size, "setup_s": setup_s,
          "compile_s": compiled.lower_s + compiled.compile_s, "latency_s": seconds,
          "img_s": batch_size / seconds, "flops_per_img": compiled.flops / batch_size,
          "mfu": compiled.flops / seconds / peak if peak else None,
          "peak_gb": _jax_peak_gb(), "device": jax.devices()[0].device_kind})


def _jax_peak_gb() -> float | None:
  import train_step  # pylint: disable=import-outside-toplevel
  return train_step.peak_memory_gb()


def part_torch_sampler(size: dict, arg: str, cache_dir: str, compile_unet: bool) -> None:
  del arg, cache_dir
  import diffusers  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import sampler as sampler_bench  # pylint: disable=import-outside-toplevel
  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  dtype = torch.bfloat16 if cuda and size["dtype"] == "bfloat16" else torch.float32
  t0 = time.perf_counter()
  config = _unet_config(size)
  torch.manual_seed(0)
  unet = diffusers.UNet2DConditionModel(**config).eval().to(device)
  if dtype != torch.float32:
    unet = unet.to(dtype)
  if compile_unet:
    unet = torch.compile(unet)
  scheduler = diffusers.DDIMScheduler(prediction_type="v_prediction", **sampler_bench.SCHEDULER)
  scheduler.set_timesteps(50)
  setup_s = time.perf_counter() - t0
  for batch_size in size["sample_batches"]:
    if cuda:
      torch.cuda.reset_peak_memory_stats()
    arrays = sampler_bench.make_inputs(batch_size, size["latent"], config["cross_attention_dim"])
    init, blend = sampler_bench.sampler_noise(jax.random.PRNGKey(0), arrays[0].shape, 50)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(
        device, dtype)
    args = (nchw(arrays[0]), nchw(arrays[1]), torch.from_numpy(arrays[2]).to(device, dtype),
            torch.from_numpy(arrays[3]).to(device, dtype), nchw(init), [nchw(n) for n in blend])

    def run():
      with torch.no_grad():
        out = sampler_bench.torch_bld(unet, scheduler, *args, 3.0)
      if cuda:
        torch.cuda.synchronize()
      return out
    t = time.perf_counter()
    run()  # warm-up (torch.compile compiles here)
    first = time.perf_counter() - t
    seconds = sampler_bench.median_seconds(run, size["sample_repeats"])
    emit({"part": "torch_compile_sampler" if compile_unet else "torch_sampler",
          "label": f"diffusers UNet, {'torch.compile' if compile_unet else 'eager'}"
          f"{', bf16' if dtype == torch.bfloat16 else ''}", "batch": batch_size,
          "setup_s": setup_s, "compile_s": max(first - seconds, 0.0), "latency_s": seconds,
          "img_s": batch_size / seconds,
          "peak_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
          "device": torch.cuda.get_device_name() if cuda else "cpu",
          "peak_flops": _device_peak_flops(torch.cuda.get_device_name()) if cuda else None})


PARTS = {"jax_step": part_jax_step, "torch_step": part_torch_step,
         "jax_sampler": part_jax_sampler,
         "torch_sampler": lambda s, a, c: part_torch_sampler(s, a, c, compile_unet=False),
         "torch_compile_sampler": lambda s, a, c: part_torch_sampler(s, a, c, compile_unet=True)}


# ============================================================================ driver

def run_part(part: str, arg: str, tiny: bool, cache_dir: str, limit: float) -> tuple[list, str]:
  """Runs one part in a fresh interpreter; returns its results and '' or why it stopped."""
  cmd = [sys.executable, os.path.abspath(__file__), "--part", part, "--arg", arg,
         "--cache_dir", cache_dir] + (["--tiny"] if tiny else [])
  env = dict(os.environ)
  if tiny:  # CPU, one thread per framework: OpenMP spin-waits collapse on shared CI cores
    env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               XLA_FLAGS=(env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                          " intra_op_parallelism_threads=1").strip())
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(limit, 1.0), env=env,
                          check=False)
    out, err, status = proc.stdout, proc.stderr, ("" if proc.returncode == 0 else
                                                  f"exit code {proc.returncode}")
  except subprocess.TimeoutExpired as e:
    out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    status = f"stopped at its {limit:.0f} s limit"
  results = [json.loads(line[len(RESULT):]) for line in out.splitlines()
             if line.startswith(RESULT)]
  if status:
    tail = " | ".join(err.strip().splitlines()[-3:])
    status = f"{status}: {tail}" if tail else status
  return results, status


def fmt(value, spec: str = ".1f", suffix: str = "") -> str:
  return "n/a" if value is None else f"{value:{spec}}{suffix}"


def markdown(results: list[dict], failures: list[str]) -> str:
  rows = ["| part | implementation | batch | set-up (s) | compile (s) | first step (s) | "
          "img/s | latency (s) | TFLOP/img | MFU | peak mem (GB) | device |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  flops_by_batch = {(r["part"], r["batch"]): r["flops_per_img"] for r in results
                    if r.get("flops_per_img")}  # JAX rows; PyTorch rows do the same work
  for r in results:
    flops = r.get("flops_per_img") or flops_by_batch.get(
        (r["part"].replace("torch_compile", "jax").replace("torch", "jax"), r["batch"]))
    mfu = r.get("mfu")
    if mfu is None and flops and r.get("peak_flops"):
      mfu = flops * r["img_s"] / r["peak_flops"]
    rows.append(
        f"| {r['part']} | {r['label']} | {r['batch']} | {fmt(r.get('setup_s'))} | "
        f"{fmt(r.get('compile_s'))} | {fmt(r.get('first_step_s'))} | {fmt(r['img_s'], '.2f')} | "
        f"{fmt(r.get('latency_s'), '.3f')} | {fmt(flops / 1e12 if flops else None, '.3f')} | "
        f"{fmt(100 * mfu if mfu else None, '.1f', '%')} | {fmt(r.get('peak_gb'))} | "
        f"{r['device']} |")
  rows += [f"\n- {f}" for f in failures]
  return "\n".join(rows)


def drive(tiny: bool, budget: float, parts: list[str] | None, workdir: str | None) -> int:
  """Runs :data:`PLAN` (:data:`TINY_PLAN`), or the ``parts`` named, under ``budget`` seconds;
  prints the table. Returns 1 when a part failed or did not finish in time."""
  start = time.perf_counter()
  root = workdir or tempfile.mkdtemp(prefix="gpu_suite_")
  cache_dir = os.path.join(root, "xla_cache")
  shutil.rmtree(cache_dir, ignore_errors=True)  # batch 8 'cold' really compiles
  os.makedirs(cache_dir)
  results, failures = [], []
  for part, arg, limit in TINY_PLAN if tiny else PLAN:
    if parts and part not in parts:
      continue
    left = budget - (time.perf_counter() - start)
    limit = min(limit, left)
    if limit < 5:
      failures.append(f"{part} {arg}: not run, the {budget:.0f} s budget was spent")
      continue
    t = time.perf_counter()
    got, status = run_part(part, arg, tiny, cache_dir, limit)
    print(f"# {part} {arg}: {time.perf_counter() - t:.1f}s {status or 'ok'}", flush=True)
    results += got
    if status:
      failures.append(f"{part} {arg}: {status}")
  print(f"# total {time.perf_counter() - start:.1f}s")
  print(markdown(results, failures))
  if workdir is None:
    shutil.rmtree(root, ignore_errors=True)
  return 1 if failures else 0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="tiny models on CPU (CI)")
  parser.add_argument("--budget", type=float, default=470.0,
                      help="seconds for the whole run (default 470 < 8 min)")
  parser.add_argument("--parts", default="", help="comma list of parts to run (default all)")
  parser.add_argument("--workdir", default="", help="keep the cache/data here (default: temp)")
  parser.add_argument("--part", default="", help=argparse.SUPPRESS)  # one part (subprocess)
  parser.add_argument("--arg", default="", help=argparse.SUPPRESS)
  parser.add_argument("--cache_dir", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  size = SIZES["tiny" if args.tiny else "gpu"]
  if args.part:
    PARTS[args.part](size, args.arg, args.cache_dir)
    return 0
  parts = [p for p in args.parts.split(",") if p] or None
  return drive(args.tiny, args.budget, parts, args.workdir or None)


if __name__ == "__main__":
  sys.exit(main())
