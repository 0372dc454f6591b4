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


@pytest.mark.parametrize("scale_name", sorted(scales.SCALES))
def test_plain_vae_control_is_the_eq6_stage_on_plain_reconstructions(scale_name):
  kwargs = dict(pretrained="/w/base", lpips_path="/ckpt/lpips.safetensors", seed=3)
  eq6 = _config(scale_name, "eq6_vae", **kwargs).to_dict()
  plain = _config(scale_name, "plain_vae", **kwargs).to_dict()
  assert eq6["vae"].pop("blend") and not plain["vae"].pop("blend")  # D(E(x)) vs Eq. 6 blends
  assert plain == eq6  # steps, batch, lr, seed, data, start, losses, samples: all the same
  assert not plain["vae"]["train_encoder"] and plain["mode"] == "vae_finetune"
  assert (plain["total_steps"], plain["seed"]) == (scales.SCALES[scale_name].finetune_steps, 3)
  assert "plain_vae" in ablation.TRAIN_STAGES and \
      evaluate.DECODER_RUNS == {"eq6": "eq6_vae", "control": "plain_vae"}


def test_medium_scale_is_128px_wider_and_seeded_three_times():
  small, medium = scales.SCALES["small"], scales.SCALES["medium"]
  assert medium.resolution == 128 and medium.unet_config["sample_size"] == 16  # 16x16 latents
  assert medium.vae_config["sample_size"] == 128 and medium.from_scratch
  for part in ("vae_config", "unet_config"):
    wider = zip(getattr(medium, part)["block_out_channels"],
                getattr(small, part)["block_out_channels"])
    assert all(m >= s for m, s in wider) and getattr(medium, part) != getattr(small, part)
  assert len(medium.eval_seeds) >= 3 and medium.tiles_per_image > small.tiles_per_image
  config = _config("medium", "base_vae", pretrained="/w/init")
  assert config.data.resolution == 128 and config.total_steps == medium.base_vae_steps


def test_effect_statement_says_when_the_control_removes_the_effect():
  def diff(mean, sem, n=30):
    return {"mean": mean, "sem": sem, "n": n, "fraction_lower": 0.5}
  def table(excess, seam):
    return {"excess_cd": {k: excess for k in evaluate.KINDS},
            "seam_step": {k: seam for k in evaluate.KINDS}}
  paired = {"eq6-control": table(diff(-0.05, 0.04), diff(-0.5, 0.1)),
            "eq6-base": table(diff(-0.5, 0.05), diff(-0.6, 0.1))}
  labels = {"eq6": "Eq. 6", "control": "plain", "base": "base"}
  decoders = {name: name for name in labels}
  lines = report.effect_statements(paired, labels, decoders)
  assert len(lines) == 4
  assert "**the control removes the effect**" in lines[0]  # excess CD: only vs the base
  assert "beyond the extra training" in lines[2]            # seam step: also vs the control
  paired["eq6-control"]["excess_cd"]["inpaint"] = diff(-0.5, 0.1, n=4)
  assert "too few cases" in report.effect_statements(paired, labels, decoders)[0]


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


def test_case_rows_measure_the_hole_against_the_reference_and_lpips_when_given():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  cases = evaluate.make_cases(images, seeds=(0,), latent_factor=8)
  outputs = images[[c["image"] for c in cases]].copy()
  keep = np.stack([c["keep"] for c in cases])
  outputs[~keep] = 128  # the hole "generated" flat grey, the kept region exact
  fake_lpips = lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).mean(axis=(1, 2, 3))
  rows = evaluate.case_rows(outputs, images, cases, reference=outputs, lpips_fn=fake_lpips)
  assert len(rows) == len(cases) == 4
  for row in rows:
    assert row["psnr_kept"] == np.inf and row["psnr_hole"] == np.inf  # both unchanged
    assert row["lpips_kept"] == 0.0  # generated pixels are blacked out in both
  assert "psnr_hole" not in evaluate.case_rows(outputs, images, cases)[0]


def test_summary_spread_is_over_seed_means():
  rows = [{"seed": s, "cd": v, "excess_cd": v, "seam_step": v, "psnr_kept": v,
           "psnr_hole": np.inf} for s, v in ((0, 1.0), (0, 3.0), (1, 4.0), (1, 6.0))]
  summary = evaluate.summarize(rows)
  assert summary["cd"] == 3.5 and summary["cd_per_seed"] == [2.0, 5.0]
  assert summary["cd_seed_std"] == pytest.approx(np.std([2.0, 5.0], ddof=1))
  assert summary["psnr_hole"] == np.inf and summary["psnr_hole_seed_std"] == 0.0  # unchanged
  assert "lpips_kept" not in summary  # only the measures the rows have


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


def test_seam_centre_is_where_the_seam_is_and_on_the_kept_side():
  keep = np.ones((64, 64), bool)
  keep[:, 40:] = False
  image = np.zeros((64, 64, 3))
  image[44:54, 40:] = 200.0  # an edge on the border only in rows 44-53
  row, col = evaluate.seam_centre(image, keep, side=16)
  assert col == 39 and keep[row, col] and 38 <= row <= 59  # its crop holds the whole seam
  assert evaluate.seam_centre(np.zeros((64, 64, 3)), np.ones((64, 64), bool), 16) == (32, 32)


