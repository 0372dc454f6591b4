"""BrushBench runner on a 4-image benchmark built here in BrushBench's layout."""

import csv
import json
import os

import numpy as np
import pytest
import skimage.data
import skimage.transform
from PIL import Image

from seamless_jax import inpaint
from seamless_jax import metrics
from seamless_jax.data import masks as masks_lib
from seamless_jax.eval import brushbench

SIZE = 64


def _rle(mask):
  """bool (H, W) -> BrushBench RLE (1-based (start, length) pairs, row-major), pixel by pixel."""
  runs = []
  for flat, value in enumerate(np.asarray(mask, bool).ravel()):
    if value and runs and runs[-2] + runs[-1] == flat + 1:
      runs[-1] += 1
    elif value:
      runs += [flat + 1, 1]
  return runs


def test_rle_helper_is_brushbench_format():
  assert _rle(np.asarray([[0, 1, 1, 1], [0, 0, 1, 0]])) == [2, 3, 7, 1]
  random_mask = np.random.default_rng(0).random((7, 5)) > 0.5
  np.testing.assert_array_equal(masks_lib.rle_decode(_rle(random_mask), (7, 5)), random_mask)


def _photos():
  sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
             skimage.data.rocket()]
  return [(skimage.transform.resize(s[:300, :300], (SIZE, SIZE)) * 255).round().astype(np.uint8)
          for s in sources]


@pytest.fixture()
def bench(tmp_path):
  """BENCH/images/*.jpg + mapping_file.json with RLE masks (1 = generate), like BrushBench."""
  root = tmp_path / "BrushBench"
  (root / "images").mkdir(parents=True)
  mapping = {}
  for i, photo in enumerate(_photos()):
    name = f"images/{i:03d}_photo.png"
    Image.fromarray(photo).save(root / name)
    seg = np.zeros((SIZE, SIZE), bool)  # an L-shaped "segmentation": its hull is a triangle+
    seg[16 + i:40, 20:26] = True
    seg[34:40, 20:44 - i] = True
    frame = np.ones((SIZE, SIZE), bool)
    frame[12:52, 12 + i:52] = False
    mapping[f"key{i}"] = {"image": name, "caption": f"a photo number {i}",
                          "inpainting_mask": _rle(seg),
                          "outpainting_mask": _rle(frame)}
  (root / "mapping_file.json").write_text(json.dumps(mapping))
  return str(root)


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _method_outputs(bench, out_dir, masks_dir, tasks=brushbench.TASKS):
  """A fake method: hard-pastes another photo into the generated region, +3 on kept pixels."""
  entries = brushbench.load_benchmark(bench)
  photos = _photos()
  for i, entry in enumerate(entries):
    source = brushbench.load_rgb(entry.image_path)
    for task in tasks:
      generate = brushbench.load_mask(masks_dir, task, entry)
      output = np.where(generate[..., None], photos[(i + 1) % 4], np.minimum(source, 252) + 3)
      os.makedirs(os.path.join(out_dir, task), exist_ok=True)
      Image.fromarray(output.astype(np.uint8)).save(os.path.join(out_dir, task, entry.stem + ".png"))
  return entries


