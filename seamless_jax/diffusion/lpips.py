"""LPIPS as a plain function for the VAE loss: ``lpips_fn(x, y) -> (B,)``.

Thin glue over :mod:`seamless_jax.models.lpips` so losses receive an injected function and the
LPIPS weights stay frozen (gradients flow to the inputs only).
"""

from __future__ import annotations

import jax

from seamless_jax.models import lpips as lpips_model


def make_lpips_fn(module, variables):
  """Returns ``lpips_fn(x, y) -> (B,)`` (x, y (B, H, W, 3) in [−1, 1]) with frozen weights."""
  frozen = jax.lax.stop_gradient(variables)

  def lpips_fn(x, y):
    return module.apply(frozen, x, y)

  return lpips_fn


def load_lpips_fn(path: str, **kwargs):
  """``make_lpips_fn(*load_lpips(path))`` — weights from a converted safetensors file."""
  return make_lpips_fn(*lpips_model.load_lpips(path, **kwargs))
