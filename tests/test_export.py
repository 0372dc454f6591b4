"""seamless_jax.export: tiny trained workdirs -> diffusers folders that PyTorch runs identically."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

import tiny
from seamless_jax import convert
from seamless_jax import export
from seamless_jax import loading

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY_ATOL = 1e-4  # float32 max abs error allowed, PyTorch (diffusers/transformers) vs Flax
SIZE = 32  # tiny models: 32² images, 16² latents
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack")


def _export(*args, **kwargs):
  lines = []
  export.export(*args, log=lines.append, **kwargs)
  return "\n".join(lines)


@pytest.fixture(scope="module")
def exported(tiny_workdirs, tmp_path_factory):
  """``{'pipeline', 'pipeline_log', 'vae', 'vae_log'}``: the tiny two_step run exported with
  the vae_finetune run's decoder, and the vae_finetune run exported alone."""
  root = tmp_path_factory.mktemp("exports")
  out = {"pipeline": str(root / "sd"), "vae": str(root / "seamless_vae")}
  out["pipeline_log"] = _export(tiny_workdirs["two_step"], out["pipeline"],
                                vae=tiny_workdirs["vae_finetune"])
  out["vae_log"] = _export(tiny_workdirs["vae_finetune"], out["vae"])
  return out


# ---------------------------------------------------------------------------- PyTorch side

def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def _nhwc(t):
  return t.permute(0, 2, 3, 1).numpy()


def _assert_close(name, ours, reference):
  error = np.abs(ours - reference).max()
  assert error <= PARITY_ATOL, f"{name}: max abs error {error:.2e} PyTorch vs Flax"
  assert np.abs(reference).max() > 1e-2, name  # not a comparison of near-zero outputs


