"""CLIP byte-level BPE tokenizer in pure Python (SD-1.5 text encoder input).

Reads the standard Hugging Face ``tokenizer/`` folder (``vocab.json`` + ``merges.txt``,
optionally ``tokenizer_config.json`` / ``special_tokens_map.json``) and reproduces the ids of
``transformers.CLIPTokenizer`` for ``padding="max_length", truncation=True``:

  text -> NFC -> [ftfy.fix_text, when installed and enabled] -> collapse whitespace, strip
       -> lowercase -> CLIP pre-tokeniser (special tokens | 's 't 're 've 'm 'll 'd | letter runs |
          single digits | runs of other non-space characters) -> UTF-8 bytes mapped to printable
          unicode -> BPE with the ``</w>`` end-of-word suffix
       -> ``[bos] + ids[:max_length - 2] + [eos]`` padded with the pad token to ``max_length``.

Without ftfy the cleaning is exactly the one of the installed ``transformers`` (NFC, whitespace,
lowercase). No ``transformers``/``tokenizers``/``regex`` import at run time.

``write_byte_level_tokenizer(dir)`` writes a tiny self-contained CLIP-format folder (256 byte
symbols, their ``</w>`` forms, a few hundred merges learned from a built-in English caption
corpus, and the two special tokens) so tiny and demo models need no model hub.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import unicodedata
from typing import Iterable, Sequence

import numpy as np

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
# transformers keeps at most this many merges of merges.txt (CLIP's 49152 - 256 - 2).
_MAX_MERGES = 49152 - 256 - 2
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_SPECIALS = (BOS_TOKEN, EOS_TOKEN)


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
  """The reversible byte -> printable unicode character table of byte-level BPE.

  Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, ...) map to
  code points 256, 257, ... in byte order.
  """
  printable = (
      list(range(ord("!"), ord("~") + 1))
      + list(range(ord("\u00a1"), ord("\u00ac") + 1))
      + list(range(ord("\u00ae"), ord("\u00ff") + 1))
  )
  table = {b: chr(b) for b in printable}
  extra = 0
  for b in range(256):
    if b not in table:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _category(ch: str) -> str:
  return unicodedata.category(ch)[0]  # 'L' letter, 'N' number, ...


def pre_tokenize(text: str) -> list[str]:
  """Splits cleaned, lower-cased text like CLIP's regex pre-tokeniser; whitespace is dropped."""
  pieces = []
  i, n = 0, len(text)
  while i < n:
    ch = text[i]
    if ch.isspace():
      i += 1
      continue
    special = next((s for s in _SPECIALS if text.startswith(s, i)), None)
    if special is not None:
      pieces.append(special)
      i += len(special)
      continue
    if ch == "'":
      contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
      if contraction is not None:
        pieces.append(contraction)
        i += len(contraction)
        continue
    kind = _category(ch)
    if kind == "N":  # digits are single pieces
      pieces.append(ch)
      i += 1
      continue
    j = i + 1
    if kind == "L":
      while j < n and _category(text[j]) == "L":
        j += 1
    else:  # a run of characters that are neither space, letter nor number
      while j < n and not text[j].isspace() and _category(text[j]) not in ("L", "N"):
        j += 1
    pieces.append(text[i:j])
    i = j
  return pieces


def _try_ftfy():
  try:
    import ftfy  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return ftfy.fix_text


def clean_text(text: str, use_ftfy: bool = True) -> str:
  """NFC, optional ftfy repair, whitespace collapse + strip, lowercase."""
  text = unicodedata.normalize("NFC", text)
  fix_text = _try_ftfy() if use_ftfy else None
  if fix_text is not None:
    text = fix_text(text)
  return " ".join(text.split()).lower()


