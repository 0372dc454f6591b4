"""Standard v-prediction fine-tune: two_step.py without the second step (the ablation baseline).

Same variants as two_step.py (``sd15``, ``tiny``, ``demo``):
  python -m seamless_jax.main --config=configs/standard.py:sd15 \
    --config.pretrained=/ckpt/stable-diffusion-v1-5 --config.data.path=/data/laion \
    --workdir=runs/standard
  python -m seamless_jax.main --config=configs/standard.py:demo --workdir=runs/demo_standard
"""

import ml_collections

from configs import default
from configs import two_step


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config()
  c.mode = "standard"
  return two_step.apply_variant(c, arg)
