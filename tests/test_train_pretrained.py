"""The ``:sd15`` path: training starts from a diffusers folder (``config.pretrained``).

A tiny SD pipeline folder is written with `convert.write_pipeline` (the same layout diffusers
writes), the two-step trainer loads it through `convert.load_*` and runs two steps; the UNet
it starts from must be the saved one and the frozen VAE/text params must be the saved ones.
"""

import jax
import numpy as np
import pytest

import tiny
from configs import two_step
from seamless_jax import convert
from seamless_jax.data import pipeline
from seamless_jax.models import AutoencoderKL, CLIPTextModel, UNet2DConditionModel, presets
from seamless_jax.runtime import sharding as shd
from seamless_jax.train import config_check
from seamless_jax.train import trainer as trainer_lib


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("sd")
  data_dir = tiny.write_tiny_data(str(root / "data"))
  unet = UNet2DConditionModel.from_config(presets.TINY_UNET)
  vae = AutoencoderKL.from_config(presets.TINY_VAE)
  text = CLIPTextModel.from_config(presets.TINY_TEXT)
  pipe = convert.Pipeline(unet, tiny.random_params(unet, 1), vae, tiny.random_params(vae, 2),
                          text, tiny.random_params(text, 3), None, {})
  convert.write_pipeline(pipe, str(root / "sd15"), tokenizer_folder=f"{data_dir}/tokenizer")
  return str(root / "sd15"), data_dir, pipe


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_two_step_trains_from_a_diffusers_folder(pretrained_dir):
  folder, data_dir, pipe = pretrained_dir
  config = two_step.get_config("sd15")
  config.pretrained = folder
  config.dtype = "float32"
  config.batch_size = 2
  config.data.path = data_dir
  config.data.resolution = 32
  config.data.min_side = 32
  config.data.worker_count = 0
  config.data.tokenizer_dir = ""  # taken from pretrained/tokenizer

  trainer = trainer_lib.setup(config)
  start = _flat(trainer.state.params)
  saved = _flat(pipe.unet_params)
  assert start.keys() == saved.keys()
  for key in saved:
    np.testing.assert_array_equal(start[key], saved[key], err_msg=key)
  for frozen, saved_tree in ((trainer.frozen["vae"], pipe.vae_params),
                             (trainer.frozen["text"], pipe.text_encoder_params)):
    got, want = _flat(frozen), _flat(saved_tree)
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)

  it = iter(pipeline.make_dataset(config.data, batch_size=config.batch_size, seed=0))
  batch = {k: np.asarray(v) for k, v in next(it).items() if k != "num_skipped"}
  state, metrics = trainer.step_fn(trainer.state, trainer.frozen,
                                   shd.shard_batch(batch, trainer.mesh))
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_second_step"]) > 0
  assert int(state.step) == 1 and int(metrics["skipped"]) == 0
  moved = _flat(state.params)
  assert any(not np.array_equal(moved[k], saved[k]) for k in saved)


def test_missing_pretrained_folder_is_named(tmp_path):
  config = two_step.get_config("sd15")
  config.pretrained = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"config.pretrained=.*nowhere.* is not a folder"):
    config_check.validate(config)
