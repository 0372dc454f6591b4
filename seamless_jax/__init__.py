"""seamless_jax: "Towards Seamless Borders" (blend-aware VAE + two-step training) in JAX/Flax."""

__version__ = "0.1.0"
