"""Fields shared by every training config (flax examples/imagenet style).

The mode configs (``two_step.py``, ``standard.py``, ``vae_finetune.py``) start from
``get_config()`` here and change what differs. Every field is documented where it is set;
``seamless_jax.train.config_check.validate`` checks the values and names the field at fault.
"""

import ml_collections

from seamless_jax.data.config import get_data_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "two_step"            # 'vae_finetune' | 'two_step' | 'standard'
  # --- models
  c.model = "sd15"               # 'sd15' (pretrained folder) | 'tiny' (random tiny models)
  c.pretrained = ""              # SD-1.5 diffusers folder (unet/ vae/ text_encoder/ tokenizer/)
  c.vae_pretrained = ""          # VAE replacing pretrained's: a VAE/SD folder or a vae_finetune
                                 # workdir (the Eq. 6 decoder: two-step samples/evals decode with it)
  c.dtype = "bfloat16"           # compute dtype: 'bfloat16' | 'float32' (params stay float32)
  c.frozen_dtype = "float32"     # storage of the frozen VAE/text encoder params: 'float32' |
                                 # 'bfloat16' (half the memory; inference/export reload float32)
  c.remat = False                # rematerialise every ResNet/transformer block (memory for compute)
  c.remat_policy = "nothing_saveable"  # what a remat block keeps: 'nothing_saveable' |
                                 # 'dots_with_no_batch_dims_saveable' | 'dots_saveable'
                                 # (models/layers.py REMAT_POLICIES)
  c.attention = ""               # '' (per call: cuDNN flash on GPU / Pallas flash on TPU where
                                 # they apply, XLA elsewhere) | 'xla' | 'cudnn' | 'pallas'
                                 # (seamless_jax/models/attention.py)
  # --- compilation (seamless_jax/runtime/compilation.py)
  c.compilation_cache = True     # persistent XLA cache: a restart loads its programs from disk
  c.compilation_cache_dir = ""   # where; '' = $JAX_COMPILATION_CACHE_DIR if set, else WORKDIR/xla_cache
  c.compilation_cache_min_secs = 1.0  # only programs that took this long to compile are cached
  # --- optimisation
  c.batch_size = 32              # GLOBAL batch (all devices, all hosts)
  c.total_steps = 10_000
  c.learning_rate = 1e-5
  c.warmup_steps = 500
  c.lr_schedule = "cosine"       # 'cosine' (warmup + cosine to end_lr_factor) | 'constant'
  c.end_lr_factor = 0.0
  c.weight_decay = 1e-2
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.grad_accum_steps = 1         # micro-batches per step (lax.scan inside the step)
  c.max_grad_norm = 1.0          # global-norm clipping (0 = off)
  c.ema_decay = 0.9999           # with warm-up: n-th update uses min(decay, (1+n)/(10+n))
  c.max_nonfinite_steps = 5      # stop after this many non-finite steps in a row
  c.seed = 0
  c.stop_at_step = 0             # >0: save and stop after this step (time-limited jobs, tests)
  # --- bookkeeping
  c.log_every = 50
  c.checkpoint_every = 1000
  c.sample_every = 1000          # PNG grid of image / mask / result (0 = off)
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.peak_flops_per_device = 0.0  # for MFU; 0 = look up the device kind (unknown -> no MFU)
  # --- parallelism
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1               # -1: all devices not used by fsdp
  c.mesh.fsdp = 1
  c.parallelism = "jit"          # 'jit' (GSPMD, NamedSharding) | 'shard_map' (explicit DP)
  c.fsdp_min_size = 2 ** 18      # params with fewer elements stay replicated
  # --- data (seamless_jax/data/config.py)
  c.data = get_data_config()
  c.demo_data = False            # create the bundled demo set under workdir when data.path is ''
  # --- diffusion objective
  c.schedule = ml_collections.ConfigDict()
  c.schedule.num_train_timesteps = 1000
  c.schedule.beta_start = 0.00085
  c.schedule.beta_end = 0.012
  c.schedule.beta_schedule = "scaled_linear"
  c.two_step = ml_collections.ConfigDict()
  c.two_step.weight = 0.5        # λ in L1 + λ·L2
  c.two_step.stride = 20         # t' = t − stride (DDIM-50 spacing)
  c.two_step.stop_grad = True    # no gradient through ẑ0 into the second step
  c.two_step.second_t = "prev"   # timestep INPUT of the 2nd call (noise at t' either way):
                                 # 'prev' (t') | 'same' (t, Alg. 1 as printed)
  c.two_step.min_t = 0           # smallest second timestep t'
  c.two_step.scan_calls = True   # the two UNet calls as one lax.scan: one UNet in the program
                                 # (half the compile time and host RAM; same values)
  c.two_step.keep_method = "nearest"  # pixel keep -> latent keep (blending.latent_keep)
  # --- VAE fine-tune (mode='vae_finetune')
  c.vae = ml_collections.ConfigDict()
  c.vae.train_encoder = False    # default: decoder + post_quant_conv only
  c.vae.blend = True             # Eq. 6 blend; False: plain D(E(x)) (keep = 1 everywhere),
                                 # e.g. to train a base VAE from scratch (experiments.ablation)
  c.vae.lpips_path = ""          # converted LPIPS safetensors (tools/convert_lpips.py)
  c.vae.lpips_weight = 1.0       # must be 0 when lpips_path is '' (no random-LPIPS surprise)
  c.vae.kl_weight = 1e-6
  c.vae.disc_weight = 0.5
  c.vae.disc_factor = 1.0
  c.vae.disc_start = 50_001
  c.vae.disc_layers = 3
  c.vae.disc_learning_rate = 4.5e-6
  c.vae.sample_posterior = True
  # --- sample grids
  c.sample = ml_collections.ConfigDict()
  c.sample.num_images = 4
  c.sample.num_inference_steps = 50
  c.sample.guidance_scale = 3.0
  c.sample.prompt = "scenery"    # '' = use each example's own caption
  return c


