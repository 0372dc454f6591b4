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
    # cross-attention to 77 tokens: cuDNN's backward refuses odd lengths ("Unsupported
    # sequence length Q 4096, KV 77"), so XLA
    assert pick("", "gpu", head_dim, kv_len=77) == "xla"
  assert pick(None, "gpu", 512) == "xla"                    # VAE mid-block: one 512-wide head
  assert pick(None, "gpu", 64, q_len=77, kv_len=77) == "xla"  # CLIP text (causal, 77 tokens)
  assert pick(None, "gpu", 64, q_len=78, kv_len=78) == "cudnn"


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
  assert pick(None, "tpu", 80, q_len=1024, kv_len=1024) == "pallas"
  assert pick(None, "tpu", 40, kv_len=77) == "xla"    # 77 tokens do not tile by 128
  assert pick(None, "tpu", 512, q_len=1024, kv_len=1024) == "pallas"


def test_pallas_only_where_the_kernel_takes_the_head_dim():
  """The TPU kernel takes head dims <= 128 or multiples of 128: SD-1.5's 1280-channel level
  (8 heads of 160) goes to XLA, not to a kernel that raises NotImplementedError."""
  assert pick(None, "tpu", 160, q_len=256, kv_len=256) == "xla"
  assert pick("pallas", "tpu", 160, q_len=256, kv_len=256) == "xla"
  assert pick(None, "tpu", 128) == "pallas" and pick(None, "tpu", 256) == "pallas"
  assert pick(None, "tpu", 192) == "xla"
  assert attention.pallas_supports(160, 256, 256) is False


def test_kernel_target_follows_the_mesh_not_the_default_backend():
  devices = np.asarray(jax.devices()[:1])
  mesh = jax.sharding.Mesh(devices.reshape(1, 1), ("data", "fsdp"))
  assert attention.current_target().platform == jax.default_backend()
  with attention.kernel_target(mesh):
    target = attention.current_target()
    assert target.platform == "cpu" and target.mesh is None  # one device: no shard_map
  fake_tpu = attention.KernelTarget("tpu")
  token = attention._TARGET.set(fake_tpu)  # pylint: disable=protected-access
  try:
    assert attention.current_target() is fake_tpu
  finally:
    attention._TARGET.reset(token)  # pylint: disable=protected-access


def test_kernel_partition_spec_prefers_batch_then_heads():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
  P = jax.sharding.PartitionSpec
  assert attention.kernel_partition_spec(mesh, 4, 8) == P(("data", "fsdp"))


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


def numpy_attention(q, k, v, causal):
  """(B, L, N, H) attention in float64 NumPy, the reference for the XLA path."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  scores = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
  if causal:
    scores = np.where(np.tril(np.ones(scores.shape[-2:], bool)), scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bnqk,bknh->bqnh", probs, v)


@pytest.mark.parametrize("causal,kv_len", [(False, 7), (False, 5), (True, 7)])
def test_softmax_attention_values_and_gradients(causal, kv_len):
  """The hand-written VJP equals autodiff of jax.nn.dot_product_attention (max abs error of the
  three gradients <= 2e-5 in float32); the values equal a float64 NumPy computation."""
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(2, 7, 3, 8)), F32)
  k, v = (jnp.asarray(rng.normal(size=(2, kv_len, 3, 8)), F32) for _ in range(2))
  cotangent = jnp.asarray(rng.normal(size=(2, 7, 3, 8)), F32)
  ours = lambda q, k, v: attention.softmax_attention(q, k, v, causal)
  ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                     implementation="xla")
  np.testing.assert_allclose(np.asarray(ours(q, k, v)), numpy_attention(q, k, v, causal),
                             atol=2e-6)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * cotangent)
  got = jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    assert float(jnp.max(jnp.abs(g - w))) <= 2e-5


def test_softmax_attention_in_bfloat16_keeps_the_input_dtype_and_agrees():
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 9, 2, 16)), jnp.bfloat16) for _ in range(3))
  out = attention.softmax_attention(q, k, v)
  grads = jax.grad(lambda *a: jnp.sum(attention.softmax_attention(*a).astype(F32)),
                   argnums=(0, 1, 2))(q, k, v)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  np.testing.assert_allclose(np.asarray(out, np.float32), numpy_attention(q, k, v, False),
                             atol=3e-2)
