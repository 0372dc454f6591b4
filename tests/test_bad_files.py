"""The bad-data error lists each bad file once, however often the epochs repeat it."""

import json

import pytest

from seamless_jax.data import BadDataError, demo, get_data_config, make_dataset


def test_each_bad_file_is_listed_once_across_epochs(tmp_path):
  folder = tmp_path / "data"
  demo.write_demo_dataset(str(folder), resolution=40)
  rows = [json.loads(line) for line in open(folder / "metadata.jsonl", encoding="utf-8")]
  (folder / "garbage.jpg").write_bytes(b"this is not an image")
  rows += [{"file_name": "garbage.jpg", "text": "g"}, {"file_name": "missing.jpg", "text": "m"}]
  with open(folder / "metadata.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  c = get_data_config()
  c.path, c.tokenizer_dir = str(folder), str(folder / "tokenizer")
  c.resolution, c.min_side, c.worker_count, c.read_threads = 32, 32, 0, 2
  c.max_bad_fraction = 0.01
  c.bad_check_min_records = 3 * len(rows) - 1  # first checked in the third epoch
  with pytest.raises(BadDataError) as info:
    list(make_dataset(c, batch_size=4, num_epochs=3))
  message = str(info.value)
  assert message.count("garbage.jpg") == 1 and message.count("missing.jpg") == 1, message
