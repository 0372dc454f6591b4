"""Evaluation of the ablation: BLD on held-out images, the post-hoc fixes, the VAE alone.

Cases: every held-out image x every mask kind (inpaint, outpaint) x every seed. The seed fixes
both the mask (``eval_keep``) and the BLD noise, so every row sees the same cases.

* BLD (``bld``): each UNet (``standard`` = the base objective, ``two_step``) samples every case
  once with :class:`seamless_jax.inpaint.Inpainter` (prompt "scenery", no paste-back: the
  decoded known region counts, as in the paper); the final latents are rendered by each decoder
  (:data:`DECODERS`: base, Eq. 6, and the plain fine-tune that trained identically on ordinary
  reconstructions, the control). The encoder is the base one everywhere, so for a UNet and seed
  the decoders render the same latents. Per case: CD, excess CD (CD(output) − CD(ground truth)
  on the same border), seam step, PSNR of the kept region, LPIPS of the kept region (with
  ``--lpips``), and for the fine-tuned decoders the PSNR of the hole against the base decoder's
  rendering (how much the decoder changes the generated area).
* Post-hoc fixes (``fixes``): the base row (standard UNet + base decoder) after each of
  :data:`FIXES` (:func:`seamless_jax.inpaint.apply_paste_back`: hard paste-back, blurred
  paste-back with a Gaussian of σ = :func:`seamless_jax.inpaint.blur_sigma`, Poisson blending
  with OpenCV's ``seamlessClone``), the same measures, the hole PSNR against the unfixed output.
* VAE-only (``vae``): Eq. 6 blends ``D(E(x)·(1−keep↓) + E(x·keep)·keep↓)`` (posterior means) of
  the held-out images decoded by each decoder, plus the plain reconstruction ``D(E(x))`` of the
  base VAE as the no-blend reference (``plain``).
* Paired differences (``paired``): ``a − b`` per case for the pairs of :data:`BLD_PAIRS` and
  :data:`VAE_PAIRS` (:func:`paired_difference`); Eq. 6 − plain fine-tune is the method's effect.
* FID (``--fid-weights``) and Aesthetic Score (``--clip`` + ``--aesthetic-head``) per
  combination and mask kind when their weights are given.

Everything goes to ``eval/results.json`` (per-case values and summaries: mean, and the spread
as the standard deviation of the per-seed means) and ``eval/examples.npz`` (images for the
figures: the cases where the base decoder's seam step is largest, with the crop centre where
its seam is largest, :func:`seam_centre`).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import ndimage

from seamless_jax import inpaint
from seamless_jax import loading
from seamless_jax import metrics
from seamless_jax import pictures
from seamless_jax.data import masks
from seamless_jax.data import sources
from seamless_jax.data import transforms
from seamless_jax.diffusion import blending
from seamless_jax.diffusion import losses
from seamless_jax.eval import aesthetic
from seamless_jax.eval import fid
from seamless_jax.models import lpips as lpips_lib

KINDS = ("inpaint", "outpaint")
UNETS = ("standard", "two_step")
# Fine-tuned decoders -> the training run they come from (the base decoder is the base VAE's).
DECODER_RUNS = {"eq6": "eq6_vae", "control": "plain_vae"}
DECODERS = ("base",) + tuple(DECODER_RUNS)
# Table 4 rows (+ the control decoder beside the Eq. 6 one): (key, label, unet, decoder)
COMBOS = (("base", "Base (BLD)", "standard", "base"),
          ("vae_only", "Fine-tune VAE (Eq. 6)", "standard", "eq6"),
          ("vae_control", "Plain fine-tune VAE (control)", "standard", "control"),
          ("two_step_only", "Two-step training", "two_step", "base"),
          ("both", "Ours (both)", "two_step", "eq6"),
          ("two_step_control", "Two-step + plain fine-tune VAE (control)", "two_step",
           "control"))
# Post-hoc fixes of the base row: (inpaint.apply_paste_back mode, label)
FIXES = (("hard", "Base + paste-back"), ("blurred", "Base + blurred paste-back"),
         ("poisson", "Base + Poisson blending"))
# Paired differences a − b reported: BLD combos, VAE-only decoders.
BLD_PAIRS = (("vae_only", "vae_control"), ("vae_only", "base"), ("vae_control", "base"),
             ("both", "two_step_control"), ("both", "two_step_only"),
             ("two_step_only", "base"), ("both", "base"))
VAE_PAIRS = (("eq6", "control"), ("eq6", "base"), ("control", "base"))
METRICS = ("cd", "excess_cd", "seam_step", "psnr_kept", "lpips_kept", "psnr_all", "psnr_hole")
PAIRED_METRICS = ("excess_cd", "seam_step", "psnr_kept", "lpips_kept", "psnr_all")
EVAL_AREA = (0.15, 0.35)      # fraction of the image to generate
EXAMPLES = 4                   # cases per kind kept for the figures
CALL_CASES = 256               # cases per Inpainter.generate call
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


def _seam_pairs(image: np.ndarray, keep: np.ndarray):
  """Every 4-neighbour border pair (p kept, q = p + n generated) whose neighbours p − n (kept)
  and q + n (generated) exist: ``(positions (M, 2) (row, col) of p, across (M,) = |x_p − x_q|,
  beside (M,) = (|x_{p−n} − x_p| + |x_q − x_{q+n}|) / 2)`` (Euclidean RGB distances)."""
  x = np.asarray(image, np.float64)
  k = np.asarray(keep, bool).reshape(x.shape[:2])
  height, width = k.shape
  pad = lambda a, fill: np.pad(a, ((2, 2), (2, 2)) + ((0, 0),) * (a.ndim - 2),
                               constant_values=fill)
  xp, kp, inside = pad(x, 0.0), pad(k, False), pad(np.ones_like(k), False)
  dist = lambda a, b: np.sqrt(np.sum((a - b) ** 2, axis=-1))
  positions, across, beside = [], [], []
  for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
    at = lambda a, s: a[2 + s * dy:2 + s * dy + height, 2 + s * dx:2 + s * dx + width]
    pairs = (at(inside, -1) & at(inside, 2) & at(kp, -1) & k & ~at(kp, 1) & ~at(kp, 2))
    positions.append(np.argwhere(pairs))
    across.append(dist(x, at(xp, 1))[pairs])
    beside.append(0.5 * (dist(at(xp, -1), x) + dist(at(xp, 1), at(xp, 2)))[pairs])
  return np.concatenate(positions), np.concatenate(across), np.concatenate(beside)


def seam_step(image: np.ndarray, keep: np.ndarray) -> float:
  """How much the colour step ACROSS the mask border exceeds the steps BESIDE it (0–255 scale).

  For every 4-neighbour border pair (p kept, q = p + n generated) whose neighbours p − n (kept)
  and q + n (generated) exist: ``|x_p − x_q| − (|x_{p−n} − x_p| + |x_q − x_{q+n}|) / 2``
  (Euclidean RGB distances), averaged over the pairs. A uniformly blurred or sharpened image
  changes all three steps alike, so unlike CD this does not reward blur; a seam (an edge that
  exists only on the border) makes it positive. NaN when there is no such pair.
  """
  _, across, beside = _seam_pairs(image, keep)
  return float(np.mean(across) - np.mean(beside)) if across.size else float("nan")


def closeup_side(size: int) -> int:
  """Side (px) of the border close-ups of ``size`` px images: a quarter, at least 16 px."""
  return min(size, max(16, size // 4))


def seam_centre(image: np.ndarray, keep: np.ndarray, side: int) -> tuple[int, int]:
  """(row, col) of the kept border pixel whose ``side`` x ``side`` neighbourhood holds the
  largest summed seam step (across − beside of :func:`seam_step`'s pairs): where a close-up
  shows the seam best. :func:`seamless_jax.pictures.border_centre` when there is no pair."""
  positions, across, beside = _seam_pairs(image, keep)
  if not len(positions):
    return pictures.border_centre(keep)
  excess = np.zeros(np.shape(keep)[:2])
  np.add.at(excess, (positions[:, 0], positions[:, 1]), across - beside)
  local = ndimage.uniform_filter(excess, size=side, mode="constant")
  row, col = positions[np.argmax(local[positions[:, 0], positions[:, 1]])]
  return int(row), int(col)


def case_metrics(output: np.ndarray, truth: np.ndarray, keep: np.ndarray,
                 reference: np.ndarray | None = None) -> dict:
  """CD, excess CD, seam step and kept-region PSNR of one output (uint8 (H, W, 3)) for
  ``keep`` (H, W); with ``reference`` (the same case unfixed / rendered by the base decoder)
  also ``psnr_hole``: PSNR of the generated region against it (inf = unchanged)."""
  cd = metrics.color_distance(output, keep)
  cd_truth = metrics.color_distance(truth, keep)
  row = {"cd": cd, "excess_cd": cd - cd_truth, "cd_truth": cd_truth,
         "seam_step": seam_step(output, keep), "seam_step_truth": seam_step(truth, keep),
         "psnr_kept": metrics.masked_psnr(output, truth, keep)}
  if reference is not None:
    row["psnr_hole"] = metrics.masked_psnr(output, reference, ~np.asarray(keep, bool))
  return row


def case_rows(outputs: np.ndarray, images: np.ndarray, cases: list[dict],
              reference: np.ndarray | None = None, lpips_fn=None) -> list[dict]:
  """One row per case: its ``seed``, ``kind``, ``image`` and :func:`case_metrics` of
  ``outputs`` (N, H, W, 3) uint8 (against ``reference`` (N, H, W, 3) when given), plus
  ``lpips_kept`` (LPIPS of the kept region, BrushNet's protocol) when ``lpips_fn`` is given."""
  rows = []
  for i, (case, output) in enumerate(zip(cases, outputs)):
    row = {"seed": case["seed"], "kind": case["kind"], "image": case["image"]}
    row.update(case_metrics(output, images[case["image"]], case["keep"],
                            None if reference is None else reference[i]))
    rows.append(row)
  if lpips_fn is not None:
    for start in range(0, len(cases), 32):
      part = cases[start:start + 32]
      scores = metrics.masked_lpips(outputs[start:start + 32],
                                    images[[c["image"] for c in part]],
                                    np.stack([c["keep"] for c in part]), lpips_fn)
      for row, score in zip(rows[start:start + 32], scores):
        row["lpips_kept"] = float(score)
  return rows


def summarize(rows: list[dict], keys=None) -> dict:
  """Mean of each key over ``rows`` and its spread: std of the per-seed means (n seeds).
  ``keys``: default the :data:`METRICS` the rows have. NaN values are left out; a key whose
  values are all +inf (PSNR of an unchanged region) has mean inf and spread 0."""
  keys = [k for k in METRICS if k in rows[0]] if keys is None else keys
  out = {"n": len(rows)}
  seeds = sorted({r["seed"] for r in rows})
  with np.errstate(invalid="ignore"):
    for key in keys:
      values = np.asarray([r[key] for r in rows], np.float64)
      per_seed = [np.nanmean([r[key] for r in rows if r["seed"] == s]) for s in seeds]
      spread = np.std(per_seed, ddof=1) if len(per_seed) > 1 else 0.0
      out[key] = float(np.nanmean(values))
      out[key + "_seed_std"] = float(spread) if np.isfinite(spread) else 0.0
      out[key + "_per_seed"] = [float(v) for v in per_seed]
  return out


def summarize_kinds(rows: list[dict]) -> dict:
  """:func:`summarize` of each mask kind: ``{kind: summary}``."""
  return {kind: summarize([r for r in rows if r["kind"] == kind]) for kind in KINDS}


def paired_difference(rows_a: list[dict], rows_b: list[dict], metric: str) -> dict:
  """``a − b`` of ``metric`` per case, the rows matched by (seed, kind, image).

  Returns ``mean``; ``sem``: its standard error over the cases (std / √n); ``std``;
  ``seed_std``: std of the per-seed mean differences; ``fraction_lower``: share of the cases
  where a < b; ``n``: cases with a finite difference (others are left out: a border without
  pairs, an unchanged region's infinite PSNR). ValueError when the two sets of cases differ.
  """
  case = lambda r: (r["seed"], r["kind"], r["image"])
  by_case = {case(r): r for r in rows_b}
  if len(by_case) != len(rows_b) or len(rows_a) != len(rows_b) or \
      any(case(r) not in by_case for r in rows_a):
    raise ValueError(f"paired {metric}: the two row sets are not the same cases "
                     f"({len(rows_a)} vs {len(rows_b)} rows)")
  diff = np.asarray([r[metric] - by_case[case(r)][metric] for r in rows_a], np.float64)
  seeds = np.asarray([r["seed"] for r in rows_a])
  finite = np.isfinite(diff)
  diff, seeds = diff[finite], seeds[finite]
  n = int(diff.size)
  std = float(diff.std(ddof=1)) if n > 1 else 0.0
  per_seed = [diff[seeds == s].mean() for s in np.unique(seeds)]
  return {"mean": float(diff.mean()) if n else float("nan"), "sem": std / np.sqrt(max(n, 1)),
          "std": std, "seed_std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
          "fraction_lower": float(np.mean(diff < 0)) if n else float("nan"), "n": n}


def paired_table(rows: dict[str, list[dict]], pairs) -> dict:
  """``{'a-b': {metric: {kind: paired_difference}}}`` for each (a, b) of ``pairs`` (keys of
  ``rows``), over the :data:`PAIRED_METRICS` the rows have."""
  table = {}
  for a, b in pairs:
    found = [m for m in PAIRED_METRICS if m in rows[a][0]]
    table[f"{a}-{b}"] = {
        m: {kind: paired_difference([r for r in rows[a] if r["kind"] == kind],
                                    [r for r in rows[b] if r["kind"] == kind], m)
            for kind in KINDS} for m in found}
  return table


# ============================================================================ BLD

def run_bld(paths, scale, images: np.ndarray, cases: list[dict]) -> dict:
  """Samples every case once per UNet and renders it with each decoder;
  ``{combo: (N, H, W, 3) uint8}``.

  One :class:`~seamless_jax.inpaint.Inpainter` per UNet (one compiled sampler);
  :meth:`~seamless_jax.inpaint.Inpainter.decode` renders the same final latents with the base
  VAE and with the base encoder + each fine-tuned decoder (what ``Inpainter.load(..., vae=run)``
  assembles), so the rows of one UNet differ only by the decoder.
  """
  fine_tuned = {name: loading.load_vae(paths.run(run), dtype=scale.dtype)[1]
                for name, run in DECODER_RUNS.items()}
  batch = min(len(cases), DEVICE_BATCH[scale.name == "sd15"])
  outputs = {}
  for unet in UNETS:
    pipe = inpaint.Inpainter.load(paths.run(unet), dtype=scale.dtype)
    decoders = {"base": pipe.params["vae"]}
    decoders.update({name: jax.device_put(loading.with_decoder(pipe.pipeline.vae_params, p))
                     for name, p in fine_tuned.items()})
    rendered, sample_s, compile_s = {name: [] for name in decoders}, 0.0, 0.0
    for start in range(0, len(cases), CALL_CASES):  # bounded host memory per call
      part = cases[start:start + CALL_CASES]
      generation = pipe.generate(
          [images[c["image"]] for c in part],
          [masks.mask_image_from_keep(c["keep"]) for c in part], "scenery",
          num_inference_steps=scale.num_inference_steps, guidance_scale=scale.guidance_scale,
          seed=[1000 * c["seed"] + start + i for i, c in enumerate(part)], batch_size=batch)
      sample_s, compile_s = sample_s + pipe.stats.sample_s, compile_s + pipe.stats.compile_s
      for name, params in decoders.items():
        rendered[name].append(pipe.decode(generation, params, batch_size=batch))
    print(f"  bld {unet}: {len(cases)} samples, {sample_s:.1f} s sampling, "
          f"{compile_s:.1f} s compile, rendered by {len(decoders)} decoders", flush=True)
    for key, _, combo_unet, decoder in COMBOS:
      if combo_unet == unet:
        outputs[key] = np.concatenate(rendered[decoder])
  return outputs


def _combo(unet: str, decoder: str) -> str:
  return next(key for key, _, u, d in COMBOS if (u, d) == (unet, decoder))


def bld_metrics(images, cases, outputs: dict, lpips_fn=None) -> dict:
  """Per-case rows and summaries per combination and mask kind (the fine-tuned decoders'
  hole PSNR against the base decoder's rendering of the same latents)."""
  results = {}
  for key, label, unet, decoder in COMBOS:
    reference = None if decoder == "base" else outputs[_combo(unet, "base")]
    rows = case_rows(outputs[key], images, cases, reference, lpips_fn)
    results[key] = {"label": label, "unet": unet, "vae": decoder, "rows": rows,
                    "summary": summarize_kinds(rows)}
  return results


def fix_outputs(base: np.ndarray, images: np.ndarray, cases: list[dict]) -> dict:
  """The base row (N, H, W, 3) uint8 after each of :data:`FIXES`: ``{mode: (N, H, W, 3)}``."""
  inputs = images[[c["image"] for c in cases]]
  keep = np.stack([c["keep"] for c in cases])
  return {mode: inpaint.apply_paste_back(mode, base, inputs, keep) for mode, _ in FIXES}


def fix_metrics(images, cases, fixed: dict, base: np.ndarray, lpips_fn=None) -> dict:
  """Rows and summaries of each fix (hole PSNR against the unfixed ``base`` output)."""
  sigma = inpaint.blur_sigma(*images.shape[1:3])
  results = {}
  for mode, label in FIXES:
    rows = case_rows(fixed[mode], images, cases, base, lpips_fn)
    results[mode] = {"label": label, "rows": rows, "summary": summarize_kinds(rows)}
  results["blurred"]["blur_sigma"] = sigma
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

def vae_only(paths, scale, images: np.ndarray, seeds, lpips_fn=None) -> dict:
  """Eq. 6 blends of the held-out images decoded by each of :data:`DECODERS`.

  Returns ``{'rows': [...], 'summary': {decoder: {kind: summary}}, 'paired': ..., 'cases',
  'outputs'}`` with decoders ``base`` / ``eq6`` / ``control`` (the base encoder + that
  decoder on the blend) and ``plain`` (base VAE, no blend: D(E(x)), the reconstruction floor).
  """
  vae, base_params = loading.load_vae(paths.base, dtype=scale.dtype)
  decoders = {"base": base_params}
  decoders.update({name: loading.with_decoder(
      base_params, loading.load_vae(paths.run(run), dtype=scale.dtype)[1])
                   for name, run in DECODER_RUNS.items()})

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
  decoded = {}
  for name, params in decoders.items():
    outs = []
    for start in range(0, len(cases), 32):
      part = cases[start:start + 32]
      keep = np.stack([c["keep"] for c in part])[..., None].astype(np.float32)
      outs.append(to_uint8(blend_decode(base_params, params, x[[c["image"] for c in part]],
                                        keep)))
    decoded[name] = np.concatenate(outs)
  decoded["plain"] = recon[[c["image"] for c in cases]]
  by_decoder = {}
  for name, outs in decoded.items():
    reference = None if name in ("base", "plain") else decoded["base"]
    by_decoder[name] = case_rows(outs, images, cases, reference, lpips_fn)
    for row, case, output in zip(by_decoder[name], cases, outs):
      row["decoder"] = name
      row["psnr_all"] = _psnr(output, images[case["image"]])
  return {"rows": [r for rows in by_decoder.values() for r in rows],
          "summary": {name: summarize_kinds(rows) for name, rows in by_decoder.items()},
          "paired": paired_table(by_decoder, VAE_PAIRS), "cases": cases, "outputs": decoded,
          "by_decoder": by_decoder}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0 ** 2
  return float(10 * np.log10(1.0 / max(mse, 1e-12)))


# ============================================================================ driver

def largest_seams(cases: list[dict], rows: list[dict]) -> list[int]:
  """``EXAMPLES`` cases of each kind with the largest seam step in ``rows`` (one per case:
  the base decoder's), on distinct images where there are enough."""
  chosen = []
  for kind in KINDS:
    pool = [i for i, c in enumerate(cases) if c["kind"] == kind]
    pool.sort(key=lambda i: -np.nan_to_num(rows[i]["seam_step"], nan=-np.inf))
    picked, images = [], set()
    for i in pool:  # distinct images first, then the rest by seam
      if cases[i]["image"] not in images:
        picked.append(i)
        images.add(cases[i]["image"])
    picked += [i for i in pool if i not in picked]
    chosen += picked[:EXAMPLES]
  return chosen


def example_arrays(prefix: str, images, cases, chosen: list[int], base: np.ndarray,
                   outputs: dict) -> dict:
  """The figure's arrays of the ``chosen`` cases: ``{prefix}truth``, ``{prefix}keep``,
  ``{prefix}kind``, ``{prefix}centre`` (the close-up centre: where ``base``'s seam is
  largest, :func:`seam_centre`), and ``{prefix}{name}`` for each of ``outputs``."""
  side = closeup_side(images.shape[1])
  arrays = {f"{prefix}truth": np.stack([images[cases[i]["image"]] for i in chosen]),
            f"{prefix}keep": np.stack([cases[i]["keep"] for i in chosen]),
            f"{prefix}kind": np.asarray([cases[i]["kind"] for i in chosen]),
            f"{prefix}centre": np.asarray([seam_centre(base[i], cases[i]["keep"], side)
                                           for i in chosen])}
  arrays.update({f"{prefix}{name}": out[chosen] for name, out in outputs.items()})
  return arrays


def _lpips(args):
  """The LPIPS function of ``--lpips`` (None without weights: no LPIPS column)."""
  return lpips_lib.load_lpips_fn(args.lpips) if getattr(args, "lpips", "") else None


def evaluate_ablation(paths, scale, args) -> dict:
  """Runs the measurements; writes ``eval/results.json`` and ``eval/examples.npz``."""
  os.makedirs(paths.eval, exist_ok=True)
  images = read_eval_images(paths.eval_images, scale.resolution, scale.eval_images)
  print(f"  eval: {len(images)} held-out images from {paths.eval_images}", flush=True)
  lpips_fn = _lpips(args)
  vae_result = vae_only(paths, scale, images, scale.vae_eval_seeds, lpips_fn)
  cases = make_cases(images, scale.eval_seeds, 8)
  outputs = run_bld(paths, scale, images, cases)
  bld = bld_metrics(images, cases, outputs, lpips_fn)
  fixed = fix_outputs(outputs["base"], images, cases)
  fixes = fix_metrics(images, cases, fixed, outputs["base"], lpips_fn)
  add_quality_scores(bld, images, cases, outputs, args)
  chosen = largest_seams(cases, bld["base"]["rows"])
  arrays = example_arrays("", images, cases, chosen, outputs["base"],
                          {**{f"bld_{k}": v for k, v in outputs.items()},
                           **{f"fix_{k}": v for k, v in fixed.items()}})
  vae_cases = vae_result["cases"]
  vae_chosen = largest_seams(vae_cases, vae_result["by_decoder"]["base"])
  arrays.update(example_arrays("vae_", images, vae_cases, vae_chosen,
                               vae_result["outputs"]["base"], vae_result["outputs"]))
  np.savez_compressed(os.path.join(paths.eval, "examples.npz"), **arrays)
  results = {"scale": scale.name, "num_images": int(len(images)),
             "seeds": list(scale.eval_seeds), "vae_seeds": list(scale.vae_eval_seeds),
             "num_inference_steps": scale.num_inference_steps,
             "guidance_scale": scale.guidance_scale, "lpips": bool(lpips_fn), "bld": bld,
             "fixes": fixes,
             "paired": paired_table({k: v["rows"] for k, v in bld.items()}, BLD_PAIRS),
             "vae_only": {k: vae_result[k] for k in ("rows", "summary", "paired")}}
  with open(os.path.join(paths.eval, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  return results
