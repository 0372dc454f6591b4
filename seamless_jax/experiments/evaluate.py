"""Evaluation of the ablation: BLD on held-out images, and the VAE-only measurement.

Cases: every held-out image x every mask kind (inpaint, outpaint) x every seed. The seed fixes
both the mask (``eval_keep``) and the BLD noise, so the four combinations see the same cases.

* BLD (``bld``): for each UNet (``standard`` = the base objective, ``two_step``) and each VAE
  decoder (base, Eq. 6), :class:`seamless_jax.inpaint.Inpainter` samples with the prompt
  "scenery", no paste-back (the decoded known region counts, as in the paper). Per case: CD of
  the output, excess CD (CD(output) − CD(ground truth) on the same border), PSNR of the kept
  region. The encoder is the base one in all four, so for a given UNet and seed the two decoders
  render the same latent.
* VAE-only (``vae``): Eq. 6 blends ``D(E(x)·(1−keep↓) + E(x·keep)·keep↓)`` (posterior means) of
  the held-out images decoded by the base decoder and by the Eq. 6 decoder, plus the plain
  reconstruction ``D(E(x))`` of the base VAE as the no-blend reference.
* FID (``--fid-weights``) and Aesthetic Score (``--clip`` + ``--aesthetic-head``) per
  combination and mask kind when their weights are given.

Everything goes to ``eval/results.json`` (per-case values and summaries: mean, and the spread
as the standard deviation of the per-seed means) and ``eval/examples.npz`` (images for the
figure).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from seamless_jax import inpaint
from seamless_jax import loading
from seamless_jax import metrics
from seamless_jax.data import masks
from seamless_jax.data import sources
from seamless_jax.data import transforms
from seamless_jax.diffusion import blending
from seamless_jax.diffusion import losses
from seamless_jax.eval import aesthetic
from seamless_jax.eval import fid

KINDS = ("inpaint", "outpaint")
UNETS = ("standard", "two_step")
# Table 4 rows: (key, label, unet, vae decoder)
COMBOS = (("base", "Base (BLD)", "standard", "base"),
          ("vae_only", "Fine-tune VAE (Eq. 6)", "standard", "eq6"),
          ("two_step_only", "Two-step training", "two_step", "base"),
          ("both", "Ours (both)", "two_step", "eq6"))
EVAL_AREA = (0.15, 0.35)      # fraction of the image to generate
EXAMPLES = 4                   # cases per kind kept for the figure (first seed)
CALL_CASES = 256               # cases per Inpainter.batch call
DEVICE_BATCH = {False: 36, True: 8}  # samples per device call: small scales, sd15


def read_eval_images(folder: str, resolution: int, max_images: int) -> np.ndarray:
  """The first ``max_images`` images of ``folder`` (sorted by name), shorter side resized to
  ``resolution`` (bicubic) and centre-cropped: uint8 (N, R, R, 3)."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"evaluation image folder {folder} does not exist")
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(sources.IMAGE_EXTENSIONS))
  if not names:
    raise FileNotFoundError(f"{folder}: no images ({', '.join(sources.IMAGE_EXTENSIONS)})")
  images = []
  for name in names[:max_images]:
    with Image.open(os.path.join(folder, name)) as img:
      img = img.convert("RGB")
      scale = resolution / min(img.size)
      w, h = max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))
      img = img.resize((w, h), Image.BICUBIC)
      left, top = (w - resolution) // 2, (h - resolution) // 2
      images.append(np.asarray(img.crop((left, top, left + resolution, top + resolution))))
  return np.stack(images)


