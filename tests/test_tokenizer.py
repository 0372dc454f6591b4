"""CLIP tokenizer: id parity with transformers.CLIPTokenizer on a tiny generated folder."""

import json
import os

import numpy as np
import pytest

from seamless_jax.data import tokenizer as tok

SENTENCES = [
    "A photo of a CAT, sitting on   the grass!!",
    "It's 2024: we'll see 3.14 apples... don't you? (yes)",
    "Café naïve résumé — 東京 ½ ² 'quoted' #hashtag @user",
    "  multiple\tspaces\nand newlines  ",
    "",
    "long text that needs truncation " * 20,
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return tok.write_byte_level_tokenizer(str(tmp_path_factory.mktemp("tok")))


def test_parity_with_transformers(folder):
  transformers = pytest.importorskip("transformers")
  ref = transformers.CLIPTokenizer.from_pretrained(folder)
  want = ref(SENTENCES, padding="max_length", max_length=77, truncation=True,
             return_tensors="np")["input_ids"]
  got = tok.CLIPTokenizer.from_folder(folder, use_ftfy=False)(SENTENCES)
  assert got.dtype == np.int32 and got.shape == (len(SENTENCES), 77)
  np.testing.assert_array_equal(got, want)
  # ftfy only changes broken text: on these sentences (no curly quotes) the ids agree too.
  np.testing.assert_array_equal(tok.CLIPTokenizer.from_folder(folder)(SENTENCES), want)


def test_layout_truncation_and_padding(folder):
  t = tok.CLIPTokenizer.from_folder(folder)
  assert t.vocab_size <= 1000
  ids = t(["a cat", "word " * 100], max_length=77)
  assert ids[0, 0] == t.bos_id and ids[1, 0] == t.bos_id
  n = 2 + len(t.encode("a cat"))
  assert ids[0, n - 1] == t.eos_id and (ids[0, n:] == t.pad_id).all()
  assert ids[1, -1] == t.eos_id and t.eos_id not in ids[1, 1:-1]
  assert len(t.encode("the")) == 1  # common words were merged into single tokens


def test_merges_apply_and_bytes_fallback(folder):
  t = tok.CLIPTokenizer.from_folder(folder, use_ftfy=False)
  # "the" is merged; an unseen word falls back to byte symbols, so no id is unknown.
  assert len(t.encode("zqxj")) == 4
  assert tok.pre_tokenize("it's 12ab!?") == ["it", "'s", "1", "2", "ab", "!?"]


def test_pad_token_from_config(folder, tmp_path):
  for name in ("vocab.json", "merges.txt"):
    with open(os.path.join(folder, name), encoding="utf-8") as src:
      (tmp_path / name).write_text(src.read(), encoding="utf-8")
  (tmp_path / "special_tokens_map.json").write_text(
      json.dumps({"pad_token": {"content": "!"}}), encoding="utf-8")
  t = tok.CLIPTokenizer.from_folder(str(tmp_path))
  assert t.pad_id == t.encoder["!"] != t.eos_id
  assert t(["cat"])[0, -1] == t.encoder["!"]


def test_tokenizer_json_folder_gives_the_same_ids(folder, tmp_path):
  """transformers >= 5 saves only tokenizer.json; it must load to the same tokenizer."""
  transformers = pytest.importorskip("transformers")
  transformers.CLIPTokenizer.from_pretrained(folder).save_pretrained(tmp_path)
  assert not (tmp_path / "vocab.json").exists() and (tmp_path / "tokenizer.json").exists()
  got = tok.CLIPTokenizer.from_folder(str(tmp_path), use_ftfy=False)(SENTENCES)
  np.testing.assert_array_equal(got, tok.CLIPTokenizer.from_folder(folder, use_ftfy=False)(SENTENCES))


def test_folder_without_tokenizer_files_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"no CLIP tokenizer in {tmp_path}"):
    tok.CLIPTokenizer.from_folder(str(tmp_path))
