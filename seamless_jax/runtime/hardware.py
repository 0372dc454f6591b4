"""Accelerators this project plans for: chip facts, named targets, and compile-only devices.

One table of chips (HBM per device, dense bf16 peak FLOP/s, how JAX names their ``device_kind``)
serves the MFU estimate of training and the benchmarks (:func:`peak_flops`) and the
ahead-of-time compiler (:mod:`seamless_jax.aot`), which builds the devices of a named target
with :func:`compile_only_devices` on any machine:

* TPU slices (``v5e-8``, ``v4-32``, ``v5e-256``...) through libtpu's topology description
  (``jax.experimental.topologies``; ``pip install -e .[aot]``), with as many hosts as the real
  slice has, so multi-host programs compile from one process;
* NVIDIA hosts (``h100-8``...) through the CUDA PJRT plugin and a GPU target description written
  here from the chip's published figures (no GPU and no CUDA driver needed).

TPU names count chips except for v4 and v5p, whose names count TensorCores (two per chip, one
megacore device): ``v4-8`` is 4 devices, ``v5e-8`` 8.
"""

from __future__ import annotations

import dataclasses
import os

from seamless_jax import console

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator device.

  name: as people say it; kinds: substrings of ``jax.Device.device_kind`` that mean this chip
  (lower case); hbm_bytes: memory per device; peak_flops: dense bf16 FLOP/s per device;
  gpu: the GPU target figures (``None`` for TPUs); usable_fraction: the share of HBM a JAX
  process gets by default (GPU: ``XLA_PYTHON_CLIENT_MEM_FRACTION`` = 0.75; TPU: XLA itself
  checks the limit when it compiles).
  """
  name: str
  kinds: tuple[str, ...]
  hbm_bytes: int
  peak_flops: float
  gpu: dict | None = None
  usable_fraction: float = 1.0


# GPU figures (SM count, clocks, caches, memory) from NVIDIA's data sheets; enough for XLA's GPU
# compiler to pick its kernels and report memory the way it would on the device.
_HOPPER = dict(core_count=132, fpus_per_core=128, clock_rate_ghz=1.98, l2_cache_size=50 * 2 ** 20,
               shared_memory_per_core=228 * 1024, shared_memory_per_block_optin=227 * 1024,
               compute_capability=(9, 0))
CHIPS = {
    "v4": Chip("TPU v4", ("tpu v4",), 32 * GIB, 275e12),
    "v5e": Chip("TPU v5e", ("tpu v5 lite", "tpu v5e"), 16 * GIB, 197e12),
    "v5p": Chip("TPU v5p", ("tpu v5p", "tpu v5"), 95 * GIB, 459e12),
    "v6e": Chip("TPU v6e", ("tpu v6 lite", "tpu v6e"), 32 * GIB, 918e12),
    "a100": Chip("NVIDIA A100-SXM4-80GB", ("a100",), 85_100_068_864, 312e12, gpu=dict(
        core_count=108, fpus_per_core=64, clock_rate_ghz=1.41, l2_cache_size=40 * 2 ** 20,
        shared_memory_per_core=164 * 1024, shared_memory_per_block_optin=163 * 1024,
        compute_capability=(8, 0), memory_bandwidth=2.039e12), usable_fraction=0.75),
    "h100": Chip("NVIDIA H100 80GB HBM3", ("h100",), 84_942_979_072, 989e12,
                 gpu=dict(_HOPPER, memory_bandwidth=3.35e12), usable_fraction=0.75),
    "h200": Chip("NVIDIA H200 141GB HBM3e", ("h200",), 151_397_597_184, 989e12,
                 gpu=dict(_HOPPER, memory_bandwidth=4.8e12), usable_fraction=0.75),
    "l4": Chip("NVIDIA L4", ("l4",), 24 * GIB, 121e12),
}


@dataclasses.dataclass(frozen=True)
class Target:
  """A named machine to compile for: ``chip`` x ``num_devices`` over ``num_hosts`` hosts.

  topology: libtpu's topology name (``'v5e:2x4'``) or the CUDA plugin's
  ``slices x hosts x devices`` (``'1x1x8'``); topology_options: extra arguments of
  ``get_topology_desc`` (host bounds, megacore).
  """
  name: str
  chip: Chip
  num_devices: int
  num_hosts: int
  topology: str
  topology_options: tuple = ()

  @property
  def platform(self) -> str:
    return "cuda" if self.chip.gpu else "tpu"

  @property
  def usable_hbm_bytes(self) -> int:
    """HBM a training process may use: GPU: ``XLA_PYTHON_CLIENT_MEM_FRACTION`` of it (0.75
    unless set, as JAX does; ``launch/slurm_gpu.sbatch`` sets 0.95); TPU: all of it (XLA
    itself refuses a program over the limit)."""
    fraction = self.chip.usable_fraction
    if self.chip.gpu and os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"):
      fraction = float(os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"])
    return int(self.chip.hbm_bytes * fraction)


def _tpu(name, chip, devices, hosts, topology, **options) -> Target:
  return Target(name, CHIPS[chip], devices, hosts, topology, tuple(sorted(options.items())))


def _gpu(name, chip, devices) -> Target:
  return Target(name, CHIPS[chip], devices, 1, f"1x1x{devices}")


TARGETS = {t.name: t for t in (
    _tpu("v4-8", "v4", 4, 1, "v4:2x2x1", chip_config_name="megacore"),
    _tpu("v4-32", "v4", 16, 4, "v4:2x2x4", chip_config_name="megacore"),
    _tpu("v5e-1", "v5e", 1, 1, "v5e:1x1", chips_per_host_bounds=(1, 1, 1)),
    _tpu("v5e-8", "v5e", 8, 1, "v5e:2x4", chips_per_host_bounds=(2, 4, 1)),
    _tpu("v5e-256", "v5e", 256, 64, "v5e:16x16"),
    _tpu("v5p-8", "v5p", 4, 1, "v5p:2x2x1", chip_config_name="megacore"),
    _tpu("v6e-8", "v6e", 8, 1, "v6e:2x4", chips_per_host_bounds=(2, 4, 1)),
    _gpu("a100-8", "a100", 8),
    _gpu("h100-1", "h100", 1),
    _gpu("h100-8", "h100", 8),
    _gpu("h200-1", "h200", 1),
    _gpu("h200-8", "h200", 8),
)}


def target(name: str) -> Target:
  """The :class:`Target` called ``name``; ``ValueError`` listing the known names otherwise."""
  if name not in TARGETS:
    raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
  return TARGETS[name]


def chip_of(device_kind: str) -> Chip | None:
  """The chip a ``jax.Device.device_kind`` names (``'TPU v5 lite'``, ``'NVIDIA H100 80GB
  HBM3'``), or ``None``. Longer names are tried first (``'tpu v5 lite'`` before ``'tpu v5'``)."""
  kind = device_kind.lower()
  pairs = sorted(((k, chip) for chip in CHIPS.values() for k in chip.kinds),
                 key=lambda pair: -len(pair[0]))
  return next((chip for k, chip in pairs if k in kind), None)


def peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of one device of this kind (``None``: unknown, e.g. a CPU)."""
  chip = chip_of(device_kind)
  return chip.peak_flops if chip else None


def gpu_target_config(chip: Chip) -> str:
  """The ``GpuTargetConfigProto`` text the CUDA plugin compiles for (``chip.gpu`` figures)."""
  g = chip.gpu
  major, minor = g["compute_capability"]
  fields = dict(threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=49152,
                shared_memory_per_core=g["shared_memory_per_core"], threads_per_core_limit=2048,
                core_count=g["core_count"], fpus_per_core=g["fpus_per_core"],
                block_dim_limit_x=2 ** 31 - 1, block_dim_limit_y=65535, block_dim_limit_z=65535,
                memory_bandwidth=int(g["memory_bandwidth"]), l2_cache_size=g["l2_cache_size"],
                clock_rate_ghz=g["clock_rate_ghz"], device_memory_size=chip.hbm_bytes,
                shared_memory_per_block_optin=g["shared_memory_per_block_optin"],
                registers_per_core_limit=65536, registers_per_block_limit=65536)
  lines = [f"  {k}: {v}" for k, v in fields.items()]
  lines.append(f"  cuda_compute_capability {{ major: {major} minor: {minor} }}")
  return "\n".join(["gpu_device_info {", *lines, "}", 'platform_name: "CUDA"',
                    "dnn_version_info { major: 9 minor: 8 }",
                    f'device_description_str: "{chip.name}"']) + "\n"


# libtpu asked only to describe a topology: no TPU metadata server to query, no lock on the
# (absent) chips, so several compiling processes can run at once, and no start-up warnings.
LIBTPU_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "localhost",
              "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_STDERR_LOG_LEVEL": "3",
              "TPU_MIN_LOG_LEVEL": "3"}


def compile_only_devices(t: Target) -> list:
  """``t``'s devices as compile-only ``jax.Device``s (this machine needs neither the chips nor
  their drivers; ``pip install -e .[aot]`` brings libtpu and the CUDA plugin).

  Raises:
    RuntimeError: the library for ``t``'s platform is not installed (the message says which).
  """
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  for name, value in LIBTPU_ENV.items():  # read when libtpu loads, i.e. on the first call
    os.environ.setdefault(name, value)
  try:
    if t.platform == "tpu":
      desc = topologies.get_topology_desc(topology_name=t.topology, platform="tpu",
                                          **dict(t.topology_options))
    else:
      desc = topologies.get_topology_desc(platform="cuda", topology=t.topology,
                                          target_config=gpu_target_config(t.chip))
  except (RuntimeError, ValueError, NotImplementedError) as e:
    package = "libtpu" if t.platform == "tpu" else "jax-cuda12-plugin"
    raise RuntimeError(f"cannot describe {t.name} on this machine ({package} missing? "
                       f"pip install -e '.[aot]'): {str(e).splitlines()[0]}") from e
  devices = list(desc.devices)
  if len(devices) != t.num_devices:
    raise RuntimeError(f"{t.name}: the topology {t.topology!r} gave {len(devices)} devices, "
                       f"expected {t.num_devices}")
  return devices


def start_backends() -> list:
  """``jax.devices()`` with the plugins' start-up chatter kept off the console
  (:mod:`seamless_jax.console`): command-line tools call it first."""
  import jax  # pylint: disable=import-outside-toplevel
  with console.chatter_filtered(), console.absent_gpu_plugin_quiet():
    return jax.devices()
