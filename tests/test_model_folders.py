"""What every model folder reader does with a bad folder, once for the UNet, VAE and text encoder.

Each case writes a valid tiny folder with :func:`convert.write_model` (no PyTorch needed), breaks
it, and checks that :func:`convert.read_model` refuses it with a message naming the file or the
weights. Model-specific checks (unsupported config keys, legacy names, variants) stay in
test_unet.py / test_vae.py / test_text.py.
"""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from seamless_jax import convert
from seamless_jax.models import AutoencoderKL, CLIPTextModel, UNet2DConditionModel, presets
import tiny

# kind -> (module class, tiny config, weights file, a weight to delete, a weight to misshape)
KINDS = {
    "unet": (UNet2DConditionModel, presets.TINY_UNET, "diffusion_pytorch_model",
             "conv_in.weight", "conv_out.bias"),
    "vae": (AutoencoderKL, presets.TINY_VAE, "diffusion_pytorch_model",
            "decoder.conv_in.weight", "encoder.conv_out.bias"),
    "text_encoder": (CLIPTextModel, presets.TINY_TEXT, "model",
                     "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias"),
}


@pytest.fixture(params=sorted(KINDS))
def folder(request, tmp_path):
  """``(kind, folder)``: a valid tiny folder of each model kind, random weights."""
  module_cls, config, _, _, _ = KINDS[request.param]
  module = module_cls.from_config(config)
  convert.write_model(request.param, module, tiny.random_params(module), str(tmp_path))
  return request.param, str(tmp_path)


def _weights_path(kind: str, folder: str) -> str:
  return os.path.join(folder, KINDS[kind][2] + ".safetensors")


def test_the_valid_folder_loads(folder):
  kind, path = folder
  module, params = convert.read_model(kind, path)
  tiny.assert_same_params(tiny.random_params(module), params)


def test_missing_unexpected_and_misshaped_weights_are_listed(folder):
  kind, path = folder
  _, _, _, deleted, misshaped = KINDS[kind]
  state = load_file(_weights_path(kind, path))
  del state[deleted]
  state["extra.weight"] = np.zeros(3, np.float32)
  expected_shape = tuple(state[misshaped].shape)
  state[misshaped] = np.zeros(5, np.float32)
  save_file(state, _weights_path(kind, path))
  with pytest.raises(convert.ConversionError) as info:
    convert.read_model(kind, path)
  message = str(info.value)
  for expected in (path, f"missing (1): {deleted}", "unexpected (1): extra.weight",
                   f"{misshaped}: file (5,), model expects {expected_shape}"):
    assert expected in message, (expected, message)


def test_pickle_only_folder_is_refused(folder):
  kind, path = folder
  os.remove(_weights_path(kind, path))
  with open(os.path.join(path, KINDS[kind][2] + ".bin"), "wb") as f:
    f.write(b"not unpickled")
  with pytest.raises(FileNotFoundError, match="never unpickles.*safetensors"):
    convert.read_model(kind, path)


def test_corrupt_safetensors_names_the_file(folder):
  kind, path = folder
  with open(_weights_path(kind, path), "wb") as f:
    f.write(b"\x00garbage")
  with pytest.raises(convert.ConversionError, match=KINDS[kind][2] + ".safetensors"):
    convert.read_model(kind, path)


def test_missing_config_names_the_folder(folder):
  kind, path = folder
  os.remove(os.path.join(path, "config.json"))
  with pytest.raises((FileNotFoundError, convert.ConversionError), match="config.json"):
    convert.read_model(kind, path)


def test_config_typo_names_the_key_and_file(folder):
  kind, path = folder
  config_path = os.path.join(path, "config.json")
  with open(config_path, encoding="utf-8") as f:
    config = json.load(f)
  config["layers_per_blok"] = 1
  with open(config_path, "w", encoding="utf-8") as f:
    json.dump(config, f)
  with pytest.raises(convert.ConversionError, match="layers_per_blok") as info:
    convert.read_model(kind, path)
  assert config_path in str(info.value)
