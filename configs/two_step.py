"""Two-step training (paper Alg. 1): v-prediction, λ = 0.5, stride 20, 512², AdamW 1e-5, EMA.

Variants (``--config=configs/two_step.py:VARIANT``):
  sd15  real SD-1.5 weights, ``--config.pretrained=DIR`` (diffusers folder), LAION-style data;
        ``sd15,v5e`` / ``sd15,v4`` / ``sd15,gpu`` add the memory settings that fit a v5e-8, a
        v4-8 or 8 x 80 GB GPUs (configs/default.py TARGET_SETTINGS; check any target first with
        ``python -m seamless_jax.aot --config=configs/two_step.py:sd15,v5e --topology=v5e-8``):
          python -m seamless_jax.main --config=configs/two_step.py:sd15 \
            --config.pretrained=/ckpt/stable-diffusion-v1-5 \
            --config.data.source=arrayrecord --config.data.path='/data/laion/*.arrayrecord' \
            --workdir=runs/two_step
  tiny  tiny random models, 32² images from ``--config.data.path`` (CPU-fast; tests).
  demo  tiny models on the bundled demo photos (created under the workdir when missing):
          python -m seamless_jax.main --config=configs/two_step.py:demo --workdir=runs/demo
"""

import ml_collections

from configs import default


def apply_variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Shared by two_step.py and standard.py: the ``sd15`` / ``tiny`` / ``demo`` variants, and
  ``sd15,TARGET`` (``default.TARGET_SETTINGS``)."""
  arg, target = default.split_arg(arg)
  if arg == "sd15":
    c.model = "sd15"
    c.data.resolution = 512
    c.data.min_side = 512  # the paper's LAION-Aesthetics filter: images of at least 512x512
    return default.apply_target(c, target)
  default.apply_small_variant(c, arg)
  default.apply_target(c, target)
  c.total_steps = 60 if arg == "demo" else 10
  c.warmup_steps = 5
  c.lr_schedule = "constant"
  c.weight_decay = 0.0
  c.ema_decay = 0.99
  c.checkpoint_every = 30 if arg == "demo" else 5
  c.sample_every = 60 if arg == "demo" else 0
  c.sample.num_images = 4
  c.sample.num_inference_steps = 10
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config()
  c.mode = "two_step"
  return apply_variant(c, arg)
