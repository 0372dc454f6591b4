"""EMA with LDM's warm-up, ``min(decay, (1 + n)/(10 + n))``, against a NumPy loop."""

import jax.numpy as jnp
import numpy as np
import pytest

from seamless_jax.train import state as state_lib


def np_ema(start, updates, decay):
  """NumPy float64 EMA over a list of param values; n = 1 for the first update."""
  ema = np.asarray(start, np.float64)
  for n, p in enumerate(updates, start=1):
    d = min(decay, (1 + n) / (10 + n))
    ema = d * ema + (1 - d) * np.asarray(p, np.float64)
  return ema


@pytest.mark.parametrize("decay", [0.9999, 0.5, 0.0])
def test_ema_update_matches_numpy(decay):
  rng = np.random.default_rng(0)
  start = rng.standard_normal((3, 4)).astype(np.float32)
  updates = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(12)]
  ema = {"w": jnp.asarray(start)}
  for n, p in enumerate(updates, start=1):
    ema = state_lib.ema_update(ema, {"w": jnp.asarray(p)}, decay, jnp.int32(n))
  np.testing.assert_allclose(ema["w"], np_ema(start, updates, decay), rtol=1e-5, atol=1e-6)
  if decay == 0.0:
    np.testing.assert_array_equal(ema["w"], updates[-1])  # vae_finetune: EMA == params


def test_warmup_values_and_what_it_fixes():
  d = lambda n, decay=0.9999: float(state_lib.ema_decay_at(decay, n))
  assert d(1) == pytest.approx(2 / 11) and d(80) == pytest.approx(0.9)
  assert d(100_000) == pytest.approx(0.9999, abs=1e-7) and d(9, 0.5) == 0.5
  # Share of the starting weights left after 10k updates: 0.9999^10000 ≈ 37 % without the
  # warm-up; the product of the warmed-up decays is negligible.
  n = np.arange(1, 10_001)
  assert 0.9999 ** 10_000 == pytest.approx(0.368, abs=1e-3)
  assert np.prod(np.minimum(0.9999, (1 + n) / (10 + n))) < 1e-20
