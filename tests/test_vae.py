"""Flax AutoencoderKL vs diffusers on a tiny random config, and diffusers-folder I/O."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from seamless_jax import convert
from seamless_jax.models import AutoencoderKL, presets
import tiny

diffusers = pytest.importorskip("diffusers")

PARITY_ATOL = 1e-4  # float32 max abs error allowed vs diffusers (measured 4.1e-6)
BF16_REL_TOL = 5e-2  # relative L2 error, bf16 vs float32 (measured 8.8e-3 enc, 1.2e-2 dec)
SIZE = 32  # tiny-config images are (B,32,32,3), latents (B,16,16,4)


def random_torch_vae(config=presets.TINY_VAE, seed=0):
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKL(**config).eval()
  with torch.no_grad():
    for p in model.parameters():  # non-trivial norms and biases
      p.add_(0.05 * torch.randn_like(p))
  return model


def images(batch=2, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype(np.float32)


def latents(batch=2, seed=1):
  return np.random.RandomState(seed).randn(batch, SIZE // 2, SIZE // 2, 4).astype(np.float32)


@functools.lru_cache(maxsize=None)
def jitted(module, method):
  """One compiled ``module.<method>`` per (module, method); modules are hashable dataclasses."""
  return jax.jit(lambda p, x: module.apply({"params": p}, x, method=method))


def flax_encode(module, params, x):
  return [np.asarray(a) for a in jitted(module, "encode")(params, x)]


def flax_decode(module, params, z):
  return np.asarray(jitted(module, "decode")(params, z))


def nchw(x):
  return torch.from_numpy(x).permute(0, 3, 1, 2)


def torch_encode(model, x):
  with torch.no_grad():
    dist = model.encode(nchw(x)).latent_dist
  return [a.permute(0, 2, 3, 1).numpy() for a in (dist.mean, dist.logvar)]


def torch_decode(model, z):
  with torch.no_grad():
    return model.decode(nchw(z)).sample.permute(0, 2, 3, 1).numpy()


def assert_parity(module, params, model):
  x, z = images(), latents()
  (mean, logvar), (ref_mean, ref_logvar) = flax_encode(module, params, x), torch_encode(model, x)
  decoded, ref_decoded = flax_decode(module, params, z), torch_decode(model, z)
  assert mean.shape == logvar.shape == (2, SIZE // 2, SIZE // 2, 4)
  assert decoded.shape == (2, SIZE, SIZE, 3)
  for name, ours, ref in (("mean", mean, ref_mean), ("logvar", logvar, ref_logvar),
                          ("decode", decoded, ref_decoded)):
    error = np.abs(ours - ref).max()
    assert error <= PARITY_ATOL, f"{name}: max abs error {error:.2e} vs diffusers"
    assert np.abs(ref).max() > 1e-2, name  # not a comparison of near-zero outputs


@pytest.fixture(scope="module")
def saved_reference(tmp_path_factory):
  """A random diffusers VAE saved as a safetensors folder: (model, folder)."""
  folder = tmp_path_factory.mktemp("vae")
  model = random_torch_vae()
  model.save_pretrained(folder, safe_serialization=True)
  return model, str(folder)


def test_matches_diffusers_through_saved_folder(saved_reference):
  model, folder = saved_reference
  module, params = convert.read_vae(folder)
  assert module.scaling_factor == 0.18215
  assert sorted(params) == ["decoder", "encoder", "post_quant_conv", "quant_conv"]
  assert_parity(module, params, model)


def test_call_is_decode_of_posterior_mean(saved_reference):
  _, folder = saved_reference
  module, params = convert.read_vae(folder)
  x = images()
  mean, _ = flax_encode(module, params, x)
  out = np.asarray(jitted(module, "__call__")(params, x))
  np.testing.assert_allclose(out, flax_decode(module, params, mean), atol=1e-5)


def test_round_trip_flax_diffusers_flax_is_identical(tmp_path):
  module = AutoencoderKL.from_config(presets.TINY_VAE)
  params = tiny.random_params(module)

  convert.write_vae(module, params, str(tmp_path / "ours"))
  reloaded_torch = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "ours")).eval()
  reloaded_torch.save_pretrained(tmp_path / "theirs", safe_serialization=True)
  module2, params2 = convert.read_vae(str(tmp_path / "theirs"))

  assert module2 == module
  tiny.assert_same_params(params, params2)
  assert_parity(module, params, reloaded_torch)  # diffusers computes our function


def test_saved_config_is_diffusers_config(tmp_path):
  module = AutoencoderKL.from_config(presets.TINY_VAE)
  params = tiny.random_params(module)
  convert.write_vae(module, params, str(tmp_path))
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["_class_name"] == "AutoencoderKL"
  assert config["block_out_channels"] == [32, 64] and config["scaling_factor"] == 0.18215
  assert not any(k in config for k in ("dtype", "remat", "attention_implementation"))
  assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_sd15_vae_parameter_count_and_shapes():
  module = AutoencoderKL.from_config(presets.SD15_VAE, dtype=jnp.bfloat16)
  shapes = convert.param_shapes(module)
  assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes)) == 83_653_863
  mean, logvar = jax.eval_shape(lambda p, x: module.apply({"params": p}, x, method=module.encode),
                                shapes, jnp.zeros((1, 512, 512, 3)))
  assert mean.shape == logvar.shape == (1, 64, 64, 4)
  image = jax.eval_shape(lambda p, z: module.apply({"params": p}, z, method=module.decode),
                         shapes, jnp.zeros((1, 64, 64, 4)))
  assert image.shape == (1, 512, 512, 3) and image.dtype == jnp.bfloat16


def test_bfloat16_compute_close_to_float32(saved_reference):
  _, folder = saved_reference
  f32, params = convert.read_vae(folder)
  bf16 = AutoencoderKL.from_config(f32.to_config(), dtype=jnp.bfloat16)
  x, z = images(), latents()
  for run in (lambda m: flax_encode(m, params, x)[0], lambda m: flax_decode(m, params, z)):
    ref, low = run(f32), run(bf16).astype(np.float32)
    rel = np.linalg.norm(low - ref) / np.linalg.norm(ref)
    assert rel < BF16_REL_TOL, f"bf16 relative error {rel:.3e}"
  assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32


def test_remat_and_attention_switch_compute_the_same_function(saved_reference):
  _, folder = saved_reference
  base, params = convert.read_vae(folder)
  variant, params2 = convert.read_vae(folder, remat=True, attention_implementation="xla")
  tiny.assert_same_params(params, params2)  # remat leaves the names unchanged
  z = latents(batch=1)[:, :4, :4]  # the decoder path holds every block kind; small = fast compile

  def loss(module, p):
    return jnp.mean(module.apply({"params": p}, z, method=module.decode) ** 2)

  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  (l1, g1), (l2, g2) = value_and_grad(base, params), value_and_grad(variant, params)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_legacy_attention_names_load_equal(saved_reference, tmp_path):
  model, folder = saved_reference
  state = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
  renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.",
             ".to_out.0.": ".proj_attn."}
  legacy = {}
  for key, value in state.items():
    for new, old in renames.items():
      key = key.replace(new, old)
    legacy[key] = value
  assert "decoder.mid_block.attentions.0.proj_attn.weight" in legacy
  save_file(legacy, str(tmp_path / "diffusion_pytorch_model.safetensors"))
  (tmp_path / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
  _, params = convert.read_vae(str(tmp_path))
  _, modern = convert.read_vae(folder)
  tiny.assert_same_params(modern, params)


def test_unsupported_config_is_an_error_naming_the_key():
  with pytest.raises(ValueError, match="act_fn"):
    AutoencoderKL.from_config({**presets.TINY_VAE, "act_fn": "relu"})
  with pytest.raises(ValueError, match="latent_chanels"):
    AutoencoderKL.from_config({**presets.TINY_VAE, "latent_chanels": 4})
  with pytest.raises(ValueError, match="unsupported down block type 'DownBlock2D'"):
    AutoencoderKL.from_config({**presets.TINY_VAE,
                               "down_block_types": ["DownBlock2D", "DownEncoderBlock2D"]})
