"""Flax CLIPTextModel vs transformers on a tiny random config, and transformers-folder I/O."""

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from seamless_jax import convert
from seamless_jax.models import CLIPTextModel, presets
import tiny

transformers = pytest.importorskip("transformers")

PARITY_ATOL = 1e-4  # float32 max abs error allowed vs transformers (measured 1.7e-6)
BF16_REL_TOL = 5e-2  # relative L2 error of bf16 compute vs float32 (measured 7.9e-3)
TORCH_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
              "projection_dim", "bos_token_id", "eos_token_id", "pad_token_id")


def random_torch_clip(config=presets.TINY_TEXT, seed=0):
  torch.manual_seed(seed)
  torch_config = transformers.CLIPTextConfig(**{k: config[k] for k in TORCH_KEYS})
  model = transformers.CLIPTextModel(torch_config).eval()
  with torch.no_grad():
    for p in model.parameters():  # non-trivial norms and biases
      p.add_(0.05 * torch.randn_like(p))
  return model


def token_ids(config=presets.TINY_TEXT, batch=2, seed=0):
  """(B,77) int32: bos, random tokens, eos, then pad like SD's tokenizer output."""
  rng = np.random.RandomState(seed)
  ids = np.full((batch, config["max_position_embeddings"]), config["pad_token_id"], np.int32)
  ids[:, 0] = config["bos_token_id"]
  for b, length in enumerate(rng.randint(3, 40, size=batch)):
    ids[b, 1:length] = rng.randint(2, config["vocab_size"] - 2, size=length - 1)
    ids[b, length] = config["eos_token_id"]
  return ids


@functools.lru_cache(maxsize=None)
def jitted(module):
  return jax.jit(module.apply)


def flax_forward(module, params, ids):
  return np.asarray(jitted(module)({"params": params}, ids))


