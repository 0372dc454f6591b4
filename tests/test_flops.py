"""Analytic FLOP count (seamless_jax.runtime.flops) vs torch's FlopCounterMode on diffusers models.

Both sides only trace: JAX abstract-evaluates the Flax module (ShapeDtypeStructs), PyTorch runs
the diffusers module on the ``meta`` device, so even SD-1.5 at 512² costs no compute. diffusers
uses its plain ``AttnProcessor`` (bmm), which FlopCounterMode counts on every backend.
"""

import types

import jax
import jax.numpy as jnp
import pytest

from seamless_jax.models import AutoencoderKL, UNet2DConditionModel, presets
from seamless_jax.runtime import flops as flops_lib

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import AttnProcessor  # pylint: disable=wrong-import-position
from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=wrong-import-position

# Both count 2 FLOPs per multiply-add of every matmul/convolution and nothing else, so they
# agree exactly (measured ratio 1.000000 for every case below); allow float rounding only.
REL_TOL = 1e-6
SMALL_UNET = {**presets.SD15_UNET, "block_out_channels": [64, 128, 256, 256]}
SDS = jax.ShapeDtypeStruct


def _abstract_params(module):
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                            *module.dummy_inputs())["params"])


def jax_unet_flops(config, batch, side, tokens=77):
  unet = UNet2DConditionModel.from_config(config)
  return flops_lib.count_flops(
      lambda p, x, t, c: unet.apply({"params": p}, x, t, c), _abstract_params(unet),
      SDS((batch, side, side, 4), jnp.float32), SDS((batch,), jnp.int32),
      SDS((batch, tokens, config["cross_attention_dim"]), jnp.float32))


def torch_unet_flops(config, batch, side, tokens=77):
  with torch.device("meta"):
    unet = diffusers.UNet2DConditionModel(**config)
    unet.set_attn_processor(AttnProcessor())
    with FlopCounterMode(display=False) as counter:
      unet(torch.zeros(batch, 4, side, side), torch.zeros(batch, dtype=torch.long),
           torch.zeros(batch, tokens, config["cross_attention_dim"]))
  return counter.get_total_flops()


def jax_vae_flops(config, batch, size):
  vae = AutoencoderKL.from_config(config)
  params, side = _abstract_params(vae), size // vae.downscale
  encode = flops_lib.count_flops(lambda p, x: vae.apply({"params": p}, x, method=vae.encode),
                                 params, SDS((batch, size, size, 3), jnp.float32))
  decode = flops_lib.count_flops(lambda p, z: vae.apply({"params": p}, z, method=vae.decode),
                                 params, SDS((batch, side, side, vae.latent_channels), jnp.float32))
  return encode, decode


def torch_vae_flops(config, batch, size):
  with torch.device("meta"):
    vae = diffusers.AutoencoderKL(**config)
    vae.set_attn_processor(AttnProcessor())
    side = size // 2 ** (len(config["block_out_channels"]) - 1)
    with FlopCounterMode(display=False) as counter:
      vae.encode(torch.zeros(batch, 3, size, size))
    encode = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
      vae.decode(torch.zeros(batch, config.get("latent_channels", 4), side, side))
  return encode, counter.get_total_flops()


@pytest.mark.parametrize("name,config,side", [("tiny", presets.TINY_UNET, 8),
                                              ("small", SMALL_UNET, 32)])
def test_unet_forward_matches_torch_flop_counter(name, config, side):
  del name
  assert jax_unet_flops(config, 2, side) == pytest.approx(torch_unet_flops(config, 2, side),
                                                          rel=REL_TOL)


def test_vae_matches_torch_flop_counter():
  for got, want in zip(jax_vae_flops(presets.TINY_VAE, 2, 32),
                       torch_vae_flops(presets.TINY_VAE, 2, 32)):
    assert got == pytest.approx(want, rel=REL_TOL)


@pytest.mark.slow
def test_sd15_unet_and_vae_at_512_match_torch_flop_counter():
  """SD-1.5 sizes (~8 s of tracing): UNet at 64² latents, VAE encode/decode at 512²."""
  unet = jax_unet_flops(presets.SD15_UNET, 1, 64)
  assert unet == pytest.approx(torch_unet_flops(presets.SD15_UNET, 1, 64), rel=REL_TOL)
  assert 0.7e12 < unet < 0.9e12  # ≈ 0.80 TFLOP per image
  for got, want in zip(jax_vae_flops(presets.SD15_VAE, 1, 512),
                       torch_vae_flops(presets.SD15_VAE, 1, 512)):
    assert got == pytest.approx(want, rel=REL_TOL)


def test_dot_conv_scan_cond_and_grad_rules():
  x, w = SDS((4, 8, 16), jnp.float32), SDS((16, 32), jnp.float32)
  matmul = 2 * 4 * 8 * 16 * 32
  assert flops_lib.count_flops(jnp.matmul, x, w) == matmul
  # backward of y = x @ w wrt both: two more matmuls of the same size
  loss = lambda a, b: jnp.sum(a @ b)
  assert flops_lib.count_flops(jax.grad(loss, argnums=(0, 1)), x, w) == 3 * matmul

  def scanned(a, b):
    return jax.lax.scan(lambda c, _: (c, c @ b), a, None, length=5)[1]
  assert flops_lib.count_flops(scanned, x, w) == 5 * matmul

  def branches(p, a, b):
    return jax.lax.cond(p, lambda: jnp.sum(a @ b), lambda: jnp.sum(a))
  assert flops_lib.count_flops(branches, SDS((), jnp.bool_), x, w) == matmul

  img, kernel = SDS((2, 10, 12, 3), jnp.float32), SDS((3, 3, 3, 8), jnp.float32)
  conv = lambda i, k: jax.lax.conv_general_dilated(i, k, (2, 2), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert flops_lib.count_flops(conv, img, kernel) == 2 * (2 * 5 * 6 * 8) * (3 * 3 * 3)
  grouped = lambda i, k: jax.lax.conv_general_dilated(
      i, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3)
  assert flops_lib.count_flops(grouped, img, SDS((3, 3, 1, 6), jnp.float32)) == (
      2 * (2 * 10 * 12 * 6) * (3 * 3 * 1))


def test_attention_kernel_counts_like_its_matmuls():
  """The XLA attention path is counted from its two einsums: 4·B·N·T·S·H."""
  b, t, s, n, h = 2, 16, 8, 4, 32
  q, kv = SDS((b, t, n, h), jnp.float32), SDS((b, s, n, h), jnp.float32)
  got = flops_lib.count_flops(
      lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"), q, kv, kv)
  assert got == 4 * b * n * t * s * h


def test_cudnn_attention_primitives_are_counted():
  """cuDNN's fused attention (GPU only) is one primitive; it counts as the XLA path would:
  forward 2 matmuls, backward 4 (checked on stand-in equations, the CPU cannot trace it)."""
  b, t, s, n, h = 2, 16, 8, 4, 32

  def eqn(name):
    var = lambda shape: types.SimpleNamespace(aval=types.SimpleNamespace(shape=shape))
    return types.SimpleNamespace(primitive=types.SimpleNamespace(name=name), params={"layout": 0},
                                 invars=[var((b, t, n, h)), var((b, s, n, h)), var((b, s, n, h))])
  matmul = 2 * b * n * t * s * h
  assert flops_lib._eqn_flops(eqn("dot_product_attention_fwd")) == 2 * matmul  # pylint: disable=protected-access
  assert flops_lib._eqn_flops(eqn("dot_product_attention_bwd")) == 4 * matmul  # pylint: disable=protected-access