def test_neighbour_difference_lights_up_edges():
  image = np.zeros((6, 8, 3))
  image[:, 4:] = (30.0, 40.0, 0.0)
  diff = report.neighbour_difference(image)
  np.testing.assert_allclose(diff[:, 3:5], 50.0)  # both sides of the edge
  assert diff.shape == (6, 8) and not diff[:, :3].any() and not diff[:, 5:].any()


def _rows(values, seeds, kind="inpaint"):
  return [{"seed": s, "kind": kind, "image": i, "excess_cd": v}
          for i, (s, v) in enumerate(zip(seeds, values))]


def test_paired_difference_matches_numpy():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=30), rng.normal(size=30)
  seeds = np.repeat([0, 1, 2], 10)
  b[7] = np.nan  # a case without border pairs: left out of both
  rows_b = _rows(b, seeds)[::-1]  # matched by case, not by order
  got = evaluate.paired_difference(_rows(a, seeds), rows_b, "excess_cd")
  diff = (a - b)[np.isfinite(b)]
  kept_seeds = seeds[np.isfinite(b)]
  assert got["n"] == 29
  assert got["mean"] == pytest.approx(diff.mean())
  assert got["std"] == pytest.approx(diff.std(ddof=1))
  assert got["sem"] == pytest.approx(diff.std(ddof=1) / np.sqrt(29))
  assert got["seed_std"] == pytest.approx(
      np.std([diff[kept_seeds == s].mean() for s in (0, 1, 2)], ddof=1))
  assert got["fraction_lower"] == pytest.approx(np.mean(diff < 0))
  with pytest.raises(ValueError, match="not the same cases"):
    evaluate.paired_difference(_rows(a, seeds), _rows(b[:-1], seeds[:-1]), "excess_cd")
  with pytest.raises(ValueError, match="not the same cases"):
    evaluate.paired_difference(_rows(a, seeds), _rows(b, seeds, kind="outpaint"), "excess_cd")


@pytest.mark.slow
def test_smoke_run_writes_table_and_figures(tmp_path):
  out = tmp_path / "docs" / "results.md"
  ablation.main(["--scale", "smoke", "--workdir", str(tmp_path / "w"), "--report", str(out),
                 "--configs", CONFIGS])
  text = out.read_text()
  for label in ("Base (BLD)", "Fine-tune VAE (Eq. 6)", "Two-step training", "Ours (both)",
                "15.735", "8.538", "Eq. 6 blend, Eq. 6 decoder", "Plain fine-tune VAE (control)",
                "Eq. 6 blend, plain fine-tuned decoder (control)", "the method's effect",
                "Base + paste-back", "Base + blurred paste-back (σ = 1 px)",
                "Base + Poisson blending", "PSNR hole vs unfixed", "plain_vae 3 x 4"):
    assert label in text, label
  for name in ("results_curves.png", "results_closeups.png", "results_fixes.png",
               "results_vae.png"):
    assert (out.parent / name).stat().st_size > 10_000, name
  with open(tmp_path / "w" / "eval" / "results.json") as f:
    results = json.load(f)
  for key, _, _, _ in evaluate.COMBOS:
    summary = results["bld"][key]["summary"]
    assert set(summary) == set(evaluate.KINDS)
    assert np.isfinite(summary["inpaint"]["excess_cd"])
  with open(tmp_path / "w" / "runs" / "plain_vae" / "config.json") as f:
    control = json.load(f)
  assert not control["vae"]["blend"] and not control["vae"]["train_encoder"]
  # Eq. 6 − plain, paired by case, in BLD (both UNets) and for the VAE alone
  bld = results["bld"]
  for a, b in (("vae_only", "vae_control"), ("both", "two_step_control")):
    paired = results["paired"][f"{a}-{b}"]["excess_cd"]["inpaint"]
    diff = [r["excess_cd"] - c["excess_cd"] for r, c in zip(bld[a]["rows"], bld[b]["rows"])
            if r["kind"] == "inpaint"]
    assert paired["n"] == len(diff) == 2 and paired["mean"] == pytest.approx(np.mean(diff))
  vae = results["vae_only"]
  assert set(vae["summary"]) == {"plain", "base", "eq6", "control"}
  assert vae["paired"]["eq6-control"]["seam_step"]["outpaint"]["n"] > 0
  # the fixes of the base row: paste-backs keep the input exactly and leave the hole alone
  fixes = results["fixes"]
  assert fixes["hard"]["summary"]["inpaint"]["psnr_kept"] == np.inf
  assert fixes["poisson"]["summary"]["outpaint"]["psnr_kept"] == np.inf
  assert fixes["blurred"]["summary"]["inpaint"]["psnr_hole"] == np.inf
  assert np.isfinite(fixes["poisson"]["summary"]["inpaint"]["psnr_hole"])
  assert np.isfinite(bld["vae_control"]["summary"]["inpaint"]["psnr_hole"])
  # Same UNet, same seeds: the base and Eq. 6 decoders render the same latents, so the kept
  # region is decoded from the same numbers and only the decoder differs.
  assert results["bld"]["base"]["rows"][0]["cd_truth"] == \
      results["bld"]["vae_only"]["rows"][0]["cd_truth"]
  with open(tmp_path / "w" / "timings.json") as f:
    assert set(json.load(f)) >= set(ablation.TRAIN_STAGES) | {"eval"}