def test_score_a_folder_writes_the_table(bench, tmp_path):
  out = str(tmp_path / "eval")
  entries = brushbench.load_benchmark(bench)
  brushbench.prepare_masks(entries, brushbench.TASKS, out, dilation_px=3)
  other = str(tmp_path / "other_method")
  _method_outputs(bench, other, out)
  os.remove(os.path.join(other, "outpaint", entries[3].stem + ".png"))  # a missing output
  text = brushbench.main(["--bench", bench, "--out", out, "--images", other, "--name", "Other",
                          "--hull-dilation", "3"])
  assert "| Other | inpaint | 4 |" in text and "| Other | outpaint | 3 |" in text
  assert "paper: Ours" in text
  summary = {r["task"]: r for r in _read_csv(os.path.join(out, "results.csv"))}
  assert summary["inpaint"]["fid"] == "" or summary["inpaint"]["fid"] == "nan"
  per_image = _read_csv(os.path.join(out, "per_image.csv"))
  assert len(per_image) == 7
  # every CD is the metrics module's CD of that output on the saved mask's border
  for row in per_image:
    entry = next(e for e in entries if e.stem == row["image"])
    output = brushbench.load_rgb(os.path.join(other, row["task"], entry.stem + ".png"))
    keep = ~brushbench.load_mask(out, row["task"], entry)
    assert float(row["cd"]) == pytest.approx(metrics.color_distance(output, keep))
    assert float(row["excess_cd"]) > 0  # a hard paste is worse than the real image
    assert float(row["psnr_kept"]) == pytest.approx(metrics.masked_psnr(
        output, brushbench.load_rgb(entry.image_path), keep))
  mean_cd = np.mean([float(r["cd"]) for r in per_image if r["task"] == "inpaint"])
  assert float(summary["inpaint"]["cd"]) == pytest.approx(mean_cd)
  # the inpaint masks on disk are the dilated convex hulls of the benchmark's RLE masks
  seg = masks_lib.rle_decode(json.load(open(os.path.join(bench, "mapping_file.json")))
                         ["key0"]["inpainting_mask"], (SIZE, SIZE))
  np.testing.assert_array_equal(brushbench.load_mask(out, "inpaint", entries[0]),
                                masks_lib.benchmark_hole(seg, 3))
  sheet = np.asarray(Image.open(os.path.join(out, "contact_sheet.png")))
  assert sheet.shape == (4 * 128, 5 * 128, 3)


class FakeInpainter:
  """Stands in for seamless_jax.inpaint.Inpainter: records calls, returns the masked source."""

  def __init__(self, refuse_image=None):
    self.calls = []
    self.refuse_image = refuse_image  # a source image the pipe refuses, like an InputError

  def batch(self, images, masks, prompts, negative_prompts="", *, seed, **kwargs):
    self.calls.append(dict(n=len(images), masks=masks, prompts=prompts, seed=seed, **kwargs))
    for image, mask in zip(images, masks):
      assert image.shape == (SIZE, SIZE, 3) and mask.dtype == np.uint8
      assert set(np.unique(mask)) <= {0, 255}
      if self.refuse_image is not None and np.array_equal(image, self.refuse_image):
        raise inpaint.InputError("mask 1: the hole vanishes at latent size")
    return [np.where(m[..., None] > 127, 0, im).astype(np.uint8) for im, m in zip(images, masks)]


def test_generation_is_resumable(bench, tmp_path, monkeypatch):
  fake, loads = FakeInpainter(), []
  monkeypatch.setattr(brushbench, "_load_inpainter", lambda args: loads.append(1) or fake)
  out = str(tmp_path / "ours")
  argv = ["--bench", bench, "--out", out, "--model", "unused", "--batch-size", "3",
          "--tasks", "inpaint", "--seed", "5"]
  brushbench.main(argv)
  assert [c["n"] for c in fake.calls] == [3, 3]  # the short last batch is filled up
  assert [c["seed"] for c in fake.calls] == [[5, 6, 7], [8, 8, 8]]  # seed + index in the bench
  assert fake.calls[0]["prompts"] == ["scenery"] * 3
  assert fake.calls[0]["num_inference_steps"] == 50 and fake.calls[0]["guidance_scale"] == 3.0
  entries = brushbench.load_benchmark(bench)
  np.testing.assert_array_equal(fake.calls[0]["masks"][1] > 127,
                                brushbench.load_mask(out, "inpaint", entries[1]))
  # the output is what the pipe returned: generated region black, kept region exact
  out0 = brushbench.load_rgb(os.path.join(out, "inpaint", entries[0].stem + ".png"))
  generate = brushbench.load_mask(out, "inpaint", entries[0])
  assert (out0[generate] == 0).all()
  np.testing.assert_array_equal(out0[~generate],
                                brushbench.load_rgb(entries[0].image_path)[~generate])
  fake.calls.clear()
  brushbench.main(argv)
  assert fake.calls == [] and len(loads) == 1  # everything exists: the model is not even loaded
  os.remove(os.path.join(out, "inpaint", entries[2].stem + ".png"))
  brushbench.main(argv + ["--use-captions"])
  assert [c["n"] for c in fake.calls] == [3] and fake.calls[0]["seed"] == [7, 7, 7]
  assert fake.calls[0]["prompts"] == ["a photo number 2"] * 3


