"""The ablation driver (seamless_jax.experiments): stage configs at every scale, evaluation masks,
and (slow) the whole smoke run writing the report and its figures."""

import json
import os

import numpy as np
import pytest

from seamless_jax.diffusion import blending
from seamless_jax.experiments import ablation, evaluate, report, scales

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _config(scale_name: str, stage: str, **kwargs):
  defaults = dict(configs_dir=CONFIGS, pretrained="/ckpt/sd15", train_data="/data/laion",
                  tokenizer_dir="/ckpt/sd15/tokenizer")
  defaults.update(kwargs)
  return scales.stage_config(scales.get_scale(scale_name), stage, **defaults)


def test_sd15_stage_configs_keep_the_paper_settings():
  vae = _config("sd15", "eq6_vae", lpips_path="/ckpt/lpips.safetensors",
                data_source="arrayrecord")
  assert vae.data.source == "arrayrecord"
  assert vae.mode == "vae_finetune" and vae.model == "sd15"
  assert vae.pretrained == "/ckpt/sd15" and vae.data.path == "/data/laion"
  assert not vae.vae.train_encoder and vae.vae.blend        # Eq. 6, decoder only
  assert vae.vae.lpips_weight == 1.0 and vae.vae.lpips_path == "/ckpt/lpips.safetensors"
  assert (vae.adam_b1, vae.adam_b2, vae.learning_rate) == (0.5, 0.9, 4.5e-6)  # LDM's recipe
  assert vae.vae.disc_factor == 1.0                          # PatchGAN kept at SD-1.5 scale
  assert vae.data.resolution == 512 and vae.dtype == "bfloat16"
  two_step = _config("sd15", "two_step")
  standard = _config("sd15", "standard")
  assert (two_step.mode, standard.mode) == ("two_step", "standard")
  assert two_step.two_step.weight == 0.5 and two_step.two_step.stride == 20
  for field in ("total_steps", "batch_size", "learning_rate", "pretrained", "seed"):
    assert two_step[field] == standard[field], field       # the fair comparison
  assert (two_step.batch_size, two_step.learning_rate) == (32, 1e-5)
  assert two_step.sample.num_inference_steps == 50 and two_step.sample.guidance_scale == 3.0


def test_sd15_vae_stage_needs_lpips():
  with pytest.raises(ValueError, match="--lpips"):
    _config("sd15", "eq6_vae")


def test_small_base_vae_is_plain_reconstruction_from_scratch():
  base = _config("small", "base_vae", pretrained="/w/init")
  assert base.mode == "vae_finetune" and base.vae.train_encoder and not base.vae.blend
  assert base.vae.disc_factor == 0.0 and base.vae.lpips_weight == 0.0
  eq6 = _config("small", "eq6_vae", pretrained="/w/base")
  assert not eq6.vae.train_encoder and eq6.vae.blend and eq6.pretrained == "/w/base"
  unet = _config("small", "base_unet", pretrained="/w/init", vae_pretrained="/w/base_vae")
  assert unet.mode == "standard" and unet.vae_pretrained == "/w/base_vae"
  assert unet.data.resolution == scales.SCALES["small"].resolution


def test_sd15_run_names_missing_inputs(tmp_path):
  args = ablation.parse_args(["--scale", "sd15", "--workdir", str(tmp_path)])
  with pytest.raises(ValueError, match="--pretrained"):
    ablation.run(args)
  args = ablation.parse_args(["--scale", "small", "--workdir", str(tmp_path),
                              "--pretrained", "/x"])
  with pytest.raises(ValueError, match="from scratch"):
    ablation.run(args)


def test_eval_masks_are_seeded_and_survive_the_latent_grid():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
  for kind in evaluate.KINDS:
    a = evaluate.eval_keep(image, kind, seed=3, index=1)
    b = evaluate.eval_keep(image, kind, seed=3, index=1)
    c = evaluate.eval_keep(image, kind, seed=4, index=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0.05 < 1.0 - a.mean() < 0.6
    keep_latent = blending.latent_keep(a[None, ..., None].astype(np.float32), (8, 8))
    assert float(np.min(keep_latent)) == 0.0  # part of the hole is left on the latent grid
  outpaint = evaluate.eval_keep(image, "outpaint", seed=0, index=0)
  assert not outpaint[0].any() and not outpaint[-1].any() and outpaint[32, 32]


def test_summary_spread_is_over_seed_means():
  rows = [{"seed": s, "cd": v, "excess_cd": v, "seam_step": v, "psnr_kept": v}
          for s, v in ((0, 1.0), (0, 3.0), (1, 4.0), (1, 6.0))]
  summary = evaluate.summarize(rows)
  assert summary["cd"] == 3.5 and summary["cd_per_seed"] == [2.0, 5.0]
  assert summary["cd_seed_std"] == pytest.approx(np.std([2.0, 5.0], ddof=1))


def test_seam_step_sees_a_border_edge_but_not_smooth_content_or_blur():
  keep = np.ones((16, 16), bool)
  keep[:, 8:] = False
  ramp = np.tile(np.linspace(0, 255, 16)[None, :, None], (16, 1, 3))
  assert evaluate.seam_step(ramp, keep) == pytest.approx(0.0, abs=1e-9)  # steady gradient
  seam = np.zeros((16, 16, 3))
  seam[:, 8:] = 100.0
  assert evaluate.seam_step(seam, keep) == pytest.approx(100 * np.sqrt(3))
  soft = seam.copy()
  soft[:, 7], soft[:, 8] = 33.0, 66.0                  # the same edge spread over 3 steps
  assert abs(evaluate.seam_step(soft, keep)) < 1.0
  assert np.isnan(evaluate.seam_step(seam, np.ones((16, 16), bool)))


def test_border_point_is_on_the_kept_side_nearest_the_centre():
  keep = np.ones((16, 16), bool)
  keep[:, 10:] = False
  y, x = report.border_point(keep)
  assert x == 9 and keep[y, x] and abs(y - 8) <= 1


@pytest.mark.slow
def test_smoke_run_writes_table_and_figures(tmp_path):
  out = tmp_path / "docs" / "results.md"
  ablation.main(["--scale", "smoke", "--workdir", str(tmp_path / "w"), "--report", str(out),
                 "--configs", CONFIGS])
  text = out.read_text()
  for label in ("Base (BLD)", "Fine-tune VAE (Eq. 6)", "Two-step training", "Ours (both)",
                "15.735", "8.538", "Eq. 6 blend, Eq. 6 decoder"):
    assert label in text, label
  for name in ("results_curves.png", "results_closeups.png", "results_vae.png"):
    assert (out.parent / name).stat().st_size > 10_000, name
  with open(tmp_path / "w" / "eval" / "results.json") as f:
    results = json.load(f)
  for key, _, _, _ in evaluate.COMBOS:
    summary = results["bld"][key]["summary"]
    assert set(summary) == set(evaluate.KINDS)
    assert np.isfinite(summary["inpaint"]["excess_cd"])
  # Same UNet, same seeds: the base and Eq. 6 decoders render the same latents, so the kept
  # region is decoded from the same numbers and only the decoder differs.
  assert results["bld"]["base"]["rows"][0]["cd_truth"] == \
      results["bld"]["vae_only"]["rows"][0]["cd_truth"]
  with open(tmp_path / "w" / "timings.json") as f:
    assert set(json.load(f)) >= set(ablation.TRAIN_STAGES) | {"eval"}
