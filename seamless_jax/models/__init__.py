"""Flax linen Stable Diffusion 1.5 models (NHWC, float32 params, diffusers param names)."""

from seamless_jax.models.unet import UNet2DConditionModel
from seamless_jax.models.vae import AutoencoderKL
from seamless_jax.models.text import CLIPTextModel

__all__ = ["UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel"]
