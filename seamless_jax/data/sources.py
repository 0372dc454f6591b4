"""Random-access image-caption sources (Grain ``RandomAccessDataSource`` protocol).

Every source has ``__len__`` and ``__getitem__(i) -> record`` where a record is a dict:
  ``image``: encoded JPEG/PNG ``bytes`` (folder, ArrayRecord) or a decoded (H, W, 3) uint8 array
            (TFDS);
  ``text``: caption ``str`` or ``None`` when missing (the pipeline skips and counts those);
  ``name``: file name / record id used in error messages;
  ``aesthetic_score``: float, NaN when unknown;
  ``saliency``: encoded greyscale image bytes, an (H, W) array, or ``None``.
Nothing is decoded here: decoding happens in the pipeline workers, so a bad file costs one
skipped example, not a crash of the source. Records are deterministic functions of the index.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
from typing import Any

import numpy as np
from grain import sources as grain_sources

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _read_bytes(path: str) -> bytes | None:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError:
    return None


# ------------------------------------------------------------------------------ image folder

class ImageFolderSource:
  """An HF ``imagefolder``-style directory of images with captions.

  Captions come from ``metadata.jsonl`` (one JSON object per line: ``file_name``, ``text``,
  optional ``aesthetic_score``, optional ``saliency`` = path of a greyscale saliency map, both
  paths relative to the folder) if present, else from ``<image stem>.txt`` beside each image
  (a missing .txt gives ``text=None``). ``split``: uses ``root/<split>/`` when that folder
  exists; otherwise ``root`` itself, but only for ``split='train'``.
  """

  def __init__(self, root: str, split: str = "train"):
    if not root or not os.path.isdir(root):
      raise ValueError(f"data.path: image folder {root!r} does not exist")
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
      if split != "train":
        raise ValueError(f"data.path: folder {root!r} has no {split!r} subfolder")
      folder = root
    self.folder = folder
    metadata = os.path.join(folder, "metadata.jsonl")
    if os.path.exists(metadata):
      self._entries = self._read_metadata(metadata)
    else:
      self._entries = self._scan_images(folder)
    if not self._entries:
      raise ValueError(f"data.path: no images found in {folder!r}")

  @staticmethod
  def _read_metadata(path: str) -> list[dict[str, Any]]:
    entries = []
    with open(path, encoding="utf-8") as f:
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        row = json.loads(line)
        if "file_name" not in row:
          raise ValueError(f"{path}:{line_no}: metadata row without 'file_name'")
        entries.append({
            "file_name": row["file_name"],
            "text": row.get("text"),
            "aesthetic_score": float(row.get("aesthetic_score", math.nan)),
            "saliency": row.get("saliency"),
        })
    return entries

  @staticmethod
  def _scan_images(folder: str) -> list[dict[str, Any]]:
    names = sorted(
        os.path.relpath(os.path.join(d, n), folder)
        for d, _, files in os.walk(folder) for n in files
        if n.lower().endswith(IMAGE_EXTENSIONS))
    return [{"file_name": n, "text": "", "aesthetic_score": math.nan, "saliency": None,
             "caption_file": True} for n in names]

  def __len__(self) -> int:
    return len(self._entries)

  def __getitem__(self, index: int) -> dict[str, Any]:
    entry = self._entries[index]
    path = os.path.join(self.folder, entry["file_name"])
    text = entry["text"]
    if entry.get("caption_file"):
      raw = _read_bytes(os.path.splitext(path)[0] + ".txt")
      text = raw.decode("utf-8", "replace").strip() if raw is not None else None
    saliency = None
    if entry["saliency"]:
      saliency = _read_bytes(os.path.join(self.folder, entry["saliency"]))
    return {"image": _read_bytes(path), "text": text, "name": path,
            "aesthetic_score": entry["aesthetic_score"], "saliency": saliency}

  def __repr__(self) -> str:
    return f"ImageFolderSource({self.folder!r}, n={len(self)})"


# ------------------------------------------------------------------------------ ArrayRecord

_MAGIC = b"SJR1"


def encode_record(image: bytes, text: str, *, name: str = "", width: int = 0, height: int = 0,
                  aesthetic_score: float = math.nan, saliency: bytes | None = None) -> bytes:
  """Serialises one example for ArrayRecord: ``SJR1`` + u32 header length + JSON header + blobs.

  The JSON header holds caption, name, size, score and blob lengths; blobs are the encoded image
  and optional saliency map. No pickle: files from others are safe to read.
  """
  saliency = saliency or b""
  header = json.dumps({
      "text": text, "name": name, "width": int(width), "height": int(height),
      "aesthetic_score": None if math.isnan(aesthetic_score) else float(aesthetic_score),
      "image_len": len(image), "saliency_len": len(saliency),
  }).encode("utf-8")
  return _MAGIC + struct.pack("<I", len(header)) + header + image + saliency


def decode_record(data: bytes) -> dict[str, Any]:
  """Inverse of ``encode_record`` -> a source record dict (plus ``width``, ``height``)."""
  if data[:4] != _MAGIC:
    raise ValueError("not a seamless_jax ArrayRecord example (bad magic)")
  (header_len,) = struct.unpack("<I", data[4:8])
  header = json.loads(data[8:8 + header_len].decode("utf-8"))
  start = 8 + header_len
  image = data[start:start + header["image_len"]]
  start += header["image_len"]
  saliency = data[start:start + header["saliency_len"]] or None
  score = header["aesthetic_score"]
  return {"image": image, "text": header["text"], "name": header["name"],
          "aesthetic_score": math.nan if score is None else score, "saliency": saliency,
          "width": header["width"], "height": header["height"]}


def find_shards(path: str, split: str = "train") -> list[str]:
  """Shard files for ``path``: a file, a glob, or a directory (``<split>*.array_record``)."""
  if os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, f"{split}*.array_record")))
  else:
    files = sorted(glob.glob(path))
  if not files:
    raise ValueError(f"data.path: no ArrayRecord shards for split {split!r} at {path!r}")
  return files


class ArrayRecordSource:
  """Examples written by ``python -m seamless_jax.data.prepare`` (the fast path for big runs)."""

  def __init__(self, path: str, split: str = "train"):
    self.paths = find_shards(path, split)
    self._source = grain_sources.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return decode_record(self._source[index])

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self.paths)} shards, n={len(self)})"


# ------------------------------------------------------------------------------ TFDS

def _feature(example: Any, key: str) -> Any:
  for part in key.split("/"):
    example = example[part]
  return example


def _as_text(value: Any) -> str | None:
  if value is None:
    return None
  if isinstance(value, np.ndarray) and value.dtype == object or isinstance(value, (list, tuple)):
    value = list(np.asarray(value, dtype=object).ravel())
    if not value:
      return None
    value = value[0]  # several captions per image: the first
  elif isinstance(value, np.ndarray):
    value = value.item() if value.size == 1 else (value.ravel()[0] if value.size else None)
  if isinstance(value, bytes):
    value = value.decode("utf-8", "replace")
  return None if value is None else str(value)


class TfdsSource:
  """Any TFDS dataset through its random-access ``tfds.data_source`` (array_record format).

  ``image_feature``/``text_feature`` name the features (``a/b`` reaches nested ones; a sequence
  of captions yields its first). ``tensorflow_datasets`` is imported lazily and is not a
  dependency of this project; pass ``data_source=`` (anything with ``__len__``/``__getitem__``
  returning feature dicts) to skip TFDS entirely, e.g. in tests.
  """

  def __init__(self, name: str, split: str = "train", *, image_feature: str = "image",
               text_feature: str = "caption", data_dir: str | None = None,
               data_source: Any = None):
    if data_source is None:
      if not name:
        raise ValueError("data.tfds_name must name a TFDS dataset for data.source='tfds'")
      try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError(
            "data.source='tfds' needs tensorflow_datasets (pip install tensorflow-datasets); it "
            "is not a dependency of seamless_jax. Or convert the data once with "
            "`python -m seamless_jax.data.prepare` and use data.source='arrayrecord'.") from e
      data_source = tfds.data_source(name, split=split, data_dir=data_dir or None,
                                     download=False)
    self.name = name
    self._source = data_source
    self.image_feature = image_feature
    self.text_feature = text_feature

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._source[index]
    image = _feature(example, self.image_feature)
    if not isinstance(image, (bytes, np.ndarray)):
      image = np.asarray(image)
    try:
      text = _as_text(_feature(example, self.text_feature))
    except (KeyError, IndexError, TypeError):
      text = None
    return {"image": image, "text": text, "name": f"{self.name}[{index}]",
            "aesthetic_score": math.nan, "saliency": None}


def make_source(data_config, split: str = "train"):
  """Builds the source named by ``data_config.source`` ('folder' | 'arrayrecord' | 'tfds')."""
  kind = data_config.source
  if kind == "folder":
    return ImageFolderSource(data_config.path, split)
  if kind == "arrayrecord":
    if not data_config.path:
      raise ValueError("data.path must point at ArrayRecord shards for data.source='arrayrecord'")
    return ArrayRecordSource(data_config.path, split)
  if kind == "tfds":
    return TfdsSource(data_config.tfds_name, split, image_feature=data_config.image_feature,
                      text_feature=data_config.text_feature, data_dir=data_config.tfds_data_dir)
  raise ValueError(f"data.source must be 'folder', 'arrayrecord' or 'tfds', got {kind!r}")
