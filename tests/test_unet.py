"""Flax UNet2DConditionModel vs diffusers on tiny random configs, and diffusers-folder I/O."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seamless_jax import convert
from seamless_jax.models import UNet2DConditionModel, presets
import tiny

diffusers = pytest.importorskip("diffusers")

PARITY_ATOL = 1e-4  # float32 max abs error allowed vs diffusers

VARIANTS = {
    "conv_proj_4ch": presets.TINY_UNET,
    "linear_proj_9ch": {**presets.TINY_UNET, "in_channels": 9, "use_linear_projection": True},
    "per_block_heads": {**presets.TINY_UNET, "attention_head_dim": [2, 4],
                        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]},
    "three_levels": {**presets.TINY_UNET, "block_out_channels": [16, 32, 32],
                     "layers_per_block": 2, "attention_head_dim": 2,
                     "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                          "DownBlock2D"],
                     "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D",
                                        "CrossAttnUpBlock2D"]},
}


def random_torch_unet(config, seed=0):
  torch.manual_seed(seed)
  model = diffusers.UNet2DConditionModel(**config).eval()
  with torch.no_grad():
    for p in model.parameters():  # non-trivial norms, biases and zero-initialised outputs
      p.add_(0.05 * torch.randn_like(p))
  return model


def unet_inputs(config, batch=2, size=16, seq=7, seed=0):
  rng = np.random.RandomState(seed)
  sample = rng.randn(batch, size, size, config["in_channels"]).astype(np.float32)
  timesteps = np.array([3, 981][:batch], dtype=np.int64)
  context = rng.randn(batch, seq, config["cross_attention_dim"]).astype(np.float32)
  return sample, timesteps, context


def flax_forward(module, params, sample, timesteps, context):
  """Jitted forward (eager Flax dispatch is op-by-op and slow on CPU)."""
  return np.asarray(jax.jit(module.apply)({"params": params}, sample, timesteps, context))


def torch_forward(model, sample, timesteps, context):
  with torch.no_grad():
    out = model(torch.from_numpy(sample).permute(0, 3, 1, 2), torch.from_numpy(timesteps),
                torch.from_numpy(context)).sample
  return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_matches_diffusers_through_saved_folder(name, tmp_path):
  config = VARIANTS[name]
  reference = random_torch_unet(config)
  reference.save_pretrained(tmp_path, safe_serialization=True)

  module, params = convert.read_unet(str(tmp_path))
  sample, timesteps, context = unet_inputs(config)
  ours = flax_forward(module, params, sample, timesteps, context)
  expected = torch_forward(reference, sample, timesteps, context)

  assert ours.shape == expected.shape == sample.shape[:3] + (4,)
  error = np.abs(ours - expected).max()
  assert error <= PARITY_ATOL, f"max abs error {error:.2e} vs diffusers"
  assert np.abs(expected).max() > 1e-2  # the comparison is not between near-zero outputs


def test_round_trip_flax_diffusers_flax_is_identical(tmp_path):
  config = VARIANTS["linear_proj_9ch"]
  module = UNet2DConditionModel.from_config(config)
  params = tiny.random_params(module)

  convert.write_unet(module, params, str(tmp_path / "ours"))
  reloaded_torch = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path / "ours"))
  reloaded_torch.save_pretrained(tmp_path / "theirs", safe_serialization=True)
  module2, params2 = convert.read_unet(str(tmp_path / "theirs"))

  assert module2 == module
  tiny.assert_same_params(params, params2)
  # And diffusers computes the same function from the folder we wrote.
  sample, timesteps, context = unet_inputs(config)
  ours = flax_forward(module, params, sample, timesteps, context)
  assert np.abs(ours - torch_forward(reloaded_torch, sample, timesteps, context)).max() <= PARITY_ATOL


def test_saved_config_is_diffusers_config(tmp_path):
  module = UNet2DConditionModel.from_config(presets.TINY_UNET)
  convert.write_unet(module, tiny.random_params(module), str(tmp_path))
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  assert config["_class_name"] == "UNet2DConditionModel"
  assert config["block_out_channels"] == [32, 64]
  assert not any(k in config for k in ("dtype", "remat", "attention_implementation"))
  assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_sd15_unet_parameter_count():
  module = UNet2DConditionModel.from_config(presets.SD15_UNET)
  shapes = convert.param_shapes(module)
  assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes)) == 859_520_964
  inpaint = UNet2DConditionModel.from_config(presets.SD15_INPAINT_UNET)
  kernel = convert.param_shapes(inpaint)["conv_in"]["kernel"]
  assert kernel.shape == (3, 3, 9, 320)


def test_sd15_unet_output_shape_without_allocating():
  module = UNet2DConditionModel.from_config(presets.SD15_UNET, dtype=jnp.bfloat16)
  shapes = convert.param_shapes(module)
  out = jax.eval_shape(module.apply, {"params": shapes}, jnp.zeros((2, 64, 64, 4)),
                       jnp.zeros((2,), jnp.int32), jnp.zeros((2, 77, 768)))
  assert out.shape == (2, 64, 64, 4) and out.dtype == jnp.bfloat16


BF16_REL_TOL = 5e-2  # relative L2 error of bf16 compute vs float32 on the tiny config


def test_bfloat16_compute_close_to_float32():
  config = VARIANTS["conv_proj_4ch"]
  f32 = UNet2DConditionModel.from_config(config)
  bf16 = UNet2DConditionModel.from_config(config, dtype=jnp.bfloat16)
  params = tiny.random_params(f32)
  sample, timesteps, context = unet_inputs(config)
  ref = jax.jit(f32.apply)({"params": params}, sample, timesteps, context)
  low = jax.jit(bf16.apply)({"params": params}, sample, timesteps, context)
  assert low.dtype == jnp.bfloat16
  assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32
  rel = float(jnp.linalg.norm(low.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
  assert rel < BF16_REL_TOL, f"bf16 relative error {rel:.3e}"


@pytest.mark.parametrize("remat", [True, "dots_with_no_batch_dims_saveable", "dots_saveable"])
def test_remat_and_attention_switch_compute_the_same_function(remat):
  """Every remat policy gives the same loss and gradients (max abs error 1e-6)."""
  config = VARIANTS["conv_proj_4ch"]
  base = UNet2DConditionModel.from_config(config)
  variant = UNet2DConditionModel.from_config(config, remat=remat, attention_implementation="xla")
  params = tiny.random_params(base)
  # Same parameter tree (names unchanged by remat) and the same outputs and grads.
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      convert.param_shapes(variant))
  sample, timesteps, context = unet_inputs(config)

  def loss(module, p):
    return jnp.mean(module.apply({"params": p}, sample, timesteps, context) ** 2)

  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  (l1, g1), (l2, g2) = value_and_grad(base, params), value_and_grad(variant, params)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def _saved_residual_bytes(module, params, inputs) -> int:
  """Bytes the forward pass keeps for the backward pass (the VJP's residuals), traced only."""
  fwd = lambda p: module.apply({"params": p}, *inputs)
  residuals = jax.eval_shape(lambda p: jax.vjp(fwd, p)[1], params)  # a Partial: a pytree
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(residuals))