def torch_forward(model, ids):
  with torch.no_grad():
    return model(torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()


def assert_parity(module, params, model, config=presets.TINY_TEXT):
  ids = token_ids(config)
  ours, expected = flax_forward(module, params, ids), torch_forward(model, ids)
  assert ours.shape == expected.shape == ids.shape + (config["hidden_size"],)
  error = np.abs(ours - expected).max()
  assert error <= PARITY_ATOL, f"max abs error {error:.2e} vs transformers"
  assert np.abs(expected).max() > 1e-2


@pytest.fixture(scope="module")
def saved_reference(tmp_path_factory):
  """A random transformers CLIPTextModel saved by ``save_pretrained``: (model, folder)."""
  folder = tmp_path_factory.mktemp("text_encoder")
  model = random_torch_clip()
  model.save_pretrained(folder, safe_serialization=True)
  return model, str(folder)


def test_matches_transformers_through_saved_folder(saved_reference):
  model, folder = saved_reference
  module, params = convert.read_text_encoder(folder)
  assert module == CLIPTextModel.from_config(presets.TINY_TEXT)
  assert list(params) == ["text_model"]
  assert_parity(module, params, model)


def test_classic_prefixed_checkpoint_loads(saved_reference, tmp_path):
  """SD-1.5 files name weights ``text_model.…`` (transformers >= 5 saves them without it)."""
  model, folder = saved_reference
  state = load_file(os.path.join(folder, "model.safetensors"))
  classic = {("" if k.startswith("text_model.") else "text_model.") + k: v
             for k, v in state.items()}
  classic["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
  save_file(classic, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
  module, params = convert.read_text_encoder(str(tmp_path))
  tiny.assert_same_params(params, convert.read_text_encoder(folder)[1])
  assert_parity(module, params, model)


def test_gelu_activation_matches(tmp_path):
  config = {**presets.TINY_TEXT, "hidden_act": "gelu"}
  model = random_torch_clip(config)
  model.save_pretrained(tmp_path, safe_serialization=True)
  module, params = convert.read_text_encoder(str(tmp_path))
  assert module.hidden_act == "gelu"
  assert_parity(module, params, model, config)


def test_round_trip_flax_transformers_flax_is_identical(tmp_path, caplog):
  module = CLIPTextModel.from_config(presets.TINY_TEXT)
  params = tiny.random_params(module)
  convert.write_text_encoder(module, params, str(tmp_path / "ours"))
  assert all(k.startswith("text_model.")
             for k in load_file(str(tmp_path / "ours" / "model.safetensors")))

  with caplog.at_level(logging.WARNING):
    reloaded_torch, info = transformers.CLIPTextModel.from_pretrained(
        str(tmp_path / "ours"), output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  assert not [r for r in caplog.records if "not used" in r.getMessage()
              or "newly initialized" in r.getMessage()]
  reloaded_torch.eval().save_pretrained(tmp_path / "theirs", safe_serialization=True)
  module2, params2 = convert.read_text_encoder(str(tmp_path / "theirs"))

  assert module2 == module
  tiny.assert_same_params(params, params2)
  assert_parity(module, params, reloaded_torch)  # transformers computes our function


def test_saved_config_is_transformers_config(tmp_path):
  module = CLIPTextModel.from_config(presets.TINY_TEXT)
  convert.write_text_encoder(module, tiny.random_params(module), str(tmp_path))
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["architectures"] == ["CLIPTextModel"]
  assert config["model_type"] == "clip_text_model"
  for key in TORCH_KEYS:
    assert config[key] == presets.TINY_TEXT[key], key
  assert not any(k in config for k in ("dtype", "remat", "attention_implementation"))
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
  loaded = transformers.CLIPTextConfig.from_pretrained(str(tmp_path))
  assert loaded.hidden_size == 32 and loaded.eos_token_id == presets.TINY_TEXT["eos_token_id"]


def test_sd15_text_parameter_count_and_shape():
  module = CLIPTextModel.from_config(presets.SD15_TEXT, dtype=jnp.bfloat16)
  shapes = convert.param_shapes(module)
  assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes)) == 123_060_480
  out = jax.eval_shape(module.apply, {"params": shapes}, jnp.zeros((2, 77), jnp.int32))
  assert out.shape == (2, 77, 768) and out.dtype == jnp.bfloat16


def test_bfloat16_compute_close_to_float32(saved_reference):
  _, folder = saved_reference
  f32, params = convert.read_text_encoder(folder)
  bf16 = CLIPTextModel.from_config(f32.to_config(), dtype=jnp.bfloat16)
  ids = token_ids()
  ref, low = flax_forward(f32, params, ids), flax_forward(bf16, params, ids).astype(np.float32)
  rel = np.linalg.norm(low - ref) / np.linalg.norm(ref)
  assert rel < BF16_REL_TOL, f"bf16 relative error {rel:.3e}"


def test_remat_and_attention_switch_compute_the_same_function(saved_reference):
  _, folder = saved_reference
  base, params = convert.read_text_encoder(folder)
  variant, params2 = convert.read_text_encoder(folder, remat=True, attention_implementation="xla")
  tiny.assert_same_params(params, params2)
  ids = token_ids()

  def loss(module, p):
    return jnp.mean(module.apply({"params": p}, ids) ** 2)

  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  (l1, g1), (l2, g2) = value_and_grad(base, params), value_and_grad(variant, params)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_causal_attention_ignores_later_tokens(saved_reference):
  _, folder = saved_reference
  module, params = convert.read_text_encoder(folder)
  ids = token_ids()
  changed = ids.copy()
  changed[:, 50:] = 7
  a, b = flax_forward(module, params, ids), flax_forward(module, params, changed)
  np.testing.assert_allclose(a[:, :50], b[:, :50], atol=1e-6)
  assert np.abs(a[:, 50:] - b[:, 50:]).max() > 1e-3


def test_transformers_saved_config_loads_and_unsupported_keys_fail(saved_reference):
  _, folder = saved_reference
  config = json.loads(open(os.path.join(folder, "config.json")).read())
  assert "transformers_version" in config  # a real save_pretrained config
  CLIPTextModel.from_config({**config, "tie_word_embeddings": True, "_name_or_path": "x"})
  with pytest.raises(ValueError, match="hidden_act"):
    CLIPTextModel.from_config({**config, "hidden_act": "relu"})
  with pytest.raises(ValueError, match="is_decoder"):
    CLIPTextModel.from_config({**config, "is_decoder": True})
  with pytest.raises(ValueError, match="num_hiden_layers"):
    CLIPTextModel.from_config({**config, "num_hiden_layers": 3})
