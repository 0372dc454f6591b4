"""Grain input pipeline: ``make_dataset(data_config, batch_size=...)`` -> ``grain.IterDataset``.

Batches (numpy, per host):
  ``image``       (B, R, R, 3) uint8 pixels (``transforms.image_to_float``: float32 in [-1, 1])
  ``keep``        (B, R, R, 1) uint8, 1 = known pixel
                  (the train step converts both on the device: ``transforms.model_inputs``)
  ``input_ids``   (B, 77) int32
  ``num_skipped`` (B,) int32: bad records dropped right before each example (by the process that
                  read it). Sum it over batches for the number of skipped records; this works
                  with worker processes too. Drop the key before ``jax.device_put``.

Order of operations (all deterministic in ``seed``): source -> host shard
``[shard_index::shard_count]`` -> shuffle (reshuffled each epoch) -> per-example random map
(decode, crop, flip, mask, caption dropout, tokenise; rng derived from seed + position) ->
repeat(num_epochs) -> threaded read-ahead -> skip bad records -> batch (drop remainder) ->
``mp_prefetch`` over ``worker_count`` processes.

Iterator state: ``it = iter(ds)`` is a ``grain.DatasetIterator`` with ``get_state()`` /
``set_state()`` (JSON-serialisable dicts). Save it with the model checkpoint through orbax:

    import grain, orbax.checkpoint as ocp
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state),
        data=grain.checkpoint.CheckpointSave(it)))          # writes process_<i>-of-<n>.json
    mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(it)))       # `it` continues with the next batch

(``checkpoint_args`` / ``restore_args`` below build these items.) The state is only valid for
the same config, seed, shard and batch size.

Bad data: undecodable/truncated/unreadable images, missing captions and images with shorter side
< ``data.min_side`` are skipped, logged (absl, warning with file name and reason, once per file)
and counted in ``num_skipped``. When more than ``data.max_bad_fraction`` of the records a process
has read are bad (checked after ``data.bad_check_min_records`` records and at the end of finite
data), a ``BadDataError`` lists each bad file once (the first 50); from a worker process Grain
re-raises it in the training process.

Worker processes ignore SIGINT: a Ctrl-C in the terminal reaches the whole process group, and
the training process (not the workers) decides how to stop.
"""

from __future__ import annotations

import collections
import os
import signal
from typing import Any

import grain
import numpy as np
from absl import flags
from absl import logging

from seamless_jax.data import masks as masks_lib
from seamless_jax.data import sources as sources_lib
from seamless_jax.data.tokenizer import CLIPTokenizer
from seamless_jax.data.transforms import BadRecord, ExamplePreparer

_LISTED = 50  # distinct bad files kept (name: reason) for the error message


class BadDataError(RuntimeError):
  """Too many bad records; the message lists the latest bad files and reasons."""


class _SkipBadIterator(grain.DatasetIterator):
  """Drops ``BadRecord`` elements, counts them, and attaches ``num_skipped`` to the next good one."""

  def __init__(self, parent, max_bad_fraction: float, min_records: int):
    super().__init__(parent)
    self._max_fraction = max_bad_fraction
    self._min_records = min_records
    self._seen = 0
    self._bad = 0
    self._pending = 0
    self._bad_files = collections.OrderedDict()  # name -> reason, each file once (repeats of
    # a file in later epochs are counted in _bad but neither listed nor logged again)

  def _check(self, at_end: bool) -> None:
    if self._seen == 0 or (self._seen < self._min_records and not at_end):
      return
    if self._bad / self._seen > self._max_fraction:
      listing = "\n  ".join(f"{name}: {reason}" for name, reason in self._bad_files.items())
      more = " (the first ones)" if len(self._bad_files) >= _LISTED else ""
      raise BadDataError(
          f"{self._bad} of {self._seen} records were bad (> data.max_bad_fraction="
          f"{self._max_fraction}). Bad files{more}, each once:\n  {listing}")

  def __next__(self) -> dict[str, Any]:
    while True:
      try:
        element = next(self._parent)
      except StopIteration:
        self._check(at_end=True)
        raise
      self._seen += 1
      if isinstance(element, BadRecord):
        self._bad += 1
        self._pending += 1
        if element.name not in self._bad_files:
          if len(self._bad_files) < _LISTED:
            self._bad_files[element.name] = element.reason
          logging.warning("data: skipped %s (%s); %d bad of %d read by pid %d",
                          element.name, element.reason, self._bad, self._seen, os.getpid())
        self._check(at_end=False)
        continue
      element = dict(element, num_skipped=np.int32(self._pending))
      self._pending = 0
      return element

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "seen": self._seen, "bad": self._bad,
            "pending": self._pending,
            "recent": [f"{name}: {reason}" for name, reason in self._bad_files.items()]}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._seen, self._bad, self._pending = state["seen"], state["bad"], state["pending"]
    self._bad_files = collections.OrderedDict()
    for entry in state["recent"]:  # "name: reason" (earlier versions kept repeats)
      name, _, reason = entry.partition(": ")
      self._bad_files.setdefault(name, reason)