def _assert_vae_parity(module, params, folder):
  """Encoder mean/logvar and decoder of diffusers ``AutoencoderKL`` from ``folder`` equal Flax's."""
  model = diffusers.AutoencoderKL.from_pretrained(folder).eval()
  rng = np.random.RandomState(0)
  x = rng.uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  z = rng.randn(2, SIZE // 2, SIZE // 2, 4).astype(np.float32)
  mean, logvar = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode"))(params, x)
  decoded = jax.jit(lambda p, z: module.apply({"params": p}, z, method="decode"))(params, z)
  with torch.no_grad():
    dist = model.encode(_nchw(x)).latent_dist
    reference_decoded = _nhwc(model.decode(_nchw(z)).sample)
  _assert_close("vae mean", np.asarray(mean), _nhwc(dist.mean))
  _assert_close("vae logvar", np.asarray(logvar), _nhwc(dist.logvar))
  _assert_close("vae decode", np.asarray(decoded), reference_decoded)
  return model


def _files(folder):
  return sorted(os.path.relpath(os.path.join(root, name), folder)
                for root, _, names in os.walk(folder) for name in names)


# ---------------------------------------------------------------------------- tests

def test_pipeline_export_is_a_complete_safetensors_diffusers_folder(exported, tiny_workdirs):
  folder = exported["pipeline"]
  assert _files(folder) == [
      "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
      "text_encoder/model.safetensors", "tokenizer/merges.txt",
      "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
      "tokenizer/vocab.json", "unet/config.json",
      "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
      "vae/diffusion_pytorch_model.safetensors"]
  with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
    scheduler = json.load(f)
  assert scheduler["prediction_type"] == "v_prediction"
  assert scheduler["_class_name"] == "DDIMScheduler"
  log = exported["pipeline_log"]
  assert f"{tiny_workdirs['two_step']}: mode two_step, step 2, EMA weights" in log
  assert "done: " in log
  assert not any(name.startswith("sd.") for name in os.listdir(os.path.dirname(folder)))


def test_pytorch_unet_vae_and_text_encoder_compute_what_flax_computes(exported, tiny_workdirs):
  folder = exported["pipeline"]
  flax = loading.load_pipeline(tiny_workdirs["two_step"], vae=tiny_workdirs["vae_finetune"])
  rng = np.random.RandomState(1)
  sample = rng.randn(2, SIZE // 2, SIZE // 2, 4).astype(np.float32)
  timesteps = np.array([21, 961], dtype=np.int64)
  ids = flax.tokenizer(["scenery", "a red house by the sea"])
  context = np.asarray(jax.jit(flax.text_encoder.apply)({"params": flax.text_encoder_params},
                                                        ids))
  ours = np.asarray(jax.jit(flax.unet.apply)({"params": flax.unet_params}, sample, timesteps,
                                             context))
  unet = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")).eval()
  text = transformers.CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval()
  with torch.no_grad():
    reference_context = text(torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()
    reference = _nhwc(unet(_nchw(sample), torch.from_numpy(timesteps),
                           torch.from_numpy(np.array(context))).sample)
  _assert_close("text encoder", context, reference_context)
  _assert_close("unet", ours, reference)
  # vae/ is the base encoder with the Eq. 6 decoder of the vae_finetune run.
  _assert_vae_parity(flax.vae, flax.vae_params, os.path.join(folder, "vae"))


def test_diffusers_pipelines_run_on_the_export(exported):
  pipe = diffusers.StableDiffusionPipeline.from_pretrained(exported["pipeline"])
  assert pipe.scheduler.config.prediction_type == "v_prediction"
  generator = torch.Generator().manual_seed(0)
  images = pipe("scenery", num_inference_steps=2, height=SIZE, width=SIZE, output_type="np",
                generator=generator).images
  assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()
  # A 4-channel UNet in diffusers' inpainting pipeline: latent blending, as BLD does.
  inpaint = diffusers.StableDiffusionInpaintPipeline.from_pretrained(exported["pipeline"])
  image = np.random.RandomState(2).uniform(0, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
  mask = np.zeros((1, SIZE, SIZE, 1), np.float32)
  mask[:, 8:24, 8:24] = 1.0  # white = generate
  result = inpaint("scenery", image=image, mask_image=mask, num_inference_steps=2, height=SIZE,
                   width=SIZE, strength=1.0, output_type="np", generator=generator).images
  assert result.shape == (1, SIZE, SIZE, 3) and np.isfinite(result).all()


def test_vae_only_export_is_an_autoencoderkl_folder_equal_to_flax(exported, tiny_workdirs):
  folder = exported["vae"]
  assert _files(folder) == ["config.json", "diffusion_pytorch_model.safetensors"]
  assert f"{tiny_workdirs['vae_finetune']}: mode vae_finetune, step 2, EMA weights" in (
      exported["vae_log"])
  module, params = loading.load_vae(tiny_workdirs["vae_finetune"])
  vae = _assert_vae_parity(module, params, folder)
  # The drop-in "seamless VAE": swapped into a diffusers pipeline, it renders the result.
  pipe = diffusers.StableDiffusionPipeline.from_pretrained(exported["pipeline"])
  pipe.vae = vae
  images = pipe("scenery", num_inference_steps=2, height=SIZE, width=SIZE, output_type="np",
                generator=torch.Generator().manual_seed(0)).images
  assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()


def test_base_parts_are_copied_safetensors_only(exported, tiny_workdirs, tmp_path):
  base = exported["pipeline"]  # a diffusers folder with text_encoder/, tokenizer/, vae/
  with open(os.path.join(base, "text_encoder", "pytorch_model.bin"), "wb") as f:
    f.write(b"pickle bytes that must not travel")
  try:
    out = str(tmp_path / "from_base")
    log = _export(tiny_workdirs["two_step"], out, step=1, base=base)
  finally:
    os.remove(os.path.join(base, "text_encoder", "pytorch_model.bin"))
  assert f"copying vae/ from {base}" in log and f"copying text_encoder/ from {base}" in log
  for name in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
               "tokenizer/vocab.json"):
    with open(os.path.join(base, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
      assert a.read() == b.read(), name
  assert not any(name.endswith(WEIGHT_SUFFIXES) for name in _files(out))
  _, unet_params = convert.read_unet(os.path.join(out, "unet"))
  tiny.assert_same_params(unet_params, loading.restore_workdir(tiny_workdirs["two_step"],
                                                          step=1).params)


def test_bad_base_and_existing_out_are_clear_errors(tiny_workdirs, tmp_path):
  with pytest.raises(export.ExportError, match="is not a diffusers pipeline folder"):
    export.export(tiny_workdirs["two_step"], str(tmp_path / "a"), base=str(tmp_path))
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "file").write_text("x")
  with pytest.raises(export.ExportError, match="already exists.*--overwrite"):
    export.export(tiny_workdirs["vae_finetune"], str(tmp_path / "taken"))
  with pytest.raises(export.ExportError, match="--vae and --base apply to two_step"):
    export.export(tiny_workdirs["vae_finetune"], str(tmp_path / "b"),
                  vae=tiny_workdirs["vae_finetune"])


def test_crash_leaves_no_half_export(tiny_workdirs, tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(convert, "write_text_encoder", fail)
  with pytest.raises(OSError, match="disk full"):
    export.export(tiny_workdirs["two_step"], str(tmp_path / "out"), log=lambda _: None)
  assert os.listdir(tmp_path) == []


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "seamless_jax.export", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_exports_the_chosen_step_and_raw_weights(tiny_workdirs, tmp_path):
  out = str(tmp_path / "vae_step1")
  proc = _cli("--workdir", tiny_workdirs["vae_finetune"], "--step", "1", "--no-ema",
              "--out", out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 1, raw (non-EMA) weights" in proc.stdout
  _, params = convert.read_vae(out)
  raw = loading.restore_workdir(tiny_workdirs["vae_finetune"], step=1, ema=False)
  tiny.assert_same_params(params, raw.vae_params)


def test_cli_missing_or_damaged_step_is_one_clear_line_and_writes_nothing(tiny_workdirs,
                                                                          tmp_path, capsys):
  out = str(tmp_path / "never")
  assert export.main(["--workdir", tiny_workdirs["two_step"], "--step", "7", "--out", out]) == 1
  assert capsys.readouterr().err.strip().splitlines() == [
      f"export: error: {tiny_workdirs['two_step']} has no checkpoint for step 7; "
      "saved steps: 1, 2"]
  broken = tmp_path / "broken"
  (broken / "checkpoints" / "3" / "state").mkdir(parents=True)
  with open(os.path.join(tiny_workdirs["two_step"], "config.json")) as f:
    (broken / "config.json").write_text(f.read())
  assert export.main(["--workdir", str(broken), "--out", out]) == 1
  [line] = capsys.readouterr().err.strip().splitlines()
  assert line.startswith(f"export: error: checkpoint {broken}") and "damaged or unreadable" in line
  assert sorted(os.listdir(tmp_path)) == ["broken"]


@pytest.mark.slow
def test_checkpoint_saved_on_a_sharded_mesh_exports_on_one_host(eight_device_runs, tmp_path):
  """The tiny two_step run trained on a data=2 x fsdp=4 mesh of 8 CPU devices
  (``tests/eight_devices.py``) exports here, on one device, to its saved EMA UNet params."""
  workdir = os.path.join(eight_device_runs, "runs", "data2_fsdp4")
  saved = dict(np.load(os.path.join(eight_device_runs, "data2_fsdp4_ema.npz")))
  assert saved.pop("__sharded__") > 0  # the checkpoint really holds fsdp-sharded params
  assert jax.device_count() == 1  # this process: one device, no mesh
  out = str(tmp_path / "export")
  _export(workdir, out)
  _, unet_params = convert.read_unet(os.path.join(out, "unet"))
  exported = {"/".join(k): v for k, v in traverse_util.flatten_dict(unet_params).items()}
  assert sorted(exported) == sorted(saved)
  for key, value in saved.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
