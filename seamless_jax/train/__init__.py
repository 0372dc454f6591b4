"""Training: train state and optimizer, sharding, jit steps, checkpoints, logging, the loop.

Import submodules by full path, e.g. ``from seamless_jax.train import loop``.
"""