class _SkipBadIterDataset(grain.IterDataset):

  def __init__(self, parent, max_bad_fraction: float, min_records: int):
    super().__init__(parent)
    self._max_fraction = max_bad_fraction
    self._min_records = min_records

  def __iter__(self):
    return _SkipBadIterator(self._parent.__iter__(), self._max_fraction, self._min_records)


def _ignore_sigint(worker_index: int, worker_count: int) -> None:  # pylint: disable=unused-argument
  """Grain worker start-up: Ctrl-C is the training process's to handle (it saves first)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def validate_config(data_config) -> None:
  """Raises ValueError naming the field for values ``make_dataset`` cannot use."""
  c = data_config
  if c.source not in ("folder", "arrayrecord", "tfds"):
    raise ValueError(f"data.source must be 'folder', 'arrayrecord' or 'tfds', got {c.source!r}")
  if c.source in ("folder", "arrayrecord") and not c.path:
    raise ValueError(f"data.path must be set for data.source={c.source!r}")
  if not c.tokenizer_dir or not os.path.isdir(c.tokenizer_dir):
    raise ValueError(f"data.tokenizer_dir {c.tokenizer_dir!r} is not a tokenizer folder "
                     "(vocab.json + merges.txt)")
  if int(c.resolution) < 8:
    raise ValueError(f"data.resolution must be >= 8, got {c.resolution}")
  if not 0.0 <= float(c.caption_dropout) <= 1.0:
    raise ValueError(f"data.caption_dropout must be in [0, 1], got {c.caption_dropout}")
  if not 0.0 <= float(c.max_bad_fraction) <= 1.0:
    raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {c.max_bad_fraction}")
  if int(c.worker_count) < 0:
    raise ValueError(f"data.worker_count must be >= 0, got {c.worker_count}")
  if int(c.max_length) < 2:
    raise ValueError(f"data.max_length must be >= 2, got {c.max_length}")
  masks_lib.MaskMixture.from_config(c.masks).validate()


def make_dataset(
    data_config,
    *,
    batch_size: int,
    split: str = "train",
    seed: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
) -> grain.IterDataset:
  """The training input pipeline for one host.

  Args:
    data_config: ``get_data_config()`` (``config.data``).
    batch_size: per-host batch size (global batch // process count); the last partial batch of
      finite data is dropped.
    split: 'train' or another split of the source.
    seed: shuffling / augmentation / mask seed (same seed -> same batches).
    shard_index, shard_count: this host's disjoint slice of the data (``jax.process_index()``,
      ``jax.process_count()``).
    num_epochs: None repeats forever.

  Returns:
    ``grain.IterDataset``; ``iter()`` gives a ``grain.DatasetIterator`` (``get_state`` /
    ``set_state``) yielding the batches described in the module docstring.
  """
  validate_config(data_config)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
  source = sources_lib.make_source(data_config, split)
  tokenizer = CLIPTokenizer.from_folder(data_config.tokenizer_dir)
  ds = grain.MapDataset.source(source)[shard_index::shard_count]
  if len(ds) == 0:
    raise ValueError(f"shard {shard_index} of {shard_count} is empty ({len(source)} records)")
  if data_config.shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.random_map(ExamplePreparer(data_config, tokenizer), seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=int(data_config.read_threads),
      prefetch_buffer_size=int(data_config.prefetch_buffer_size)))
  ds = _SkipBadIterDataset(ds, float(data_config.max_bad_fraction),
                           int(data_config.bad_check_min_records))
  ds = ds.batch(batch_size, drop_remainder=True)
  if int(data_config.worker_count) > 0:
    if not flags.FLAGS.is_parsed():  # Grain reads absl flags; outside absl.app use defaults
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=int(data_config.worker_count),
                                     per_worker_buffer_size=int(data_config.worker_buffer_size)),
        worker_init_fn=_ignore_sigint)
  return ds


def checkpoint_args(iterator):
  """orbax save item for the iterator (``grain.checkpoint.CheckpointSave``)."""
  return grain.checkpoint.CheckpointSave(iterator)


def restore_args(iterator):
  """orbax restore item for the iterator (``grain.checkpoint.CheckpointRestore``)."""
  return grain.checkpoint.CheckpointRestore(iterator)