def _bpe_merge(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
  """Repeatedly merges the adjacent pair of lowest rank (all its occurrences, left to right)."""
  while len(symbols) > 1:
    best_rank, best = None, None
    for pair in zip(symbols, symbols[1:]):
      rank = ranks.get(pair)
      if rank is not None and (best_rank is None or rank < best_rank):
        best_rank, best = rank, pair
    if best is None:
      break
    merged, k = [], 0
    while k < len(symbols):
      if k + 1 < len(symbols) and (symbols[k], symbols[k + 1]) == best:
        merged.append(best[0] + best[1])
        k += 2
      else:
        merged.append(symbols[k])
        k += 1
    symbols = merged
  return symbols


def _read_special(folder: str, name: str) -> str | None:
  """Reads a special token (str or {'content': str}) from the HF config files, if present."""
  for fname in ("special_tokens_map.json", "tokenizer_config.json"):
    path = os.path.join(folder, fname)
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      value = json.load(f).get(name)
    if isinstance(value, dict):
      value = value.get("content")
    if isinstance(value, str):
      return value
  return None


def _read_vocab_and_merges(folder: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """(token -> id, merge pairs in rank order) from ``vocab.json``/``merges.txt`` or ``tokenizer.json``."""
  vocab_path = os.path.join(folder, "vocab.json")
  merges_path = os.path.join(folder, "merges.txt")
  fast_path = os.path.join(folder, "tokenizer.json")
  if os.path.exists(vocab_path) and os.path.exists(merges_path):
    with open(vocab_path, encoding="utf-8") as f:
      vocab = json.load(f)
    with open(merges_path, encoding="utf-8") as f:
      lines = f.read().strip().split("\n")
    if lines and lines[0].startswith("#version"):
      lines = lines[1:]
    return vocab, [tuple(line.split()) for line in lines if line.strip()]
  if os.path.exists(fast_path):
    with open(fast_path, encoding="utf-8") as f:
      model = json.load(f)
    if model.get("model", {}).get("type") != "BPE":
      raise ValueError(f"{fast_path} is not a BPE tokenizer (model.type="
                       f"{model.get('model', {}).get('type')!r})")
    vocab = dict(model["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in model.get("added_tokens", [])})
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m)
              for m in model["model"]["merges"]]
    return vocab, merges
  raise FileNotFoundError(f"no CLIP tokenizer in {folder}: expected vocab.json + merges.txt "
                          f"or tokenizer.json")


class CLIPTokenizer:
  """CLIP BPE tokenizer; ``tokenizer(texts) -> (B, max_length) int32`` ids.

  Attributes: ``encoder`` (token -> id), ``bos_id``, ``eos_id``, ``pad_id``, ``vocab_size``.
  """

  def __init__(
      self,
      vocab: dict[str, int],
      merges: Sequence[tuple[str, str]],
      *,
      pad_token: str = EOS_TOKEN,
      unk_token: str = EOS_TOKEN,
      use_ftfy: bool = True,
  ):
    self.encoder = dict(vocab)
    self.ranks = {tuple(pair): r for r, pair in enumerate(merges)}
    for token in (BOS_TOKEN, EOS_TOKEN, pad_token):
      if token not in self.encoder:
        raise ValueError(f"tokenizer vocab lacks the special token {token!r}")
    self.bos_id = self.encoder[BOS_TOKEN]
    self.eos_id = self.encoder[EOS_TOKEN]
    self.pad_id = self.encoder[pad_token]
    self.unk_id = self.encoder.get(unk_token, self.eos_id)
    self.use_ftfy = use_ftfy
    self._bytes = byte_to_unicode()
    self._cache: dict[str, list[int]] = {}

  @property
  def vocab_size(self) -> int:
    return len(self.encoder)

  @classmethod
  def from_folder(cls, folder: str, *, use_ftfy: bool = True) -> "CLIPTokenizer":
    """Loads an HF ``tokenizer/`` folder: ``vocab.json`` + ``merges.txt`` (the SD-1.5 layout),
    or ``tokenizer.json`` alone (what transformers >= 5 writes)."""
    vocab, merges = _read_vocab_and_merges(folder)
    pad = _read_special(folder, "pad_token") or EOS_TOKEN
    unk = _read_special(folder, "unk_token") or EOS_TOKEN
    return cls(vocab, merges[:_MAX_MERGES], pad_token=pad, unk_token=unk, use_ftfy=use_ftfy)

  def _word_ids(self, piece: str) -> list[int]:
    ids = self._cache.get(piece)
    if ids is None:
      if piece in _SPECIALS:
        ids = [self.encoder[piece]]
      else:
        chars = [self._bytes[b] for b in piece.encode("utf-8")]
        chars[-1] += END_OF_WORD
        ids = [self.encoder.get(t, self.unk_id) for t in _bpe_merge(chars, self.ranks)]
      if len(self._cache) < 100_000:
        self._cache[piece] = ids
    return ids

  def encode(self, text: str) -> list[int]:
    """Token ids of one text, without bos/eos/padding."""
    ids = []
    for piece in pre_tokenize(clean_text(text, self.use_ftfy)):
      ids.extend(self._word_ids(piece))
    return ids

  def __call__(self, texts: str | Iterable[str], max_length: int = 77) -> np.ndarray:
    """Returns int32 ids of shape (B, max_length): bos, tokens (truncated), eos, pad..."""
    if isinstance(texts, str):
      texts = [texts]
    texts = list(texts)
    out = np.full((len(texts), max_length), self.pad_id, dtype=np.int32)
    for row, text in enumerate(texts):
      ids = [self.bos_id] + self.encode(text)[: max_length - 2] + [self.eos_id]
      out[row, : len(ids)] = ids
    return out

  def __getstate__(self):  # keep pickles (to Grain workers) small: drop the cache
    state = dict(self.__dict__)
    state["_cache"] = {}
    return state


# ------------------------------------------------------------------ tiny byte-level tokenizer

# A small hand-written English caption corpus: the merges of the byte-level tokenizer are learned
# from it (frequent words become single tokens; any other text still encodes through bytes).
_CORPUS = """
a photo of a cat sitting on the grass in the garden . a close up photograph of a dog .
an astronaut in a white space suit standing in front of the american flag .
a cup of coffee on a table with a saucer and a spoon . a red rocket on the launch pad .
a landscape with mountains and a lake under a blue sky with white clouds at sunset .
a city street at night with cars and lights . a portrait of a woman with long hair smiling .
a painting of a house near the river in the forest . the sea and the beach with waves and sand .
a bowl of fruit with apples , oranges and bananas on a wooden table in the kitchen .
a bird flying over the water . two people walking on the road in the park during the day .
an old building with windows and a door . a black and white photo of a man wearing a hat .
green trees and flowers in the spring . snow on the mountain in winter . a bright yellow sun .
a small boat on the lake at sunrise . a beautiful view of the ocean from the top of a hill .
the interior of a room with a bed , a chair and a lamp . a plate of food with bread and cheese .
high quality , detailed , sharp focus , scenery , background , texture , pattern , light , shadow .
this is an image of the sky . there is a horse in the field . it is a sunny day . they are happy .
"""

_NUM_MERGES = 480  # 512 byte symbols + <= 480 merged tokens + 2 specials <= 1000 ids


def learn_merges(corpus: str, num_merges: int) -> list[tuple[str, str]]:
  """Greedy BPE training on ``corpus`` (CLIP pre-tokenisation, ``</w>`` suffix); deterministic.

  Each step merges the most frequent adjacent pair (ties broken by the pair's text order).
  """
  byte_map = byte_to_unicode()
  counts = collections.Counter(pre_tokenize(clean_text(corpus, use_ftfy=False)))
  words = {}
  for piece, count in counts.items():
    chars = [byte_map[b] for b in piece.encode("utf-8")]
    chars[-1] += END_OF_WORD
    words[tuple(chars)] = count
  merges = []
  for _ in range(num_merges):
    pairs = collections.Counter()
    for symbols, count in words.items():
      for pair in zip(symbols, symbols[1:]):
        pairs[pair] += count
    if not pairs:
      break
    best = min(pairs, key=lambda p: (-pairs[p], p))
    merges.append(best)
    words = {tuple(_bpe_merge(list(s), {best: 0})): c for s, c in words.items()}
  return merges


def write_byte_level_tokenizer(folder: str, num_merges: int = _NUM_MERGES) -> str:
  """Writes a small CLIP-format tokenizer folder; returns ``folder``.

  Files: ``vocab.json`` (ids: 256 byte symbols, their ``</w>`` forms, merged tokens in merge
  order, then ``<|startoftext|>``, ``<|endoftext|>``), ``merges.txt`` (with the ``#version``
  header), ``special_tokens_map.json``, ``tokenizer_config.json``. Vocab size is at most
  ``512 + num_merges + 2`` (994 by default).
  """
  os.makedirs(folder, exist_ok=True)
  byte_symbols = list(byte_to_unicode().values())
  tokens = byte_symbols + [s + END_OF_WORD for s in byte_symbols]
  merges = learn_merges(_CORPUS, num_merges)
  seen = set(tokens)
  for a, b in merges:
    if a + b not in seen:
      seen.add(a + b)
      tokens.append(a + b)
  tokens += [BOS_TOKEN, EOS_TOKEN]
  vocab = {t: i for i, t in enumerate(tokens)}
  with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n")
    f.writelines(f"{a} {b}\n" for a, b in merges)
  specials = {
      "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN,
      "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN,
  }
  with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
    json.dump(specials, f, indent=2)
  config = dict(specials, model_max_length=77, do_lower_case=True,
                tokenizer_class="CLIPTokenizer")
  with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  return folder
