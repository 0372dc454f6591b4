"""Blend-aware VAE fine-tune (paper Eq. 6) with the SD-VAE (LDM kl-f8) loss, 256² crops.

``x̂ = D(E(x)·(1−keep↓) + E(x·keep)·keep↓)`` reconstructs ``x``; loss = NLL(L1 + LPIPS) with a
learned log-variance + 1e-6·KL + 0.5·adaptive hinge PatchGAN from ``vae.disc_start`` (10 000
of 50 000 steps; LDM uses 50 001 when it trains from scratch);
Adam(β1=0.5, β2=0.9), lr 4.5e-6 (LDM's base lr; it scales it by the batch, we do not).
Default: only the decoder (+ post_quant_conv) trains, so the UNet's latent space is unchanged.

Variants (``sd15,v5e`` / ``sd15,v4`` / ``sd15,gpu``: the memory settings per accelerator of
configs/default.py TARGET_SETTINGS):
  sd15  python -m seamless_jax.main --config=configs/vae_finetune.py:sd15 \
          --config.pretrained=/ckpt/stable-diffusion-v1-5 \
          --config.vae.lpips_path=/ckpt/lpips_vgg.safetensors \
          --config.data.path=/data/laion --workdir=runs/vae
  tiny  tiny random VAE, 32² images, no LPIPS (lpips_weight=0), discriminator from step 4.
  demo  python -m seamless_jax.main --config=configs/vae_finetune.py:demo --workdir=runs/vae_demo
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg, target = default.split_arg(arg)
  c = default.get_config()
  c.mode = "vae_finetune"
  c.learning_rate = 4.5e-6
  c.warmup_steps = 0
  c.lr_schedule = "constant"
  c.weight_decay = 0.0
  c.adam_b1 = 0.5
  c.adam_b2 = 0.9
  c.max_grad_norm = 0.0
  c.ema_decay = 0.0  # LDM's VAE recipe has no EMA; 0 keeps an EMA copy equal to the params
  c.batch_size = 16
  c.total_steps = 50_000
  # GAN from step 10 000: LDM's kl-f8 run (from scratch) waits 50 001 steps for good
  # reconstructions before the adversarial term; this fine-tune starts from SD's trained decoder,
  # so 10k reconstruction-only steps (Eq. 6 objective, fresh discriminator idle) then 40k with it.
  c.vae.disc_start = 10_000
  c.data.resolution = 256
  c.data.caption_dropout = 0.0
  if arg == "sd15":
    c.model = "sd15"
    # Paper Sec. 4.1: VAE and denoiser train on the same >= 512 px LAION-Aesthetics set; the VAE
    # sees them resized (shorter side) and cropped to 256² (LDM's SmallestMaxSize + RandomCrop).
    c.data.min_side = 512
    return default.apply_target(c, target)
  default.apply_small_variant(c, arg)
  default.apply_target(c, target)
  c.total_steps = 40 if arg == "demo" else 8
  c.checkpoint_every = 20 if arg == "demo" else 4
  c.sample_every = 40 if arg == "demo" else 0
  c.vae.lpips_weight = 0.0  # no LPIPS weights in tiny runs: L1 + KL (+ GAN) only
  c.vae.disc_start = 4
  return c
