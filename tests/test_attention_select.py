"""Per-call attention kernel choice (seamless_jax.models.attention.select_implementation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seamless_jax.models import attention

BF16, F32 = jnp.bfloat16, jnp.float32


def pick(requested, platform, head_dim, dtype=BF16, q_len=4096, kv_len=4096, cc="9.0"):
  return attention.select_implementation(requested, platform, head_dim=head_dim, dtype=dtype,
                                         q_len=q_len, kv_len=kv_len, compute_capability=cc)


def test_auto_on_hopper_uses_cudnn_for_sd15_unet_heads_and_xla_for_the_vae_head():
  for head_dim in (40, 80, 160):  # SD-1.5 UNet: 8 heads of 320/640/1280 channels
    assert pick(None, "gpu", head_dim) == "cudnn"
    assert pick("", "gpu", head_dim, kv_len=77) == "cudnn"  # cross-attention
  assert pick(None, "gpu", 512) == "xla"                    # VAE mid-block: one 512-wide head
  assert pick(None, "gpu", 64, q_len=77, kv_len=77) == "cudnn"  # CLIP text (causal)


def test_auto_respects_cudnn_head_dim_and_dtype_rules():
  assert pick(None, "gpu", 160, cc="8.0") == "xla"   # > 128 before Hopper
  assert pick(None, "gpu", 128, cc="8.0") == "cudnn"
  assert pick(None, "gpu", 256, cc="9.0") == "cudnn"
  assert pick(None, "gpu", 264, cc="10.0") == "xla"  # > 256
  assert pick(None, "gpu", 36) == "xla"              # not a multiple of 8
  assert pick(None, "gpu", 40, dtype=F32) == "xla"   # cuDNN flash takes fp16/bf16 only
  assert pick(None, "gpu", 40, dtype=jnp.float16) == "cudnn"


def test_auto_on_cpu_and_tpu():
  assert pick(None, "cpu", 40) == "xla"
  assert pick(None, "tpu", 40) == "pallas"
  assert pick(None, "tpu", 40, kv_len=77) == "xla"    # 77 tokens do not tile by 128
  assert pick(None, "tpu", 512, q_len=1024, kv_len=1024) == "pallas"


def test_forced_choices():
  assert pick("xla", "gpu", 40) == "xla"
  assert pick("cudnn", "gpu", 40) == "cudnn"
  assert pick("cudnn", "gpu", 512) == "xla"           # the VAE head still falls back
  assert pick("pallas", "tpu", 40) == "pallas"
  with pytest.raises(ValueError, match="config.attention='cudnn' needs an NVIDIA GPU"):
    pick("cudnn", "cpu", 40)
  with pytest.raises(ValueError, match="bfloat16/float16"):
    pick("cudnn", "gpu", 40, dtype=F32)
  with pytest.raises(ValueError, match="needs a TPU"):
    pick("pallas", "gpu", 40)
  with pytest.raises(ValueError, match="config.attention"):
    pick("flash", "gpu", 40)


def test_attend_on_cpu_matches_plain_softmax_attention():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 6, 16)), F32) for _ in range(3))
  out = attention.attend(q, k, v, heads=2)
  split = lambda x: x.reshape(2, 6, 2, 8)
  scores = jnp.einsum("bqnh,bknh->bnqk", split(q), split(k)) / np.sqrt(8)
  want = jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(scores, -1), split(v)).reshape(2, 6, 16)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
    attention.attend(q, k, v, heads=2, implementation="cudnn")
