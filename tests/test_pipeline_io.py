"""Whole SD folders: diffusers StableDiffusionPipeline folder -> read_pipeline -> write_pipeline -> diffusers."""

import json

import numpy as np
import pytest
import torch

from seamless_jax import convert
from seamless_jax.data.tokenizer import write_byte_level_tokenizer
from seamless_jax.models import presets
import tiny

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


def tiny_diffusers_pipeline(tokenizer_dir):
  torch.manual_seed(0)
  unet = diffusers.UNet2DConditionModel(**presets.TINY_UNET)
  vae = diffusers.AutoencoderKL(**{k: v for k, v in presets.TINY_VAE.items()})
  text_config = transformers.CLIPTextConfig(**{k: v for k, v in presets.TINY_TEXT.items()
                                               if not k.startswith("_")})
  text = transformers.CLIPTextModel(text_config)
  tokenizer = transformers.CLIPTokenizer(f"{tokenizer_dir}/vocab.json",
                                         f"{tokenizer_dir}/merges.txt")
  scheduler = diffusers.DDIMScheduler(**{k: v for k, v in convert.SD15_SCHEDULER.items()
                                         if not k.startswith("_")})
  return diffusers.StableDiffusionPipeline(
      unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
      safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def test_load_and_save_whole_pipeline(tmp_path):
  tokenizer_dir = write_byte_level_tokenizer(str(tmp_path / "tok"))
  tiny_diffusers_pipeline(tokenizer_dir).save_pretrained(tmp_path / "sd", safe_serialization=True)

  pipe = convert.read_pipeline(str(tmp_path / "sd"))
  assert pipe.scheduler_config["prediction_type"] == "epsilon"
  ids = pipe.tokenizer(["a photo of scenery"])
  assert ids.shape == (1, 77) and ids.dtype == np.int32
  hidden = pipe.text_encoder.apply({"params": pipe.text_encoder_params}, ids)
  assert hidden.shape == (1, 77, presets.TINY_TEXT["hidden_size"])

  convert.write_pipeline(pipe, str(tmp_path / "export"), tokenizer_folder=tokenizer_dir,
                        scheduler_overrides={"prediction_type": "v_prediction"})
  reloaded = diffusers.StableDiffusionPipeline.from_pretrained(str(tmp_path / "export"))
  assert reloaded.scheduler.config.prediction_type == "v_prediction"
  assert isinstance(reloaded.scheduler, diffusers.DDIMScheduler)
  np.testing.assert_array_equal(
      reloaded.tokenizer(["a photo of scenery"], padding="max_length", max_length=77).input_ids,
      ids)
  again = convert.read_pipeline(str(tmp_path / "export"))
  tiny.assert_same_params(pipe.unet_params, again.unet_params)
  tiny.assert_same_params(pipe.vae_params, again.vae_params)
  tiny.assert_same_params(pipe.text_encoder_params, again.text_encoder_params)


def test_missing_component_and_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no model_index.json"):
    convert.read_pipeline(str(tmp_path))
  (tmp_path / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "X"]}))
  with pytest.raises(convert.ConversionError, match="'vae'"):
    convert.read_pipeline(str(tmp_path))
  (tmp_path / "model_index.json").write_text(
      json.dumps({"unet": [], "vae": [], "text_encoder": []}))
  with pytest.raises(FileNotFoundError, match="no config.json in model folder .*unet"):
    convert.read_pipeline(str(tmp_path))
