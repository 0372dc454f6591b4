"""Sources: image folder (.txt / metadata.jsonl), ArrayRecord via prepare, TFDS (faked)."""

import io
import json
import math
import sys
import types

import numpy as np
import pytest
from PIL import Image

from seamless_jax.data import get_data_config, make_dataset, prepare, sources
from seamless_jax.data.tokenizer import write_byte_level_tokenizer


def _jpeg(seed, size=(80, 64)):
  arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="JPEG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def tokdir(tmp_path_factory):
  return write_byte_level_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture
def jsonl_folder(tmp_path):
  rows = []
  for i in range(6):
    (tmp_path / f"img{i}.jpg").write_bytes(_jpeg(i, (80 + 40 * (i % 2), 64)))
    rows.append({"file_name": f"img{i}.jpg", "text": f"photo number {i}",
                 "aesthetic_score": 5.0 + i * 0.5})
  Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp_path / "sal.png")
  rows[0]["saliency"] = "sal.png"
  with open(tmp_path / "metadata.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return tmp_path


def _config(path, tokdir, **kw):
  c = get_data_config()
  c.path, c.tokenizer_dir = str(path), tokdir
  c.resolution, c.min_side, c.worker_count, c.read_threads = 32, 32, 0, 2
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _first_batches(config, n=2, seed=3):
  it = iter(make_dataset(config, batch_size=2, seed=seed))
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_folder_metadata_jsonl(jsonl_folder):
  src = sources.ImageFolderSource(str(jsonl_folder))
  assert len(src) == 6
  rec = src[0]
  assert rec["text"] == "photo number 0" and rec["aesthetic_score"] == 5.0
  assert rec["image"][:2] == b"\xff\xd8" and rec["saliency"] is not None
  assert src[1]["saliency"] is None


def test_folder_with_txt_captions(tmp_path):
  for i in range(3):
    (tmp_path / f"a{i}.png").write_bytes(_jpeg(i))
  (tmp_path / "a0.txt").write_text("  a red car \n")
  (tmp_path / "a1.txt").write_text("a blue sky")
  src = sources.ImageFolderSource(str(tmp_path))
  assert [src[i]["text"] for i in range(3)] == ["a red car", "a blue sky", None]
  assert math.isnan(src[0]["aesthetic_score"])
  with pytest.raises(ValueError, match="validation"):
    sources.ImageFolderSource(str(tmp_path), split="validation")


def test_each_source_is_deterministic(jsonl_folder, tokdir, tmp_path):
  folder_cfg = _config(jsonl_folder, tokdir)
  _assert_same(_first_batches(folder_cfg), _first_batches(folder_cfg))
  stats = prepare.prepare(str(jsonl_folder), str(tmp_path / "ar"), shard_size=4)
  assert stats.written == 6 and len(stats.shards) == 2
  ar_cfg = _config(tmp_path / "ar", tokdir, source="arrayrecord")
  _assert_same(_first_batches(ar_cfg), _first_batches(ar_cfg))
  # Same bytes and captions in both formats -> the very same batches.
  _assert_same(_first_batches(folder_cfg), _first_batches(ar_cfg))


def test_arrayrecord_roundtrip_and_paper_filter(jsonl_folder, tmp_path):
  stats = prepare.prepare(str(jsonl_folder), str(tmp_path / "ar"), min_side=100,
                          min_aesthetic=6.0)
  # every image is 64 px high -> all too small for 100; with 64, aesthetic >= 6 keeps 2..5.
  assert stats.written == 0 and stats.too_small == 6
  stats = prepare.prepare(str(jsonl_folder), str(tmp_path / "ar2"), min_side=64,
                          min_aesthetic=6.0)
  assert (stats.written, stats.low_aesthetic) == (4, 2)
  src = sources.ArrayRecordSource(str(tmp_path / "ar2"))
  folder = sources.ImageFolderSource(str(jsonl_folder))
  assert len(src) == 4
  rec = src[0]
  assert rec["image"] == folder[2]["image"] and rec["text"] == "photo number 2"
  assert (rec["width"], rec["height"], rec["aesthetic_score"]) == (80, 64, 6.0)
  with pytest.raises(ValueError, match="bad magic"):
    sources.decode_record(b"nope" + bytes(10))


class _FakeTfdsSource:
  """The random-access interface of ``tfds.data_source``: len + getitem -> feature dict."""

  def __init__(self, n=6):
    rng = np.random.default_rng(0)
    self._items = [{"image": rng.integers(0, 255, (40, 48, 3), dtype=np.uint8),
                    "captions": {"text": np.array([f"caption {i}".encode(), b"other"],
                                                  dtype=object)}} for i in range(n)]

  def __len__(self):
    return len(self._items)

  def __getitem__(self, i):
    return self._items[i]


def test_tfds_source_with_fake_module(monkeypatch, tokdir):
  calls = []

  def data_source(name, split, data_dir, download):
    calls.append((name, split, data_dir, download))
    return _FakeTfdsSource()

  monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                      types.SimpleNamespace(data_source=data_source))
  cfg = _config("", tokdir, source="tfds", tfds_name="fake_ds", text_feature="captions/text")
  src = sources.make_source(cfg, "train")
  assert calls == [("fake_ds", "train", None, False)]
  rec = src[1]
  assert rec["text"] == "caption 1" and rec["image"].shape == (40, 48, 3)
  a, b = _first_batches(cfg), _first_batches(cfg)
  _assert_same(a, b)
  assert a[0]["image"].shape == (2, 32, 32, 3)


def test_tfds_missing_gives_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  with pytest.raises(ImportError, match="tensorflow-datasets"):
    sources.TfdsSource("coco_captions")
  src = sources.TfdsSource("fake", data_source=_FakeTfdsSource(2), text_feature="nope")
  assert src[0]["text"] is None  # missing feature -> missing caption (skipped downstream)
