"""Ahead-of-time compilation for TPU/GPU targets on this CPU machine (seamless_jax.aot).

Needs the ``[aot]`` extra (libtpu, the CUDA PJRT plugin), which ``.ci/run`` installs; a missing
extra fails these tests with the install command in the message.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from seamless_jax import aot
from seamless_jax.models import attention
from seamless_jax.runtime import hardware

import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tpu_mesh(name: str = "v5e-8") -> Mesh:
  devices = hardware.compile_only_devices(hardware.target(name))
  return Mesh(np.asarray(devices).reshape(-1, 1), ("data", "fsdp"))


def test_targets_know_their_chips():
  assert hardware.target("v4-8").num_devices == 4  # v4 names count TensorCores
  assert hardware.target("v5e-256").num_hosts == 64
  assert hardware.chip_of("TPU v5 lite").name == "TPU v5e"
  assert hardware.chip_of("TPU v5").name == "TPU v5p"
  assert hardware.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert hardware.peak_flops("cpu") is None
  with pytest.raises(ValueError, match="known: v4-8"):
    hardware.target("v9-8")


@pytest.mark.parametrize("name", ["v4-8", "v5e-256", "h100-8"])
def test_compile_only_devices_of_named_targets(name):
  t = hardware.target(name)
  devices = hardware.compile_only_devices(t)
  assert len(devices) == t.num_devices
  assert len({d.process_index for d in devices}) == t.num_hosts
  assert hardware.chip_of(devices[0].device_kind) is t.chip


def test_pallas_attention_compiles_under_jit_on_a_multichip_tpu():
  """Tiny q/k/v with a 256-wide head (Pallas) and a 160-wide head (XLA) under plain jit over
  8 TPU v5e chips: before the fix the 160 head reached the kernel (NotImplementedError) and the
  kernel sat outside a shard_map (Mosaic kernels cannot be automatically partitioned)."""
  mesh = tpu_mesh()
  batch = NamedSharding(mesh, P(("data", "fsdp")))

  def two_attentions(q256, q160):
    return (attention.attend(q256, q256, q256, heads=2),
            attention.attend(q160, q160, q160, heads=2))

  args = [jax.ShapeDtypeStruct((8, 128, 2 * d), jnp.bfloat16, sharding=batch) for d in (256, 160)]
  counts = {}
  with attention.kernel_target(mesh), attention.count_kernels(counts):
    compiled = jax.jit(two_attentions).lower(*args).compile()
  assert counts == {"pallas (head dim 256)": 1, "xla (head dim 160)": 1}
  assert "custom-call" in compiled.as_text() or compiled.memory_analysis() is not None


def test_pallas_attention_shards_heads_when_the_batch_does_not_divide():
  mesh = tpu_mesh()
  assert attention.kernel_partition_spec(mesh, 2, 8) == P(None, None, ("data", "fsdp"))
  assert attention.kernel_partition_spec(mesh, 2, 3) == P()
  q = jax.ShapeDtypeStruct((2, 128, 8 * 64), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
  with attention.kernel_target(mesh):
    jax.jit(lambda q: attention.attend(q, q, q, heads=8)).lower(q).compile()


@pytest.mark.slow
def test_tiny_two_step_step_compiles_for_a_tpu_slice_and_reports_memory(tmp_path):
  # The accelerator setting (the CPU configs unroll the two UNet calls): one UNet in the program.
  config = tiny.tiny_config("two_step", str(tmp_path), two_step__scan_calls=True)
  report = aot.compile_train_step(config, "v5e-8", "two_step:tiny")
  assert report.fits and report.devices == 8
  b = report.bytes
  assert b["params"] > 0 and b["opt_state"] > b["params"] and b["temporaries"] > 0
  assert b["peak"] == b["arguments"] + b["outputs"] - b["aliased"] + b["temporaries"] + b["code"]
  assert report.flops_per_step > 0 and report.xla_flops_per_device > 0
  assert any(k.startswith("pallas") for k in report.attention), report.attention
  table = aot.format_report(report)
  assert "fits" in table and "yes" in table and "TPU v5e" in table


@pytest.mark.slow
def test_cli_compiles_for_h100_and_an_oversized_batch_does_not_fit(tmp_path):
  """The command on the H100 target: exit 0 and 'fits yes' for the tiny config's train step; a
  sampler batch whose activations exceed 80 GB per GPU: exit 2, 'NO' and what to try."""
  out = tmp_path / "report.json"
  env = dict(os.environ, PYTHONPATH=ROOT)
  base = [sys.executable, "-m", "seamless_jax.aot", "--config=configs/two_step.py:tiny",
          "--topology=h100-8", "--config.two_step.scan_calls=True"]
  proc = subprocess.run(base + [f"--json={out}"], capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "cudart_stub" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
  assert "fits" in proc.stdout and "yes" in proc.stdout and "H100" in proc.stdout
  report = json.loads(out.read_text())
  assert report["fits"] and report["bytes"]["peak"] > 0 and report["target"] == "h100-8"
  assert report["bytes"]["opt_state"] > 0 and report["flops_per_step"] > 0
  big = subprocess.run(base + ["--what=sample", "--sample_steps=2", "--sample_batch=4096",
                               "--sample_resolution=1024"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert big.returncode == aot.EXIT_DOES_NOT_FIT, big.stdout[-2000:] + big.stderr[-2000:]
  assert "NO" in big.stdout and "does not fit h100-8" in big.stdout
  assert "Try:" in big.stdout


def test_bad_target_is_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", "seamless_jax.aot",
                         "--config=configs/two_step.py:tiny", "--topology=v9-8"],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert proc.returncode == aot.EXIT_ERROR
  assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown target 'v9-8'")


def test_out_of_memory_message_and_advice():
  error = RuntimeError("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory "
                       "in memory space hbm. Used 24.24G of 15.75G hbm.\nmore detail")
  assert aot.out_of_memory_message(error).endswith("Used 24.24G of 15.75G hbm.")
  assert aot.out_of_memory_message(RuntimeError("INVALID_ARGUMENT: bad shape")) is None
  report = aot.Report(target="v5e-8", what="train", config="c", devices=8, hosts=1,
                      global_batch=32, settings={"mesh.fsdp": 1, "frozen_dtype": "float32",
                                                 "remat": False, "grad_accum_steps": 1},
                      hbm_bytes=16 * 2 ** 30, usable_bytes=16 * 2 ** 30, fits=False,
                      xla_message="Used 24.24G of 15.75G hbm.")
  text = aot.advice(report)
  for flag in ("--config.mesh.fsdp=8", "--config.frozen_dtype=bfloat16", "--config.remat=True",
               "--config.grad_accum_steps=2"):
    assert flag in text, text
  assert "24.24G" in text


def test_per_device_bytes_follows_the_sharding():
  mesh = tpu_mesh()
  x = jax.ShapeDtypeStruct((8, 1024), jnp.float32)
  assert aot.per_device_bytes(x) == 8 * 1024 * 4
  assert aot.per_device_bytes(x, NamedSharding(mesh, P(("data", "fsdp")))) == 1024 * 4
  assert aot.per_device_bytes({"a": x}, {"a": NamedSharding(mesh, P())}) == 8 * 1024 * 4


def test_targets_table_of_the_sweep_script():
  """benchmarks/aot_targets.py turns reports into the docs/targets.md rows (fits / not)."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import aot_targets  # pylint: disable=import-outside-toplevel
  settings = {"batch_size": 32, "grad_accum_steps": 4, "mesh.fsdp": 8, "remat": False,
              "remat_policy": "nothing_saveable", "frozen_dtype": "bfloat16"}
  row = {"key": "k", "target": "v5e-8", "what": "train", "config": "configs/two_step.py:sd15,v5e",
         "devices": 8, "settings": settings, "bytes": {"peak": 12 * 2 ** 30},
         "usable_bytes": 16 * 2 ** 30, "fits": True, "lower_s": 25.0, "compile_s": 1000.0,
         "host_peak_rss_bytes": 18 * 2 ** 30, "img_s_at_40_mfu": 95.3}
  failed = dict(row, fits=False, bytes={}, lower_s=None, xla_message="Used 24.24G of 15.75G")
  lines = aot_targets.table([row, failed]).splitlines()
  assert lines[2].startswith("| v5e-8 | `configs/two_step.py:sd15,v5e` | 1 | fsdp=8, remat=off")
  assert "| 12.0 / 16.0 | yes | 1025 | 18.0 | 95.3 |" in lines[2]
  assert "XLA: Used 24.24G" in lines[3] and "**no**" in lines[3]
