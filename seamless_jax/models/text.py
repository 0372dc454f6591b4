"""CLIP text tower (transformers ``CLIPTextModel``) in Flax linen.

Fields mirror the keys of a transformers ``text_encoder/config.json``
(SD-1.5: openai/clip-vit-large-patch14's text tower, 123.06 M params).
The param tree is rooted at ``text_model`` so paths map to the classic
checkpoint keys (``text_model.encoder.layers.0.self_attn.q_proj.weight``).

``apply({'params': p}, input_ids (B,L) int, L <= max_position_embeddings)
-> last_hidden_state (B,L,hidden_size)`` (after ``final_layer_norm``, in the
compute ``dtype``). Attention is causal; there is no padding mask (Stable
Diffusion pads prompts to 77 tokens and attends causally over the padding).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seamless_jax.models import config_utils
from seamless_jax.models.attention import attend
from seamless_jax.models.layers import Remat, dense, maybe_remat

Dtype = Any

# transformers keys this module does not implement, with the only value it accepts.
UNSUPPORTED_DEFAULTS = {
    "is_decoder": False,
    "add_cross_attention": False,
    "is_encoder_decoder": False,
    "chunk_size_feed_forward": 0,
    "pruned_heads": {},
}
# Generic ``PretrainedConfig`` keys that older transformers versions dump into
# every config.json; none of them changes the text tower's function.
INERT_KEYS = frozenset({
    "tie_word_embeddings", "use_bfloat16", "torchscript", "problem_type", "tokenizer_class",
    "prefix", "task_specific_params", "finetuning_task", "sep_token_id",
    "decoder_start_token_id", "cross_attention_hidden_size", "tf_legacy_loss",
    "architectures", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
    "output_scores", "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "torch_dtype", "dtype", "attn_implementation",
})
HEADER = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
          "attention_dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02}

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class CLIPTextModel(nn.Module):
  """CLIP causal text transformer returning the final-layer-normed hidden states."""
  vocab_size: int = 49408
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  # Carried so a saved config equals the loaded one; no effect on last_hidden_state.
  projection_dim: int = 512
  pad_token_id: int | None = 1
  bos_token_id: int | None = 49406
  eos_token_id: int | None = 49407
  # Not part of a transformers config: how to run, not what to compute.
  dtype: Dtype = jnp.float32
  attention_implementation: str | None = None
  remat: Remat = False

  @classmethod
  def from_config(cls, config: dict, **runtime) -> "CLIPTextModel":
    """Builds the module from a transformers config dict; ``runtime`` sets dtype etc."""
    config = {k: v for k, v in config.items() if k not in INERT_KEYS}
    module = config_utils.module_from_config(cls, config, UNSUPPORTED_DEFAULTS, runtime)
    module.check_activation()
    return module

  def to_config(self) -> dict:
    """The transformers ``config.json`` content (``CLIPTextModel.from_pretrained`` loads it)."""
    return config_utils.module_to_config(self, HEADER)

  def check_activation(self) -> None:
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; expected one of "
                       f"{sorted(ACTIVATIONS)}")

  def dummy_inputs(self, batch: int = 1) -> tuple[jax.Array]:
    """Example ``(input_ids,)`` for `init`."""
    return (jnp.zeros((batch, self.max_position_embeddings), jnp.int32),)

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    self.check_activation()
    return CLIPTextTransformer(
        vocab_size=self.vocab_size, hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size, num_layers=self.num_hidden_layers,
        heads=self.num_attention_heads, max_positions=self.max_position_embeddings,
        hidden_act=self.hidden_act, eps=self.layer_norm_eps,
        implementation=self.attention_implementation, remat=self.remat, dtype=self.dtype,
        name="text_model")(input_ids)


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class CLIPTextTransformer(nn.Module):
  """``embeddings`` -> ``encoder/layers_i`` -> ``final_layer_norm``; (B,L) ids -> (B,L,D)."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  heads: int
  max_positions: int
  hidden_act: str = "quick_gelu"
  eps: float = 1e-5
  implementation: str | None = None
  remat: Remat = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    length = input_ids.shape[-1]
    if length > self.max_positions:
      raise ValueError(f"sequence length {length} > max_position_embeddings {self.max_positions}")
    h = CLIPTextEmbeddings(self.vocab_size, self.hidden_size, self.max_positions,
                           name="embeddings")(input_ids)
    h = CLIPEncoder(self.hidden_size, self.intermediate_size, self.num_layers, self.heads,
                    hidden_act=self.hidden_act, eps=self.eps, implementation=self.implementation,
                    remat=self.remat, dtype=self.dtype, name="encoder")(h.astype(self.dtype))
    return _layer_norm(self.eps, "final_layer_norm")(h).astype(self.dtype)