def test_refused_images_are_skipped_and_the_rest_generated(bench, tmp_path, monkeypatch):
  entries = brushbench.load_benchmark(bench)
  fake = FakeInpainter(refuse_image=brushbench.load_rgb(entries[1].image_path))
  monkeypatch.setattr(brushbench, "_load_inpainter", lambda args: fake)
  out = str(tmp_path / "ours")
  text = brushbench.main(["--bench", bench, "--out", out, "--model", "unused", "--batch-size",
                          "3", "--tasks", "outpaint"])
  # the refused batch of 3 is retried image by image, then the last batch (filled up to 3)
  assert [c["n"] for c in fake.calls] == [3, 1, 1, 1, 3]
  made = sorted(os.listdir(os.path.join(out, "outpaint")))
  assert made == sorted(e.stem + ".png" for e in entries if e is not entries[1])
  assert "| outpaint | 3 |" in text


def test_cli_errors(bench, tmp_path):
  with pytest.raises(SystemExit):
    brushbench.main(["--bench", bench, "--out", str(tmp_path), "--tasks", "inpaint,deblur"])
  with pytest.raises(SystemExit):
    brushbench.main(["--bench", bench, "--out", str(tmp_path), "--clip", "x"])
  with pytest.raises(FileNotFoundError, match="mapping_file.json"):
    brushbench.main(["--bench", str(tmp_path), "--out", str(tmp_path / "o")])


@pytest.mark.slow
def test_fid_and_aesthetic_columns_with_random_weights(bench, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("pytorch_fid")
  from test_fid_aesthetic import _random_inception_file
  inception = str(tmp_path / "inception.pth")
  _random_inception_file(inception)
  clip = str(tmp_path / "clip")
  config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=37,
                                         num_hidden_layers=1, num_attention_heads=4,
                                         image_size=32, patch_size=8, projection_dim=8)
  transformers.CLIPVisionModelWithProjection(config).save_pretrained(clip)
  head = str(tmp_path / "head.pth")
  torch.save(torch.nn.Linear(8, 1).state_dict(), head)
  out = str(tmp_path / "eval")
  entries = brushbench.load_benchmark(bench)
  brushbench.prepare_masks(entries, ("inpaint",), out, dilation_px=10)
  other = str(tmp_path / "other")
  _method_outputs(bench, other, out, tasks=("inpaint",))
  brushbench.main(["--bench", bench, "--out", out, "--images", other, "--tasks", "inpaint",
                   "--inception", inception, "--clip", clip, "--aesthetic-head", head])
  row = _read_csv(os.path.join(out, "results.csv"))[0]
  assert float(row["fid"]) > 0 and np.isfinite(float(row["as"]))
  per_image_as = [float(r["as"]) for r in _read_csv(os.path.join(out, "per_image.csv"))]
  assert float(row["as"]) == pytest.approx(np.mean(per_image_as))


@pytest.mark.slow
def test_generate_with_the_tiny_full_system(bench, tiny_workdirs, tmp_path, capsys):
  """--model two_step workdir + --vae vae_finetune workdir (the paper's system), 2 DDIM steps."""
  out = str(tmp_path / "ours")
  argv = ["--bench", bench, "--out", out, "--model", tiny_workdirs["two_step"],
          "--vae", tiny_workdirs["vae_finetune"], "--steps", "2", "--limit", "2",
          "--paste-back", "--name", "tiny"]
  text = brushbench.main(argv)
  assert "| tiny | inpaint | 2 |" in text and "| tiny | outpaint | 2 |" in text
  for entry in brushbench.load_benchmark(bench, limit=2):
    source = brushbench.load_rgb(entry.image_path)
    for task in brushbench.TASKS:
      output = brushbench.load_rgb(os.path.join(out, task, entry.stem + ".png"))
      keep = ~brushbench.load_mask(out, task, entry)
      assert output.shape == source.shape
      np.testing.assert_array_equal(output[keep], source[keep])  # --paste-back
  capsys.readouterr()
  brushbench.main(argv)  # resumed: everything exists
  assert capsys.readouterr().out.count("nothing to generate") == 2
