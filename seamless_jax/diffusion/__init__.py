"""Diffusion core: noise schedule, DDIM, latent blending, training losses, BLD sampler.

Pure functions over arrays; models enter as injected callables (see each module).
Import submodules by full path, e.g. ``from seamless_jax.diffusion import losses``.
"""
