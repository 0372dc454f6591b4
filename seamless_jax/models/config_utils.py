"""Building Flax modules from diffusers/transformers ``config.json`` dicts and back.

A model module's dataclass fields named like config keys are *architecture*
fields; ``RUNTIME_FIELDS`` (dtype, attention kernel, remat) say how to run and
are never written to a config file. Keys the module does not implement are
accepted only with their diffusers default value, so a checkpoint that needs a
feature we lack fails loudly instead of loading into the wrong network.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

RUNTIME_FIELDS = ("dtype", "attention_implementation", "remat", "parent", "name")

# Bookkeeping keys found in every config file; they describe no architecture.
METADATA_PREFIX = "_"
IGNORED_KEYS = frozenset({"architectures", "transformers_version", "torch_dtype", "dtype",
                          "model_type", "force_upcast", "latents_mean", "latents_std",
                          "shift_factor", "use_quant_conv", "use_post_quant_conv",
                          "mid_block_add_attention", "id2label", "label2id",
                          "return_dict", "output_attentions", "output_hidden_states",
                          "initializer_range", "initializer_factor", "pad_token_id",
                          "bos_token_id", "eos_token_id", "dropout", "attention_dropout",
                          "projection_dim"})


def architecture_fields(cls) -> list[str]:
  return [f.name for f in dataclasses.fields(cls) if f.name not in RUNTIME_FIELDS]


def _normalise(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value


def module_from_config(cls, config: Mapping[str, Any], unsupported_defaults: Mapping[str, Any],
                       runtime: Mapping[str, Any]):
  """Instantiates ``cls`` from a config dict.

  Raises:
    ValueError: naming every key whose value requires a feature ``cls`` lacks,
      or every runtime option that is not a field of ``cls``.
  """
  fields = set(architecture_fields(cls))
  kwargs, problems = {}, []
  for key, value in config.items():
    if key.startswith(METADATA_PREFIX) or key in IGNORED_KEYS and key not in fields:
      continue
    if key in fields:
      kwargs[key] = _normalise(value)
    elif key in unsupported_defaults:
      if _normalise(value) != _normalise(unsupported_defaults[key]):
        problems.append(f"{key}={value!r} (only {unsupported_defaults[key]!r} is supported)")
    else:
      problems.append(f"{key}={value!r} (unknown key)")
  if problems:
    raise ValueError(f"{cls.__name__} config has unsupported settings: " + "; ".join(problems))
  bad_runtime = [k for k in runtime if k not in RUNTIME_FIELDS]
  if bad_runtime:
    raise ValueError(f"{cls.__name__}: unknown runtime options {bad_runtime}; "
                     f"expected some of {RUNTIME_FIELDS[:3]}")
  return cls(**kwargs, **runtime)


def module_to_config(module, extra: Mapping[str, Any] | None = None) -> dict:
  """The config dict of ``module``: its architecture fields plus ``extra`` defaults."""
  config = dict(extra or {})
  for name in architecture_fields(type(module)):
    value = getattr(module, name)
    config[name] = list(value) if isinstance(value, tuple) else value
  return config
