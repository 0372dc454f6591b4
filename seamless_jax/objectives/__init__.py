"""Training objectives, one per ``config.mode``: what a mode trains and how.

:func:`for_config` is the one place that reads ``config.mode``. Each
:class:`~seamless_jax.objectives.base.Objective` owns, for its mode: the trainable / frozen
param split, the optimizer groups, the random inputs and gradients of the train step, the
metric names it logs, its in-training samples, and what an export of its workdir writes.
Training, loading and export ask the objective; none of them tests the mode's name.

================  =====================================  ==============================
mode              trains                                 exports
================  =====================================  ==============================
``two_step``      the UNet, paper Alg. 1 (two-step loss)  a diffusers pipeline folder
``standard``      the UNet, the usual v-prediction loss   a diffusers pipeline folder
``vae_finetune``  the VAE decoder on Eq. 6 blends (+ GAN) a diffusers VAE folder
================  =====================================  ==============================
"""

from __future__ import annotations

from seamless_jax.objectives.base import Objective
from seamless_jax.objectives.diffusion import Standard, TwoStep
from seamless_jax.objectives.vae_finetune import VaeFinetune

__all__ = ["Objective", "TwoStep", "Standard", "VaeFinetune", "OBJECTIVES", "MODES", "for_config"]

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (TwoStep(), Standard(), VaeFinetune())}
MODES = tuple(OBJECTIVES)


def for_config(config) -> Objective:
  """The objective of ``config.mode`` (``ValueError`` naming the field for an unknown one)."""
  mode = config.mode
  if mode not in OBJECTIVES:
    raise ValueError(f"config.mode={mode!r} is not one of {list(MODES)}")
  return OBJECTIVES[mode]
