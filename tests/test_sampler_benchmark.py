"""benchmarks/sampler.py: the JAX BLD sampler equals the same loop on diffusers' DDIMScheduler."""

import importlib.util
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from seamless_jax.models import presets  # noqa: E402

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "sampler.py")
_spec = importlib.util.spec_from_file_location("sampler_benchmark", _SCRIPT)
sampler_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sampler_benchmark)


@pytest.mark.slow
def test_jax_and_diffusers_bld_agree_on_the_same_noise():
  steps = 4  # v-prediction (the paper's objective); epsilon differs only inside DDIM (test_sampler)
  models = sampler_benchmark.build(presets.TINY_UNET, "v_prediction", steps, "cpu")
  row = sampler_benchmark.compare(*models, batch=2, latent=8,
                                  context_dim=presets.TINY_UNET["cross_attention_dim"],
                                  steps=steps, guidance=3.0, repeats=1)
  assert row["output_scale"] > 0.1
  assert row["max_abs_diff"] < 1e-4 * max(1.0, row["output_scale"])
  assert row["jax_s"] > 0 and row["torch_s"] > 0
