"""Sizes and schedules of the ablation at each scale, and the training configs they give.

A :class:`Scale` says how big the models are, how long each stage trains and how the evaluation
samples. ``smoke`` (CI, 1-2 minutes), ``small`` (64 px; 2-core CPU, about 15 minutes when
idle) and ``medium`` (128 px, 16x16 latents; 62 minutes on 2 CPU cores) train a base
VAE and a base UNet from scratch on the bundled demo photos; ``sd15`` starts from a
pretrained SD-1.5 diffusers folder with the paper's settings (``configs/*.py:sd15``).

How ``medium`` was sized (``python -m seamless_jax.experiments.ablation --scale medium
--workdir runs/ablation_medium``, not run to the end): every stage was run for 16 steps
(``--steps 6``, then resumed with ``--steps 16``) on a 2-core Xeon shared with a test suite
(load average about 3), and the mean step time of steps 11-16 taken from each run's
``metrics.jsonl``: base VAE 1.54 s (batch 8), base UNet 1.72 s (batch 16), Eq. 6 decoder
1.91 s, plain decoder 1.77 s, two-step UNet 2.12 s, standard UNet 1.45 s. Training:
900 x 1.54 + 900 x 1.72 + 250 x (1.91 + 1.77 + 2.12 + 1.45) = 4750 s. Fixed costs, from the
same runs and the evaluation with one held-out image (6 BLD samples per UNet: 1.6-2.0 s per
50-step sample), scaled to 12 images: initialisation and data 35 s, compilation and set-up
about 40 s per training stage, the sample grids every 125 fine-tune steps about 200 s, the
evaluation (144 BLD samples, 120 VAE-only cases x 4 decodings, the fixes) about 350 s, the
report 20 s: about 800 s. Total about 5550 s = 92 minutes (less on an idle machine). The full
run took 61.9 min (a 2-core Xeon, partly shared with a test suite at nice 19;
``docs/results_medium.md``).

The training configs are the repository's mode configs (``configs/vae_finetune.py``,
``configs/two_step.py``, ``configs/standard.py``) loaded by path
(:func:`seamless_jax.config_files.load`, as ``--config=`` does), with the scale's fields set on
top (:func:`stage_config`).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from seamless_jax import config_files
from seamless_jax.models import presets

# The models trained from scratch at the small scales: the SD-1.5 layout (an f8 VAE with four
# levels, a UNet with cross-attention) at a width a 2-core CPU trains in minutes.
SMALL_VAE = {
    **presets.SD15_VAE,
    "block_out_channels": [16, 32, 64, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
SMALL_UNET = {
    **presets.SD15_UNET,
    "sample_size": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [64, 128, 128],
    "layers_per_block": 1,
    "attention_head_dim": 4,
    "cross_attention_dim": 32,
    "norm_num_groups": 16,
}
# The medium scale (128 px, 16x16 latents): wider deep levels than small (they run at 32² and
# 16², cheap on a CPU), the two full-resolution levels as small (they dominate the time).
MEDIUM_VAE = {**SMALL_VAE, "block_out_channels": [16, 32, 96, 128], "sample_size": 128}
MEDIUM_UNET = {**SMALL_UNET, "sample_size": 16, "block_out_channels": [64, 128, 192],
               "attention_head_dim": 8}
SMOKE_VAE = {**SMALL_VAE, "block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4,
             "sample_size": 32}
# The smoke UNet has one level (cross-attention, no down/upsampling): the smoke run checks the
# stages and the report, the UNet's levels are checked by its parity tests; one level halves
# the compile time of the three UNet stages.
SMOKE_UNET = {**presets.TINY_UNET, "sample_size": 4, "down_block_types": ["CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D"], "block_out_channels": [32]}

# Held-out photos of the demo set (all four variants of each): never trained on.
EVAL_PHOTOS = ("coffee", "rocket", "chelsea")


@dataclasses.dataclass(frozen=True)
class Scale:
  """One scale of the ablation.

  from_scratch: train the base VAE + base UNet (else the base is ``--pretrained``).
  resolution: training and evaluation image side (px).
  vae_config / unet_config: diffusers configs of the from-scratch models.
  base_vae_steps, base_unet_steps: base training (from scratch only).
  finetune_steps: Eq. 6 VAE, plain VAE fine-tune (the decoder's control: same steps, batch,
    learning rate, data and seed as Eq. 6), two-step UNet and standard UNet, each from the base
    (same steps and batch for the UNet pair).
  eval_images: held-out images evaluated (at most); eval_seeds: one BLD sample per seed, mask
    and image; num_inference_steps / guidance_scale: BLD sampling (the paper: 50, 3).
  vae_eval_seeds: mask seeds of the VAE-only measurement (Eq. 6 blend decoded by each decoder).
  tiles_per_image: extra random crops of each training photo variant (small scales).
  """
  name: str
  from_scratch: bool
  resolution: int
  vae_config: dict | None = None
  unet_config: dict | None = None
  base_vae_steps: int = 0
  base_vae_batch: int = 8
  base_vae_lr: float = 1e-3
  base_unet_steps: int = 0
  base_unet_batch: int = 16
  base_unet_lr: float = 1e-3
  finetune_steps: int = 0
  vae_batch: int = 8
  vae_lr: float = 1e-4
  unet_batch: int = 16
  unet_lr: float = 1e-4
  log_every: int = 10
  sample_every: int = 0
  eval_images: int = 12
  eval_seeds: tuple[int, ...] = (0, 1, 2)
  num_inference_steps: int = 50
  guidance_scale: float = 3.0
  vae_eval_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  dtype: str = "float32"
  tiles_per_image: int = 0


SMALL = Scale(
    name="small", from_scratch=True, resolution=64, vae_config=SMALL_VAE,
    unet_config=SMALL_UNET, base_vae_steps=500, base_vae_batch=8, base_vae_lr=1e-3,
    base_unet_steps=700, base_unet_batch=16, base_unet_lr=5e-4, finetune_steps=250,
    vae_batch=8, vae_lr=1e-4, unet_batch=16, unet_lr=1e-4, log_every=10, sample_every=125,
    eval_images=12, eval_seeds=(0, 1, 2), num_inference_steps=50, tiles_per_image=10)
SCALES = {
    "smoke": Scale(
        name="smoke", from_scratch=True, resolution=32, vae_config=SMOKE_VAE,
        unet_config=SMOKE_UNET, base_vae_steps=4, base_vae_batch=4, base_unet_steps=4,
        base_unet_batch=4, finetune_steps=3, vae_batch=4, unet_batch=4, log_every=1,
        eval_images=2, eval_seeds=(0,), num_inference_steps=4, vae_eval_seeds=(0, 1),
        tiles_per_image=1),
    "small": SMALL,
    # small's schedule and evaluation at 128 px, longer base training, more crops per photo
    "medium": dataclasses.replace(
        SMALL, name="medium", resolution=128, vae_config=MEDIUM_VAE, unet_config=MEDIUM_UNET,
        base_vae_steps=900, base_unet_steps=900, tiles_per_image=24),
    "sd15": Scale(
        name="sd15", from_scratch=False, resolution=512, finetune_steps=10_000, vae_batch=16,
        vae_lr=4.5e-6, unet_batch=32, unet_lr=1e-5, log_every=50, sample_every=1000,
        eval_images=600, eval_seeds=(0, 1, 2), num_inference_steps=50, dtype="bfloat16"),
}


def get_scale(name: str, **overrides) -> Scale:
  """The named scale with ``overrides`` (field=value, ``None`` values ignored)."""
  if name not in SCALES:
    raise ValueError(f"--scale={name!r}: expected one of {sorted(SCALES)}")
  return dataclasses.replace(SCALES[name],
                             **{k: v for k, v in overrides.items() if v is not None})


# ============================================================================ configs

# Stage name -> training mode (the config file it starts from).
STAGE_MODES = {"base_vae": "vae_finetune", "base_unet": "standard", "eq6_vae": "vae_finetune",
               "plain_vae": "vae_finetune", "two_step": "two_step", "standard": "standard"}
VAE_STAGES = ("base_vae", "eq6_vae", "plain_vae")
# The compared fine-tunes (from the base): sample grids and in-training seam CD.
FINETUNE_STAGES = ("eq6_vae", "plain_vae", "two_step", "standard")


def stage_config(scale: Scale, stage: str, *, pretrained: str, train_data: str,
                 tokenizer_dir: str, configs_dir: str | None = None, vae_pretrained: str = "",
                 lpips_path: str = "", seed: int = 0,
                 data_source: str = "folder") -> ml_collections.ConfigDict:
  """The training config of ``stage`` (a key of :data:`STAGE_MODES`) at ``scale``.

  ``pretrained``: the diffusers folder the stage starts from (the random init for the base
  stages, the base model for the fine-tunes, SD-1.5 at ``sd15``); ``vae_pretrained``: the VAE
  the base UNet trains on. Small scales start from the ``:tiny`` variant (CPU settings) with the
  scale's models, steps and learning rates; ``sd15`` keeps the paper's ``:sd15`` settings.
  ``configs_dir``: the folder of the mode configs (default: the checkout's ``configs/``).
  """
  variant = "sd15" if scale.name == "sd15" else "tiny"
  c = config_files.load(STAGE_MODES[stage], variant, folder=configs_dir)
  c.model = "sd15"  # = load every part from the diffusers folder ``pretrained``
  c.pretrained = pretrained
  c.vae_pretrained = vae_pretrained
  c.seed = seed
  c.dtype = scale.dtype
  c.data.source = data_source
  c.data.path = train_data
  c.data.tokenizer_dir = tokenizer_dir
  c.data.resolution = scale.resolution
  c.data.min_side = min(int(c.data.min_side), scale.resolution)
  c.log_every = scale.log_every
  steps, batch, lr = {
      "base_vae": (scale.base_vae_steps, scale.base_vae_batch, scale.base_vae_lr),
      "base_unet": (scale.base_unet_steps, scale.base_unet_batch, scale.base_unet_lr),
      "eq6_vae": (scale.finetune_steps, scale.vae_batch, scale.vae_lr),
      "plain_vae": (scale.finetune_steps, scale.vae_batch, scale.vae_lr),
      "two_step": (scale.finetune_steps, scale.unet_batch, scale.unet_lr),
      "standard": (scale.finetune_steps, scale.unet_batch, scale.unet_lr),
  }[stage]
  c.total_steps, c.batch_size, c.learning_rate = steps, batch, lr
  if scale.from_scratch:  # minutes-long runs: one checkpoint at the end
    c.checkpoint_every = steps
    c.keep_checkpoints = 1
  # sample grids (+ in-training seam CD where the loop logs it) for the compared fine-tunes
  c.sample_every = scale.sample_every if stage in FINETUNE_STAGES else 0
  if scale.from_scratch:  # the default 8 px margin around salient pixels is large at 64 px
    c.data.masks.saliency_margin = max(2, scale.resolution // 32)
  if stage in VAE_STAGES:
    _set_vae_stage(c, scale, stage, lpips_path)
  if scale.from_scratch:
    _set_from_scratch(c, scale, stage)
  return c


def _set_vae_stage(c: ml_collections.ConfigDict, scale: Scale, stage: str,
                   lpips_path: str) -> None:
  """The VAE stages' losses (LPIPS, PatchGAN) and what they train."""
  c.vae.lpips_path = lpips_path
  if lpips_path:
    c.vae.lpips_weight = 1.0
  elif scale.name == "sd15":
    raise ValueError("--lpips is required at --scale=sd15 (the SD-VAE recipe's LPIPS term)")
  if scale.from_scratch:
    c.vae.disc_factor = 0.0  # no PatchGAN at the small scales (L1 + KL only)
    c.vae.disc_start = int(c.total_steps) + 1
  if stage == "base_vae":
    c.vae.train_encoder = True  # from scratch: encoder and decoder
    c.vae.blend = False         # plain reconstruction D(E(x)): the base VAE knows no blending
    c.warmup_steps = min(50, int(c.total_steps) // 10)
  elif stage == "plain_vae":  # the control of eq6_vae: ordinary reconstructions, all else equal
    c.vae.blend = False


def _set_from_scratch(c: ml_collections.ConfigDict, scale: Scale, stage: str) -> None:
  """Short CPU runs: EMA for the UNets only, short warm-up, a cosine base UNet, quick samples."""
  steps = int(c.total_steps)
  c.ema_decay = 0.0 if stage in VAE_STAGES else 0.99
  c.warmup_steps = min(int(c.warmup_steps), max(steps // 10, 1))
  if stage == "base_unet":
    c.lr_schedule = "cosine"
    c.end_lr_factor = 0.1
  c.sample.num_inference_steps = min(scale.num_inference_steps, 20)
  c.sample.num_images = 4
