"""The interface every training objective implements (see :mod:`seamless_jax.objectives`).

Shapes and conventions used by all methods:

* ``models``: a :class:`seamless_jax.build.Models` bundle (modules + host params or ``None``).
* ``batch`` in the step: ``image`` (B, R, R, 3) float32 in [−1, 1], ``keep`` (B, R, R, 1)
  float32, 1 on known pixels, ``input_ids`` (B, 77) int32.
* ``grads(params, frozen, batch, rand, key, step) -> (grads, metrics)``: ``rand`` holds the
  objective's random inputs for this (micro-)batch (:meth:`Objective.random_inputs`), ``key``
  a PRNG key for anything else random, ``step`` the int32 step; ``metrics`` float scalars with
  at least ``loss``.
* ``sample(params, frozen, batch, cond_ids, uncond_ids, keys) -> (N, R, R, 3)`` in [−1, 1]:
  what the run's sample grids show, with ``keys`` (N, 2) one PRNG key per image.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

Grads = Callable[..., tuple[Any, dict]]
Sample = Callable[..., jax.Array]


class Objective:
  """One training mode. Subclasses set the class attributes and implement the methods."""

  name: str = ""
  # The sub-folders of a diffusers SD-1.5 folder the mode reads (``config.pretrained``).
  pretrained_parts: tuple[str, ...] = ("unet", "vae", "text_encoder")
  # What ``seamless_jax.export`` writes for a workdir of this mode: 'pipeline' or 'vae'.
  exports: str = "pipeline"
  # The loss terms the step reports besides ``loss`` (logged, written to metrics.jsonl).
  metric_names: tuple[str, ...] = ()

  @property
  def needs_unet(self) -> bool:
    return "unet" in self.pretrained_parts

  def config_problem(self, config, *, shapes_only: bool) -> tuple[str, bool] | None:
    """``(message naming config.<field>, is_a_path_problem)`` for a mode-specific setting
    that cannot work, else ``None``. ``shapes_only``: the config is only compiled."""
    del config, shapes_only
    return None

  def init_params(self, config, models, key) -> tuple[Any, dict]:
    """``(trainable, frozen)`` params: pretrained ones from ``models`` where given, random
    from ``key`` otherwise (traceable; ``frozen`` in float32)."""
    raise NotImplementedError

  def optimizer(self, config, adamw: Callable[[Any], optax.GradientTransformation],
                schedule: optax.Schedule) -> optax.GradientTransformation:
    """The update rule of the trainable params (without clipping): one ``adamw(schedule)``
    by default; objectives with several param groups override it."""
    del config
    return adamw(schedule)

  def random_inputs(self, config, key, batch_size: int, latent_hwc: tuple[int, ...]) -> dict:
    """Random inputs of the global batch drawn outside the loss (so they do not depend on the
    device count): ``{}`` by default."""
    del config, key, batch_size, latent_hwc
    return {}

  def uses_lpips(self, config) -> bool:
    """Whether the step needs LPIPS weights in ``frozen['lpips']``."""
    del config
    return False

  def make_grads(self, config, models, alphas_cumprod, lpips_fn_factory) -> Grads:
    raise NotImplementedError

  def make_sample(self, config, models, alphas_cumprod) -> Sample:
    raise NotImplementedError

  def vae_params(self, params, frozen: dict) -> dict:
    """The complete VAE param tree a run of this objective decodes with."""
    del params
    return frozen["vae"]