class CLIPTextEmbeddings(nn.Module):
  """Token plus learned absolute position embeddings; (B,L) -> (B,L,D) float32."""
  vocab_size: int
  hidden_size: int
  max_positions: int

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    def embed(count, name):
      return nn.Embed(count, self.hidden_size, dtype=jnp.float32, param_dtype=jnp.float32,
                      embedding_init=nn.initializers.normal(0.02), name=name)

    tokens = embed(self.vocab_size, "token_embedding")(input_ids.astype(jnp.int32))
    positions = embed(self.max_positions, "position_embedding")(
        jnp.arange(input_ids.shape[-1], dtype=jnp.int32))
    return tokens + positions[None]


class CLIPEncoder(nn.Module):
  """``layers_0 .. layers_{n-1}`` pre-norm transformer layers."""
  hidden_size: int
  intermediate_size: int
  num_layers: int
  heads: int
  hidden_act: str = "quick_gelu"
  eps: float = 1e-5
  implementation: str | None = None
  remat: Remat = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    cls = maybe_remat(CLIPEncoderLayer, self.remat)
    for i in range(self.num_layers):
      h = cls(self.hidden_size, self.intermediate_size, self.heads, hidden_act=self.hidden_act,
              eps=self.eps, implementation=self.implementation, dtype=self.dtype,
              name=f"layers_{i}")(h)
    return h


class CLIPEncoderLayer(nn.Module):
  """x + self_attn(layer_norm1(x)); then x + mlp(layer_norm2(x)). (B,L,D) -> (B,L,D)."""
  hidden_size: int
  intermediate_size: int
  heads: int
  hidden_act: str = "quick_gelu"
  eps: float = 1e-5
  implementation: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _layer_norm(self.eps, "layer_norm1")(x).astype(self.dtype)
    x = x + CLIPAttention(self.hidden_size, self.heads, implementation=self.implementation,
                          dtype=self.dtype, name="self_attn")(h)
    h = _layer_norm(self.eps, "layer_norm2")(x).astype(self.dtype)
    x = x + CLIPMLP(self.hidden_size, self.intermediate_size, self.hidden_act, dtype=self.dtype,
                    name="mlp")(h)
    return x.astype(self.dtype)


class CLIPAttention(nn.Module):
  """Causal multi-head self-attention with ``q_proj``/``k_proj``/``v_proj``/``out_proj``."""
  hidden_size: int
  heads: int
  implementation: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    q, k, v = (dense(self.hidden_size, self.dtype, name)(x)
               for name in ("q_proj", "k_proj", "v_proj"))
    out = attend(q, k, v, self.heads, implementation=self.implementation, is_causal=True)
    return dense(self.hidden_size, self.dtype, "out_proj")(out)


class CLIPMLP(nn.Module):
  """``fc1`` -> activation -> ``fc2``."""
  hidden_size: int
  intermediate_size: int
  hidden_act: str = "quick_gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = ACTIVATIONS[self.hidden_act](dense(self.intermediate_size, self.dtype, "fc1")(x))
    return dense(self.hidden_size, self.dtype, "fc2")(h)