def test_remat_policies_keep_what_they_name():
  """Each policy keeps more than the one before it, no remat keeps most; an unknown policy is
  an error listing the valid ones."""
  config = VARIANTS["conv_proj_4ch"]
  inputs = unet_inputs(config)
  base = UNet2DConditionModel.from_config(config)
  params = convert.param_shapes(base)
  kept = {remat: _saved_residual_bytes(base.clone(remat=remat), params, inputs)
          for remat in (False, "nothing_saveable", "dots_with_no_batch_dims_saveable",
                        "dots_saveable")}
  assert (kept["nothing_saveable"] < kept["dots_with_no_batch_dims_saveable"]
          < kept["dots_saveable"] < kept[False])
  with pytest.raises(ValueError, match="remat='dots' is not one of False, True"):
    convert.param_shapes(base.clone(remat="dots"))


def test_unsupported_config_is_an_error_naming_the_key(tmp_path):
  with pytest.raises(ValueError, match="class_embed_type"):
    UNet2DConditionModel.from_config({**presets.TINY_UNET, "class_embed_type": "timestep"})
  with pytest.raises(ValueError, match="block_out_chanels"):
    UNet2DConditionModel.from_config({**presets.TINY_UNET, "block_out_chanels": [1]})
  with pytest.raises(ValueError, match="unsupported block type 'SimpleDownBlock2D'"):
    module = UNet2DConditionModel.from_config(
        {**presets.TINY_UNET, "down_block_types": ["SimpleDownBlock2D", "DownBlock2D"]})
    convert.param_shapes(module)


def test_sharded_checkpoint_loads(tmp_path):
  reference = random_torch_unet(presets.TINY_UNET)
  reference.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
  assert os.path.exists(tmp_path / "diffusion_pytorch_model.safetensors.index.json")
  module, params = convert.read_unet(str(tmp_path))
  sample, timesteps, context = unet_inputs(presets.TINY_UNET)
  ours = flax_forward(module, params, sample, timesteps, context)
  assert np.abs(ours - torch_forward(reference, sample, timesteps, context)).max() <= PARITY_ATOL


def test_half_precision_variant_loads_as_float32_masters(tmp_path):
  """``diffusion_pytorch_model.fp16.safetensors`` (bf16 too) load on the host as float32."""
  reference = random_torch_unet(presets.TINY_UNET)
  reference.to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True, variant="fp16")
  module, params = convert.read_unet(str(tmp_path), variant="fp16")
  leaves = jax.tree_util.tree_leaves(params)
  assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in leaves)
  expected = reference.state_dict()["conv_in.weight"].float().numpy()
  np.testing.assert_array_equal(params["conv_in"]["kernel"], expected.transpose(2, 3, 1, 0))