def eval_keep(image: np.ndarray, kind: str, seed: int, index: int, latent_factor: int = 8,
              max_tries: int = 20) -> np.ndarray:
  """The evaluation mask of (image ``index``, ``kind``, ``seed``): bool (H, W), True = known.

  inpaint: free-form hole in the background (built-in saliency, as in training), outpaint: a
  border on all four sides; the hole covers ``EVAL_AREA`` of the image and is redrawn until it
  survives the nearest resize to the latent grid (``latent_factor``).
  """
  height, width = image.shape[:2]
  rng = np.random.default_rng([seed, index, KINDS.index(kind)])
  salient = masks.salient_pixels(masks.spectral_residual_saliency(image)) if kind == "inpaint" \
      else None
  for _ in range(max_tries):
    if kind == "inpaint":
      hole = masks.inpaint_hole(rng, height, width, salient=salient, area_range=EVAL_AREA,
                                margin=max(2, height // 32))
      if hole is None:
        hole = masks.inpaint_hole(rng, height, width, area_range=EVAL_AREA)
    else:
      hole = masks.outpaint_hole(rng, height, width, area_range=EVAL_AREA, sides=(4, 4))
    keep_latent = blending.latent_keep(jnp.asarray(~hole, jnp.float32)[None, ..., None],
                                       (height // latent_factor, width // latent_factor))
    if float(jnp.min(keep_latent)) < 1.0 and not hole.all():
      return ~hole
  raise RuntimeError(f"no usable {kind} mask for image {index} (seed {seed}) at {height}x{width}")


def make_cases(images: np.ndarray, seeds, latent_factor: int) -> list[dict]:
  """One dict per (seed, kind, image): ``seed``, ``kind``, ``image`` (index), ``keep`` (H, W)."""
  cases = []
  for seed in seeds:
    for kind in KINDS:
      for index, image in enumerate(images):
        cases.append({"seed": int(seed), "kind": kind, "image": index,
                      "keep": eval_keep(image, kind, int(seed), index, latent_factor)})
  return cases


def seam_step(image: np.ndarray, keep: np.ndarray) -> float:
  """How much the colour step ACROSS the mask border exceeds the steps BESIDE it (0–255 scale).

  For every 4-neighbour border pair (p kept, q = p + n generated) whose neighbours p − n (kept)
  and q + n (generated) exist: ``|x_p − x_q| − (|x_{p−n} − x_p| + |x_q − x_{q+n}|) / 2``
  (Euclidean RGB distances), averaged over the pairs. A uniformly blurred or sharpened image
  changes all three steps alike, so unlike CD this does not reward blur; a seam (an edge that
  exists only on the border) makes it positive. NaN when there is no such pair.
  """
  x = np.asarray(image, np.float64)
  k = np.asarray(keep, bool).reshape(x.shape[:2])
  across, beside = [], []
  for axis in (0, 1):
    for sign in (1, -1):  # n = +1 / -1 along the axis
      xs, ks = (x, k) if sign == 1 else (np.flip(x, axis), np.flip(k, axis))
      xs, ks = np.moveaxis(xs, axis, 0), np.moveaxis(ks, axis, 0)
      p_in, p, q, q_out = (slice(i, ks.shape[0] - 3 + i) for i in range(4))
      pairs = ks[p_in] & ks[p] & ~ks[q] & ~ks[q_out]
      dist = lambda a, b: np.sqrt(np.sum((xs[a] - xs[b]) ** 2, axis=-1))
      across.append(dist(p, q)[pairs])
      beside.append(0.5 * (dist(p_in, p) + dist(q, q_out))[pairs])
  across, beside = np.concatenate(across), np.concatenate(beside)
  return float(np.mean(across) - np.mean(beside)) if across.size else float("nan")


def case_metrics(output: np.ndarray, truth: np.ndarray, keep: np.ndarray) -> dict:
  """CD, excess CD, seam step and kept-region PSNR of one output (uint8 (H, W, 3)) for
  ``keep`` (H, W)."""
  cd = metrics.color_distance(output, keep)
  cd_truth = metrics.color_distance(truth, keep)
  return {"cd": cd, "excess_cd": cd - cd_truth, "cd_truth": cd_truth,
          "seam_step": seam_step(output, keep), "seam_step_truth": seam_step(truth, keep),
          "psnr_kept": metrics.masked_psnr(output, truth, keep)}


def summarize(rows: list[dict], keys=("cd", "excess_cd", "seam_step", "psnr_kept")) -> dict:
  """Mean of each key over ``rows`` and its spread: std of the per-seed means (n seeds)."""
  out = {"n": len(rows)}
  seeds = sorted({r["seed"] for r in rows})
  for key in keys:
    values = np.asarray([r[key] for r in rows], np.float64)
    per_seed = [np.nanmean([r[key] for r in rows if r["seed"] == s]) for s in seeds]
    out[key] = float(np.nanmean(values))
    out[key + "_seed_std"] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
    out[key + "_per_seed"] = [float(v) for v in per_seed]
  return out


# ============================================================================ BLD

def run_bld(paths, scale, images: np.ndarray, cases: list[dict]) -> dict:
  """Samples every case with the four combinations; ``{combo: (N, H, W, 3) uint8}``.

  One :class:`~seamless_jax.inpaint.Inpainter` per UNet (one compiled program): it renders
  with the base decoder, then its VAE params are swapped for the base encoder + Eq. 6 decoder
  (what ``Inpainter.load(..., vae=eq6 run)`` assembles) and the same seeds run again.
  """
  _, eq6_vae_params = loading.load_vae(paths.run("eq6_vae"), dtype=scale.dtype)
  outputs = {}
  for unet in UNETS:
    pipe = inpaint.Inpainter.load(paths.run(unet), dtype=scale.dtype)
    decoders = {"base": pipe.params["vae"],
                "eq6": jax.device_put(loading.with_decoder(pipe.pipeline.vae_params,
                                                           eq6_vae_params))}
    for key, _, combo_unet, vae in COMBOS:
      if combo_unet != unet:
        continue
      pipe.params = {**pipe.params, "vae": decoders[vae]}
      results, sample_s, compile_s = [], 0.0, 0.0
      for start in range(0, len(cases), CALL_CASES):  # bounded host memory per call
        part = cases[start:start + CALL_CASES]
        results += pipe.batch([images[c["image"]] for c in part],
                              [masks.mask_image_from_keep(c["keep"]) for c in part], "scenery",
                              num_inference_steps=scale.num_inference_steps,
                              guidance_scale=scale.guidance_scale,
                              seed=[1000 * c["seed"] + start + i for i, c in enumerate(part)],
                              batch_size=min(len(cases), DEVICE_BATCH[scale.name == "sd15"]))
        sample_s, compile_s = sample_s + pipe.stats.sample_s, compile_s + pipe.stats.compile_s
      print(f"  bld {key}: {len(cases)} samples, {sample_s:.1f} s sampling, "
            f"{compile_s:.1f} s compile", flush=True)
      outputs[key] = np.stack(results)
  return outputs


def bld_metrics(images, cases, outputs: dict) -> dict:
  """Per-case rows and summaries per combination and mask kind."""
  results = {}
  for key, label, unet, vae in COMBOS:
    rows = []
    for case, output in zip(cases, outputs[key]):
      row = {"seed": case["seed"], "kind": case["kind"], "image": case["image"]}
      row.update(case_metrics(output, images[case["image"]], case["keep"]))
      rows.append(row)
    results[key] = {"label": label, "unet": unet, "vae": vae, "rows": rows,
                    "summary": {kind: summarize([r for r in rows if r["kind"] == kind])
                                for kind in KINDS}}
  return results


def add_quality_scores(results: dict, images, cases, outputs: dict, args) -> None:
  """FID (vs the held-out ground truth) and mean AS per combination and kind, when given."""
  if args.fid_weights:
    for key in outputs:
      for kind in KINDS:
        chosen = [i for i, c in enumerate(cases) if c["kind"] == kind]
        results[key]["summary"][kind]["fid"] = fid.compute_fid(
            outputs[key][chosen], images, args.fid_weights)
  if args.clip and args.aesthetic_head:
    scorer = aesthetic.AestheticScorer(args.clip, args.aesthetic_head)
    for key in outputs:
      for kind in KINDS:
        chosen = [i for i, c in enumerate(cases) if c["kind"] == kind]
        results[key]["summary"][kind]["as"] = float(np.mean(scorer(outputs[key][chosen])))


# ============================================================================ VAE only

def vae_only(paths, scale, images: np.ndarray, seeds) -> dict:
  """Eq. 6 blends of the held-out images decoded by the base and the Eq. 6 decoder.

  Returns ``{'rows': [...], 'summary': {decoder: {kind: summary}}, 'examples': ...}`` with
  decoders ``base`` (base decoder on the blend), ``eq6`` (Eq. 6 decoder on the blend) and
  ``plain`` (base VAE, no blend: D(E(x)), the reconstruction floor).
  """
  vae, base_params = loading.load_vae(paths.base, dtype=scale.dtype)
  _, eq6_params = loading.load_vae(paths.run("eq6_vae"), dtype=scale.dtype)
  decoders = {"base": base_params, "eq6": loading.with_decoder(base_params, eq6_params)}

  @jax.jit
  def blend_decode(enc_params, dec_params, x, keep):
    encode = lambda img: vae.apply({"params": enc_params}, img, method=vae.encode)
    decode = lambda z: vae.apply({"params": dec_params}, z, method=vae.decode)
    out = losses.blend_reconstruct(encode, decode, x, keep, sample_posterior=False)
    return jnp.clip(out.astype(jnp.float32), -1.0, 1.0)

  @jax.jit
  def plain(params, x):
    mean, _ = vae.apply({"params": params}, x, method=vae.encode)
    return jnp.clip(vae.apply({"params": params}, mean, method=vae.decode).astype(jnp.float32),
                    -1.0, 1.0)

  to_uint8, x = transforms.image_to_uint8, transforms.image_to_float(images)
  recon = to_uint8(plain(base_params, x))
  cases = make_cases(images, seeds, int(vae.downscale))
  rows, decoded = [], {}
  for name, params in decoders.items():
    outs = []
    for start in range(0, len(cases), 32):
      part = cases[start:start + 32]
      keep = np.stack([c["keep"] for c in part])[..., None].astype(np.float32)
      outs.append(to_uint8(blend_decode(base_params, params, x[[c["image"] for c in part]],
                                        keep)))
    decoded[name] = np.concatenate(outs)
  decoded["plain"] = recon[[c["image"] for c in cases]]
  for name, outs in decoded.items():
    for case, output in zip(cases, outs):
      row = {"decoder": name, "seed": case["seed"], "kind": case["kind"], "image": case["image"]}
      row.update(case_metrics(output, images[case["image"]], case["keep"]))
      row["psnr_all"] = _psnr(output, images[case["image"]])
      rows.append(row)
  summary = {name: {kind: summarize([r for r in rows if r["decoder"] == name
                                     and r["kind"] == kind],
                                    keys=("cd", "excess_cd", "seam_step", "psnr_kept",
                                          "psnr_all"))
                    for kind in KINDS} for name in decoded}
  paired = {}
  for metric in ("excess_cd", "seam_step"):
    for kind in KINDS:  # the drop per case (same image, mask, seed): base − eq6
      base = [r[metric] for r in rows if r["decoder"] == "base" and r["kind"] == kind]
      eq6 = [r[metric] for r in rows if r["decoder"] == "eq6" and r["kind"] == kind]
      diff = np.asarray(base) - np.asarray(eq6)
      diff = diff[np.isfinite(diff)]
      paired.setdefault(metric, {})[kind] = {
          "mean_drop": float(diff.mean()), "std_drop": float(diff.std(ddof=1)),
          "sem": float(diff.std(ddof=1) / np.sqrt(diff.size)),
          "fraction_improved": float(np.mean(diff > 0)), "n": int(diff.size)}
  chosen = _example_indices(cases)
  examples = {name: outs[chosen] for name, outs in decoded.items()}
  return {"rows": rows, "summary": summary, "paired": paired, "cases": cases,
          "examples": examples}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0 ** 2
  return float(10 * np.log10(1.0 / max(mse, 1e-12)))


# ============================================================================ driver

def _example_indices(cases: list[dict]) -> list[int]:
  """``EXAMPLES`` cases of each kind at the first seed, on images spread over the set."""
  first = cases[0]["seed"]
  chosen = []
  for kind in KINDS:
    pool = [i for i, c in enumerate(cases) if c["seed"] == first and c["kind"] == kind]
    picks = np.unique(np.linspace(0, len(pool) - 1, min(EXAMPLES, len(pool))).round())
    chosen += [pool[int(j)] for j in picks]
  return chosen


def evaluate_ablation(paths, scale, args) -> dict:
  """Runs both measurements; writes ``eval/results.json`` and ``eval/examples.npz``."""
  os.makedirs(paths.eval, exist_ok=True)
  images = read_eval_images(paths.eval_images, scale.resolution, scale.eval_images)
  print(f"  eval: {len(images)} held-out images from {paths.eval_images}", flush=True)
  vae_result = vae_only(paths, scale, images, scale.vae_eval_seeds)
  cases = make_cases(images, scale.eval_seeds, 8)
  outputs = run_bld(paths, scale, images, cases)
  bld = bld_metrics(images, cases, outputs)
  add_quality_scores(bld, images, cases, outputs, args)
  chosen = _example_indices(cases)
  arrays = {"truth": np.stack([images[cases[i]["image"]] for i in chosen]),
            "keep": np.stack([cases[i]["keep"] for i in chosen]),
            "kind": np.asarray([cases[i]["kind"] for i in chosen])}
  arrays.update({f"bld_{key}": outputs[key][chosen] for key in outputs})
  vae_chosen = _example_indices(vae_result["cases"])
  arrays.update({f"vae_{name}": vae_result["examples"][name] for name in vae_result["examples"]})
  arrays["vae_truth"] = np.stack([images[vae_result["cases"][i]["image"]] for i in vae_chosen])
  arrays["vae_keep"] = np.stack([vae_result["cases"][i]["keep"] for i in vae_chosen])
  np.savez_compressed(os.path.join(paths.eval, "examples.npz"), **arrays)
  results = {"scale": scale.name, "num_images": int(len(images)),
             "seeds": list(scale.eval_seeds), "vae_seeds": list(scale.vae_eval_seeds),
             "num_inference_steps": scale.num_inference_steps,
             "guidance_scale": scale.guidance_scale, "bld": bld,
             "vae_only": {k: vae_result[k] for k in ("rows", "summary", "paired")}}
  with open(os.path.join(paths.eval, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  return results
