"""Experiments that reproduce the paper's results (``python -m seamless_jax.experiments.ablation``)."""