VARIANTS = ("sd15", "tiny", "demo")

# Memory settings per accelerator for the ``:sd15`` configs, chosen from compiled numbers
# (``python -m seamless_jax.aot``, docs/targets.md): ``--config=configs/two_step.py:sd15,v5e``.
# The global batch stays the paper's / LDM's; only how it is laid out changes. 'diffusion' is
# two_step and standard (512², batch 32), 'vae' is vae_finetune (256², batch 16).
_SHARDED = {"mesh.fsdp": 8, "frozen_dtype": "bfloat16"}
TARGET_SETTINGS = {
    # 8 chips x 16 GiB: params, Adam moments and EMA sharded over all chips, frozen VAE/text
    # encoder in bf16; the two-step step takes its 32 images as 4 micro-batches of 1 per chip.
    "v5e": {"diffusion": dict(_SHARDED, grad_accum_steps=4), "vae": dict(_SHARDED)},
    # v4-8: 4 devices x 32 GiB.
    "v4": {"diffusion": {"mesh.fsdp": 4, "frozen_dtype": "bfloat16", "grad_accum_steps": 4},
           "vae": {"mesh.fsdp": 4, "frozen_dtype": "bfloat16"}},
    # 8 x 80 GB NVIDIA (H100/A100-80G; H200 has room to spare).
    "gpu": {"diffusion": dict(_SHARDED), "vae": dict(_SHARDED)},
}


def split_arg(arg: str | None, default_variant: str = "sd15") -> tuple[str, str]:
  """``'sd15,v5e'`` -> ``('sd15', 'v5e')``; the target part is optional."""
  variant, _, target = (arg or default_variant).partition(",")
  return variant or default_variant, target


def apply_target(c: ml_collections.ConfigDict, target: str) -> ml_collections.ConfigDict:
  """The :data:`TARGET_SETTINGS` of ``target`` ('' = none) on an ``:sd15`` config."""
  if not target:
    return c
  if target not in TARGET_SETTINGS:
    raise ValueError(f"unknown config target {target!r}; expected one of "
                     f"{sorted(TARGET_SETTINGS)} (e.g. configs/two_step.py:sd15,v5e)")
  if c.model != "sd15":
    raise ValueError(f"the target settings ',{target}' are for the ':sd15' variant")
  group = "vae" if c.mode == "vae_finetune" else "diffusion"
  for dotted, value in TARGET_SETTINGS[target][group].items():
    node = c
    *parents, leaf = dotted.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


def apply_small_variant(c: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
  """Settings shared by every mode's ``:tiny`` and ``:demo`` variants: tiny random models,
  float32, 32² images read in-process (CPU-fast); ``:demo`` also writes the bundled photos."""
  if arg not in VARIANTS:
    raise ValueError(f"unknown config variant {arg!r}; expected one of {VARIANTS}")
  c.model = "tiny"
  c.dtype = "float32"
  c.batch_size = 8
  c.learning_rate = 1e-3
  c.log_every = 10 if arg == "demo" else 2
  c.async_checkpointing = arg == "demo"
  c.fsdp_min_size = 1024
  c.data.resolution = 32
  c.data.min_side = 32
  c.data.worker_count = 0
  c.data.read_threads = 2
  c.data.prefetch_buffer_size = 16
  c.demo_data = arg == "demo"
  # The two UNet calls unrolled: on a CPU, XLA runs the scan's while loop ~8x slower per step
  # (2.7 s vs 0.35 s for the tiny two-step step on 2 cores) and compiles it no faster; the
  # scan is for accelerators, where it halves compile time and host RAM (same values).
  c.two_step.scan_calls = False
  return c
