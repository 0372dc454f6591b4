"""Session fixtures: tiny trained workdirs shared by the loading, inference and export tests.

``tiny_workdirs`` trains once per test session (tiny random models, 32² demo photos, CPU):
a ``vae_finetune`` run (Eq. 6 decoder) and a ``two_step`` run, each saving steps 1 and 2 and
sampling a 2-image grid at step 2.
"""

import os

# Before JAX loads: the CPU is the backend of every test (with the [aot] extra installed, the
# CUDA plugin then registers without a driver, so tests can compile for GPU targets).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=wrong-import-position

from seamless_jax.train import loop  # pylint: disable=wrong-import-position
import tiny  # pylint: disable=wrong-import-position


def _train(mode: str, data_dir: str, workdir: str) -> str:
  """A tiny 2-step run saving steps 1 and 2, with a 2-image sample grid at step 2."""
  config = tiny.tiny_config(mode, data_dir, total_steps=2, checkpoint_every=1, log_every=1,
                               sample_every=2)
  config.sample.num_images, config.sample.num_inference_steps = 2, 2
  config.sample.prompt = "a photo"
  loop.train(config, workdir)
  return workdir


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
  return tiny.write_tiny_data(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="session")
def tiny_workdirs(tiny_data, tmp_path_factory):
  """``{'data', 'vae_finetune', 'two_step'}``: folders of two tiny 2-step training runs."""
  root = tmp_path_factory.mktemp("workdirs")
  return {"data": tiny_data,
          "vae_finetune": _train("vae_finetune", tiny_data, os.path.join(root, "vae")),
          "two_step": _train("two_step", tiny_data, os.path.join(root, "two_step"))}
