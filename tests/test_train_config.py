"""Configs load in every variant and bad values fail naming the field."""

import pytest

from configs import default, standard, two_step, vae_finetune
from seamless_jax import objectives
from seamless_jax.train import config_check
from seamless_jax import build as models_lib


@pytest.mark.parametrize("module", [two_step, standard, vae_finetune])
@pytest.mark.parametrize("variant", ["sd15", "tiny", "demo"])
def test_variants_load(module, variant):
  c = module.get_config(variant)
  assert c.mode in objectives.MODES
  for field in ("pretrained", "batch_size", "total_steps", "learning_rate", "warmup_steps",
                "grad_accum_steps", "max_grad_norm", "ema_decay", "seed", "log_every",
                "checkpoint_every", "sample_every", "keep_checkpoints", "dtype", "remat",
                "attention", "parallelism"):
    assert field in c
  assert set(c.mesh) == {"data", "fsdp"}


@pytest.mark.parametrize("module", [two_step, standard, vae_finetune])
@pytest.mark.parametrize("target", sorted(default.TARGET_SETTINGS))
def test_target_settings_change_only_the_memory_layout(module, target):
  """``:sd15,TARGET`` = ``:sd15`` + the target's memory settings; the batch and recipe stay."""
  base, tuned = module.get_config("sd15"), module.get_config(f"sd15,{target}")
  group = "vae" if tuned.mode == "vae_finetune" else "diffusion"
  changed = set(default.TARGET_SETTINGS[target][group])
  flat = lambda c: {f"{k}.{kk}" if isinstance(v, dict) else k: (vv if isinstance(v, dict) else v)
                    for k, v in c.to_dict().items()
                    for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}
  diff = {k for k in flat(base) if flat(base)[k] != flat(tuned)[k]}
  assert diff <= changed and diff, (diff, changed)
  assert tuned.batch_size == base.batch_size
  config_check.validate(tuned, num_devices=8, shapes_only=True)


def test_unknown_or_misplaced_target_settings_are_refused():
  with pytest.raises(ValueError, match="unknown config target 'v9'"):
    two_step.get_config("sd15,v9")
  with pytest.raises(ValueError, match="for the ':sd15' variant"):
    vae_finetune.get_config("tiny,v5e")


def test_paper_settings():
  c = two_step.get_config("sd15")
  assert (c.two_step.weight, c.two_step.stride, c.learning_rate, c.data.resolution,
          c.data.caption_dropout) == (0.5, 20, 1e-5, 512, 0.1)
  assert standard.get_config("sd15").mode == "standard"
  v = vae_finetune.get_config("sd15")
  assert (v.data.resolution, v.vae.train_encoder, v.adam_b1, v.adam_b2) == (256, False, 0.5, 0.9)


def test_sd15_data_and_gan_schedule_follow_the_paper():
  """Sec. 4.1: LAION-Aesthetics images of at least 512x512 for both the denoiser and the VAE
  (the VAE resizes/crops them to 256²); outpaint masks keep only the centre (border on all four
  sides); the VAE's GAN switches on inside the run (LDM's 50 001 would be past its end)."""
  for module in (two_step, standard):
    c = module.get_config("sd15")
    assert c.data.min_side == c.data.resolution == 512
    assert tuple(c.data.masks.outpaint_sides) == (4, 4)
  v = vae_finetune.get_config("sd15")
  assert (v.data.min_side, v.data.resolution) == (512, 256)
  assert tuple(v.data.masks.outpaint_sides) == (4, 4)
  assert 0 < v.vae.disc_start <= v.total_steps // 2 and v.vae.disc_factor > 0
  for module in (two_step, standard, vae_finetune):  # small variants read 32² images
    for variant in ("tiny", "demo"):
      c = module.get_config(variant)
      assert c.data.min_side == c.data.resolution == 32
      if c.mode == "vae_finetune":
        assert c.vae.disc_start < c.total_steps


def test_remat_switch_and_policy_reach_the_modules():
  c = two_step.get_config("tiny")
  assert models_lib.runtime_options(c)["remat"] is False
  c.remat, c.remat_policy = True, "dots_saveable"
  assert models_lib.runtime_options(c)["remat"] == "dots_saveable"
  models = models_lib.build_models(c, vocab_size=100)
  assert models.vae.remat == models.text.remat == models.unet.remat == "dots_saveable"


def test_unknown_variant():
  with pytest.raises(ValueError, match="unknown config variant 'small'"):
    two_step.get_config("small")


@pytest.mark.parametrize("field,value,message", [
    ("mode", "twostep", "config.mode='twostep'"),
    ("parallelism", "pmap", "config.parallelism='pmap'"),
    ("dtype", "bf16", "config.dtype='bf16'"),
    ("remat_policy", "dots", "config.remat_policy='dots'"),
    ("batch_size", 0, "config.batch_size must be > 0"),
])
def test_bad_values_name_the_field(field, value, message):
  c = two_step.get_config("tiny")
  c.data.path = "/data"
  c[field] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    config_check.validate(c)


@pytest.mark.parametrize("second_t", ["prev", "same"])
def test_stride_must_leave_a_timestep_for_both_second_t_options(second_t):
  c = two_step.get_config("tiny")
  c.data.path = "/data"
  c.two_step.second_t = second_t
  c.two_step.stride, c.two_step.min_t = 990, 10
  with pytest.raises(ValueError, match="stride \\+ config.two_step.min_t = 1000 leaves no"):
    config_check.validate(c)


def test_missing_pretrained_folder(tmp_path):
  c = two_step.get_config("sd15")
  c.data.path = "/data"
  with pytest.raises(ValueError, match="config.pretrained must name"):
    config_check.validate(c)
  c.pretrained = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="config.pretrained="):
    config_check.validate(c)


def test_lpips_weight_needs_weights():
  c = vae_finetune.get_config("tiny")
  c.data.path = "/data"
  c.vae.lpips_weight = 1.0
  with pytest.raises(ValueError, match="config.vae.lpips_weight > 0 needs"):
    config_check.validate(c)


def test_batch_must_divide_devices():
  c = two_step.get_config("tiny")
  c.data.path = "/data"
  c.batch_size = 6
  with pytest.raises(ValueError, match="not divisible by the 4 devices"):
    config_check.validate(c, num_devices=4)
