"""Device mesh, parameter sharding rules and batch sharding.

Mesh axes are ``('data', 'fsdp')`` (MaxDiffusion's names). The batch is split over both axes
(every device gets ``global_batch / num_devices`` examples). Parameters and optimizer state are
sharded over ``'fsdp'`` by the rules below and replicated over ``'data'``; with ``fsdp = 1``
everything is replicated (plain data parallelism).

Logical rules. A parameter's path and shape give it logical axes, and ``LOGICAL_AXIS_RULES``
maps logical axes to mesh axes:

* conv kernels (kh, kw, in, out) -> (None, None, 'embed_in', 'embed_out')
* dense kernels (in, out)        -> ('embed_in', 'embed_out')
* everything else (biases, norm scales, embeddings' small tables) -> replicated

``'embed_out'`` maps to ``'fsdp'`` (the output-feature dimension is the largest or equal-largest
in every SD kernel); when it does not divide by the fsdp size ``'embed_in'`` is tried instead,
and a parameter with fewer than ``min_size`` elements stays replicated (sharding tiny tensors
costs more communication than the memory it saves).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
LOGICAL_AXIS_RULES = (("embed_out", "fsdp"), ("embed_in", "fsdp"))


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """``Mesh(('data', 'fsdp'))`` over ``devices`` (default all); ``data=-1`` fills the rest."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must divide the {n} devices")
  if data == -1:
    data = n // fsdp
  if data < 1 or data * fsdp > n:
    raise ValueError(f"mesh.data x mesh.fsdp = {data} x {fsdp} does not fit {n} devices")
  if data * fsdp < n:
    logging.warning("mesh %d x %d uses %d of the %d devices", data, fsdp, data * fsdp, n)
  return Mesh(np.asarray(devices[:data * fsdp]).reshape(data, fsdp), MESH_AXES)


def logical_axes(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str | None, ...]:
  """Logical axis names of one parameter (see module doc)."""
  name = path[-1] if path else ""
  if name == "kernel" and len(shape) == 4:
    return (None, None, "embed_in", "embed_out")
  if name == "kernel" and len(shape) == 2:
    return ("embed_in", "embed_out")
  return (None,) * len(shape)


def param_spec(path: tuple[str, ...], shape: tuple[int, ...], fsdp_size: int,
               min_size: int) -> P:
  """PartitionSpec of one parameter: at most one dimension on 'fsdp' (by the rules)."""
  if fsdp_size <= 1 or math.prod(shape) < min_size:
    return P()
  axes = logical_axes(path, shape)
  for logical, mesh_axis in LOGICAL_AXIS_RULES:
    if logical in axes:
      dim = axes.index(logical)
      if shape[dim] % fsdp_size == 0:
        spec = [None] * len(shape)
        spec[dim] = mesh_axis
        return P(*spec)
  return P()


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def tree_shardings(tree: Any, mesh: Mesh, min_size: int = 2 ** 18) -> Any:
  """NamedShardings for every array leaf of ``tree`` (params, optimizer state, EMA...).

  Optimizer moments have the shapes and paths (ending in the param name) of the params, so the
  same rules shard them identically; scalars (counts, step) are replicated.
  """
  fsdp_size = mesh.shape["fsdp"]

  def one(path, leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    names = tuple(_key_name(k) for k in path)
    return NamedSharding(mesh, param_spec(names, shape, fsdp_size, min_size))

  return jax.tree_util.tree_map_with_path(one, tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global jax arrays sharded over the batch axes.

  Single process: ``device_put``. Multi-process: each host holds its ``B/num_hosts`` rows;
  ``make_array_from_process_local_data`` assembles the global array without a gather.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def put_replicated(x, mesh: Mesh) -> jax.Array:
  """Host array (identical on every process) -> array replicated over the mesh."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  return jax.make_array_from_process_local_data(sharding, np.asarray(x))


def to_host(x) -> np.ndarray:
  """Full value of a (possibly multi-process) array as numpy on every process."""
  if jax.process_count() > 1 and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))
