"""Assertions shared by the model/conversion tests."""

import jax
import numpy as np


def assert_same_params(params, params2):
  """Same tree paths in the same order and bitwise-equal leaves."""
  flat, flat2 = (jax.tree_util.tree_leaves_with_path(p) for p in (params, params2))
  assert [k for k, _ in flat] == [k for k, _ in flat2]
  for (key, a), (_, b) in zip(flat, flat2):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(key))
