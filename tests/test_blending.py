"""Latent blending and mask resizing."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from seamless_jax.diffusion.blending import blend, latent_keep


def test_blend_takes_known_where_keep():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  z = jax.random.normal(k1, (2, 4, 4, 4))
  zk = jax.random.normal(k2, (2, 4, 4, 4))
  keep = (jax.random.uniform(k1, (2, 4, 4, 1)) > 0.5).astype(jnp.float32)
  out = blend(z, zk, keep)
  np.testing.assert_array_equal(np.where(keep > 0, zk, z), out)
  np.testing.assert_array_equal(blend(z, zk, jnp.ones_like(keep)), zk)
  np.testing.assert_array_equal(blend(z, zk, jnp.zeros_like(keep)), z)


def _pixel_mask():
  rng = np.random.default_rng(0)
  return (rng.uniform(size=(2, 32, 48, 1)) > 0.5).astype(np.float32)


def test_latent_keep_nearest_takes_centre_pixel():
  keep = _pixel_mask()
  out = np.asarray(latent_keep(jnp.asarray(keep), (4, 6)))
  assert out.shape == (2, 4, 6, 1)
  np.testing.assert_array_equal(out, keep[:, 4::8, 4::8])


def test_latent_keep_nearest_corner_matches_torch_interpolate():
  torch = pytest.importorskip("torch")
  keep = _pixel_mask()
  ref = torch.nn.functional.interpolate(torch.from_numpy(keep.transpose(0, 3, 1, 2)),
                                        size=(4, 6), mode="nearest").numpy()
  out = np.asarray(latent_keep(jnp.asarray(keep), (4, 6), "nearest_corner"))
  np.testing.assert_array_equal(out, ref.transpose(0, 2, 3, 1))


def test_latent_keep_reductions():
  keep = _pixel_mask()
  blocks = keep.reshape(2, 4, 8, 6, 8, 1)
  for method, fn in [("area", np.mean), ("min", np.min), ("max", np.max)]:
    out = np.asarray(latent_keep(jnp.asarray(keep), (4, 6), method))
    np.testing.assert_allclose(out, fn(blocks, axis=(2, 4)), atol=1e-7)
  with pytest.raises(ValueError):
    latent_keep(jnp.asarray(keep), (5, 6), "area")
  with pytest.raises(ValueError):
    latent_keep(jnp.asarray(keep), (4, 6), "bilinear")


def test_latent_keep_nearest_non_integer_factor():
  keep = jnp.asarray(_pixel_mask())
  out = latent_keep(keep, (5, 7))
  assert out.shape == (2, 5, 7, 1)
  assert set(np.unique(np.asarray(out))) <= {0.0, 1.0}
