"""The ablation's report: a Markdown page with the Table 4 layout, training curves and close-ups.

``write_report(paths, scale, report_path)`` reads ``eval/results.json``, ``timings.json``,
``ablation_args.json`` and every run's ``metrics.jsonl`` under the experiment workdir and writes
``report_path`` plus four PNGs beside it (``<stem>_curves.png``, ``<stem>_closeups.png``,
``<stem>_fixes.png``, ``<stem>_vae.png``). Needs matplotlib (``pip install
seamless_jax[experiments]``). The close-ups show the cases where the base decoder's seam step is
largest, cropped where its seam is largest (the same crop in every column), enlarged without
smoothing, with a strip of each pixel's largest colour difference to its 4 neighbours below.
A ``<stem>_notes.md`` file beside the report, when present, is inserted as its discussion.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from seamless_jax.experiments import evaluate
from seamless_jax.experiments import scales as scales_lib

# Paper, Table 4 (+ the BLD row of Table 1): BrushBench inpainting, SD-1.5, 512 px.
PAPER_TABLE4 = {"base": (18.466, 5.367, 15.735), "vae_only": (16.835, 5.725, 15.354),
                "two_step_only": (17.081, 5.576, 16.080), "both": (15.434, 5.991, 8.538)}
RUN_CURVES = (("base_vae", "Base VAE (plain reconstruction): L1", ("l1",)),
              ("base_unet", "Base UNet (standard v-prediction)", ("loss",)),
              ("eq6_vae", "Eq. 6 decoder fine-tune: L1 of Eq. 6 blends", ("l1",)),
              ("plain_vae", "Plain decoder fine-tune (control): L1 of D(E(x))", ("l1",)),
              ("standard", "UNet fine-tune: standard", ("loss",)),
              ("two_step", "UNet fine-tune: two-step",
               ("loss_first_step", "loss_second_step", "loss")))


def read_metrics(path: str) -> list[dict]:
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _read_json(path: str, default=None):
  if not os.path.isfile(path):
    return default
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
  if len(values) < window or window <= 1:
    return values
  kernel = np.ones(window) / window
  return np.convolve(values, kernel, mode="valid")


# ============================================================================ figures

def plot_curves(paths, out_path: str) -> list[str]:
  """Loss curves of every run (and in-training CD keys when logged); returns the CD keys."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  runs = [(stage, title, keys, read_metrics(os.path.join(paths.run(stage), "metrics.jsonl")))
          for stage, title, keys in RUN_CURVES]
  runs = [r for r in runs if r[3]]
  cd_keys = sorted({k for _, _, _, rows in runs for row in rows for k in row
                    if "cd" in k.lower() and k != "cd_truth"})
  if any("excess" in k for k in cd_keys):  # the excess CD is the comparable one
    cd_keys = [k for k in cd_keys if "excess" in k]
  panels = len(runs) + (1 if cd_keys else 0) + (1 if {"standard", "two_step"} <= {
      r[0] for r in runs} else 0)
  cols = 3
  fig, axes = plt.subplots((panels + cols - 1) // cols, cols, figsize=(5 * cols, 3.4 * (
      (panels + cols - 1) // cols)), squeeze=False)
  axes = axes.ravel()
  for ax, (stage, title, keys, rows) in zip(axes, runs):
    for key in keys:
      pts = [(r["step"], r[key]) for r in rows if key in r and np.isfinite(r[key])]
      if pts:
        steps, values = map(np.asarray, zip(*pts))
        ax.plot(steps, values, label=key, alpha=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    if all(r[k] > 0 for r in rows for k in keys if k in r):
      ax.set_yscale("log")
    ax.legend(fontsize=8)
  used = len(runs)
  by_stage = {r[0]: r[3] for r in runs}
  if {"standard", "two_step"} <= set(by_stage):
    ax = axes[used]
    for stage, key in (("standard", "loss"), ("two_step", "loss_first_step")):  # L1 of each
      pts = [(r["step"], r[key]) for r in by_stage[stage] if key in r]
      if pts:
        steps, values = map(np.asarray, zip(*pts))
        window = max(1, len(values) // 10)
        ax.plot(steps[window - 1:] if window > 1 else steps, _smooth(values, window),
                label=f"{stage}: L1 (v-pred. MSE)")
    ax.set_title("UNet fine-tunes: the shared term L1 (smoothed)", fontsize=10)
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    used += 1
  if cd_keys:
    ax = axes[used]
    for stage, _, _, rows in runs:
      for key in cd_keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
          steps, values = map(np.asarray, zip(*pts))
          ax.plot(steps, values, marker="o", label=f"{stage}: {key}")
    ax.set_title("In-training seam CD (the loop's fixed sample batch)", fontsize=10)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    used += 1
  for ax in axes[used:]:
    ax.axis("off")
  fig.tight_layout()
  save_figure(fig, out_path, dpi=90)
  plt.close(fig)
  return cd_keys


def save_figure(fig, path: str, dpi: int) -> None:
  """PNG with a 256-colour palette (a quarter of the bytes of full RGB for these figures)."""
  fig.savefig(path, dpi=dpi)
  with Image.open(path) as img:
    palette = img.convert("RGB").quantize(256)
  palette.save(path, optimize=True)


def crop_around(image: np.ndarray, centre: tuple[int, int], size: int) -> np.ndarray:
  h, w = image.shape[:2]
  top = int(np.clip(centre[0] - size // 2, 0, h - size))
  left = int(np.clip(centre[1] - size // 2, 0, w - size))
  return image[top:top + size, left:left + size]


def outline(image: np.ndarray, keep: np.ndarray, darken: bool = True) -> np.ndarray:
  """``image`` with the mask border drawn in red (and the hole darkened)."""
  out = image.astype(np.float32).copy()
  k = keep.astype(bool)
  if darken:
    out[~k] *= 0.35
  edge = np.zeros_like(k)
  edge[:-1] |= k[:-1] != k[1:]
  edge[:, :-1] |= k[:, :-1] != k[:, 1:]
  out[edge] = (255, 0, 0)
  return out.astype(np.uint8)


def neighbour_difference(image: np.ndarray) -> np.ndarray:
  """(H, W): each pixel's largest Euclidean RGB distance (0–255 scale) to its 4 neighbours of
  ``image`` (H, W, 3): edges light up, a seam is a line along the mask border."""
  x = np.asarray(image, np.float64)
  out = np.zeros(x.shape[:2])
  for axis in (0, 1):
    step = np.sqrt(np.sum(np.diff(x, axis=axis) ** 2, axis=-1))
    head = [slice(None)] * 2
    tail = [slice(None)] * 2
    head[axis], tail[axis] = slice(0, -1), slice(1, None)
    out[tuple(head)] = np.maximum(out[tuple(head)], step)
    out[tuple(tail)] = np.maximum(out[tuple(tail)], step)
  return out


def plot_closeups(truth, keep, centres, columns: list[tuple[str, np.ndarray]], out_path: str,
                  title: str) -> None:
  """Per case (``truth`` (n, H, W, 3), ``keep`` (n, H, W), ``centres`` (n, 2)): the full image,
  a close-up around its centre and the close-up's :func:`neighbour_difference` (one grey scale
  per case); columns: the input, then ``columns`` ``(name, (n, H, W, 3))``. Every panel is
  drawn with nearest-neighbour enlargement."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  n, size = len(truth), truth.shape[1]
  zoom = evaluate.closeup_side(size)
  cols = 1 + len(columns)
  fig, axes = plt.subplots(3 * n, cols, figsize=(2.1 * cols, 2.1 * 3 * n), squeeze=False)
  for i in range(n):
    centre = tuple(int(c) for c in centres[i])
    panels = [("input (hole dark, border red)", outline(truth[i], keep[i]))] + [
        (name, images[i]) for name, images in columns]
    crops = [crop_around(image if j else truth[i], centre, zoom)
             for j, (_, image) in enumerate(panels)]
    strips = [neighbour_difference(crop) for crop in crops]
    top = max(float(np.percentile(np.concatenate([s.ravel() for s in strips]), 99)), 1.0)
    for j, (name, image) in enumerate(panels):
      axes[3 * i, j].imshow(image, interpolation="nearest")
      axes[3 * i + 1, j].imshow(outline(crops[j], crop_around(keep[i], centre, zoom), False)
                                if j == 0 else crops[j], interpolation="nearest")
      axes[3 * i + 2, j].imshow(strips[j], cmap="gray", vmin=0, vmax=top,
                                interpolation="nearest")
      if i == 0:
        axes[0, j].set_title(name, fontsize=8)
      for ax in axes[3 * i:3 * i + 3, j]:
        ax.set_xticks([])
        ax.set_yticks([])
    h0 = np.clip(centre[0] - zoom // 2, 0, size - zoom)
    w0 = np.clip(centre[1] - zoom // 2, 0, size - zoom)
    for j in range(cols):
      axes[3 * i, j].add_patch(matplotlib.patches.Rectangle(
          (w0 - 0.5, h0 - 0.5), zoom, zoom, fill=False, edgecolor="yellow", linewidth=1))
    axes[3 * i + 1, 0].set_ylabel("close-up", fontsize=8)
    axes[3 * i + 2, 0].set_ylabel("diff. to neighbours", fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the title
  save_figure(fig, out_path, dpi=80)
  plt.close(fig)


# ============================================================================ Markdown

VAE_LABELS = {"plain": "Base VAE, no blend: D(E(x))", "base": "Eq. 6 blend, base decoder",
              "eq6": "Eq. 6 blend, Eq. 6 decoder",
              "control": "Eq. 6 blend, plain fine-tuned decoder (control)"}
MIN_CASES = 10  # fewer paired cases than this: no verdict on an effect (the smoke scale)
METRIC_TITLES = {"cd": "CD", "excess_cd": "excess CD ↓", "seam_step": "seam step ↓",
                 "psnr_kept": "PSNR kept ↑", "lpips_kept": "LPIPS kept ↓",
                 "psnr_all": "PSNR all ↑", "psnr_hole": "PSNR hole vs unfixed"}


def _fmt(summary: dict, key: str, digits: int = 2) -> str:
  if key not in summary:
    return "–"
  if np.isinf(summary[key]):
    return "∞"
  spread = summary.get(key + "_seed_std")
  value = f"{summary[key]:.{digits}f}"
  return f"{value} ± {spread:.{digits}f}" if spread else value


def _title(metric: str) -> str:
  """The metric's column title without its arrow."""
  return METRIC_TITLES[metric].rstrip(" ↑↓")


def _diff(p: dict, digits: int = 2) -> str:
  """A paired difference: mean ± standard error."""
  if not p["n"]:
    return "–"
  return f"{p['mean']:+.{digits}f} ± {p['sem']:.{digits}f}"


def _labels() -> dict:
  return {key: label for key, label, _, _ in evaluate.COMBOS}


def _is_effect(a: str, b: str, decoder_of: dict) -> bool:
  """Whether ``a − b`` is Eq. 6 − plain fine-tune (the same UNet): the method's effect."""
  return (decoder_of.get(a, a), decoder_of.get(b, b)) == ("eq6", "control")


def table4(results: dict) -> list[str]:
  """The Table 4 layout (one row per combination), paper numbers beside ours."""
  bld = results["bld"]
  lines = ["| Models | Paper FID ↓ | Paper AS ↑ | Paper CD ↓ | "
           "Inpaint CD ↓ | excess CD ↓ | seam step ↓ | PSNR kept ↑ | FID ↓ | AS ↑ | "
           "Outpaint CD ↓ | excess CD ↓ | seam step ↓ | PSNR kept ↑ |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for key, label, _, _ in evaluate.COMBOS:
    paper = (f"{v:.3f}" for v in PAPER_TABLE4[key]) if key in PAPER_TABLE4 else ["–"] * 3
    s_in, s_out = bld[key]["summary"]["inpaint"], bld[key]["summary"]["outpaint"]
    cells = ([_fmt(s_in, k) for k in ("cd", "excess_cd", "seam_step", "psnr_kept", "fid", "as")]
             + [_fmt(s_out, k) for k in ("cd", "excess_cd", "seam_step", "psnr_kept")])
    lines.append(f"| {label} | " + " | ".join(list(paper) + cells) + " |")
  return lines


def paired_lines(paired: dict, labels: dict, decoder_of: dict) -> list[str]:
  """Table of paired differences (rows ``'a-b'`` of ``paired``; mean ± standard error)."""
  first = next(iter(paired.values()))
  found = [m for m in evaluate.PAIRED_METRICS if m in first]
  lines = ["| a − b | " + " | ".join(f"{kind} Δ {_title(m)}" for kind in evaluate.KINDS
                                      for m in found) + " | n |",
           "|---|" + "---|" * (len(found) * len(evaluate.KINDS) + 1)]
  for name, table in paired.items():
    a, b = name.split("-")
    label = f"{labels[a]} − {labels[b]}"
    if _is_effect(a, b, decoder_of):
      label = f"**{label}: the method's effect**"
    cells = [_diff(table[m][kind]) for kind in evaluate.KINDS for m in found]
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {table[found[0]]['inpaint']['n']} |")
  return lines


def effect_statements(paired: dict, labels: dict, decoder_of: dict) -> list[str]:
  """What each Eq. 6 − plain difference says, next to Eq. 6 − base: an effect is a mean more
  than two standard errors from 0; where the control's difference is not, but the one to the
  base decoder is, the control removes the effect."""
  lines = []
  for name, table in paired.items():
    a, b = name.split("-")
    if not _is_effect(a, b, decoder_of):
      continue
    vs_base = next(k for k in paired if k.startswith(f"{a}-") and
                   decoder_of.get(k.split("-")[1], k.split("-")[1]) == "base")
    for metric in ("excess_cd", "seam_step"):
      for kind in evaluate.KINDS:
        ctrl, base = table[metric][kind], paired[vs_base][metric][kind]
        if not ctrl["n"]:
          continue
        real = abs(ctrl["mean"]) > 2 * ctrl["sem"]
        base_real = base["n"] and abs(base["mean"]) > 2 * base["sem"]
        what = (f"{labels[a]} − {labels[b]}, {kind} {_title(metric)}: "
                f"{_diff(ctrl)} (n = {ctrl['n']}, lower in {100 * ctrl['fraction_lower']:.0f} %"
                f" of the cases; vs the base decoder {_diff(base)})")
        if ctrl["n"] < MIN_CASES:
          verdict = f"too few cases for a verdict (fewer than {MIN_CASES})"
        elif real:
          verdict = ("an effect of training on blends beyond the extra training"
                     if ctrl["mean"] < 0 else "worse than the control")
        elif base_real:
          verdict = ("within two standard errors of 0: **the control removes the effect** "
                     "(the difference to the base decoder comes from the extra training)")
        else:
          verdict = "within two standard errors of 0, as is the difference to the base decoder"
        lines.append(f"- {what}: {verdict}.")
  return lines


def fixes_table(results: dict) -> list[str]:
  """Base row + each post-hoc fix, and the fine-tuned decoders without any (standard UNet)."""
  bld, fixes = results["bld"], results["fixes"]
  rows = [("Base (BLD), no fix", bld["base"]["summary"])]
  rows += [(fix["label"] + (f" (σ = {fix['blur_sigma']:g} px)" if "blur_sigma" in fix else ""),
            fix["summary"]) for fix in (fixes[mode] for mode, _ in evaluate.FIXES)]
  rows += [(f"{bld[key]['label']}, no fix", bld[key]["summary"])
           for key in ("vae_only", "vae_control")]
  keys = ("cd", "excess_cd", "seam_step", "psnr_kept", "lpips_kept", "psnr_hole")
  lines = ["| Output | " + " | ".join(f"{kind.capitalize() if i == 0 else ''} "
                                      f"{METRIC_TITLES[k]}".strip()
                                      for kind in evaluate.KINDS
                                      for i, k in enumerate(keys)) + " |",
           "|---|" + "---|" * (2 * len(keys))]
  for label, summary in rows:
    cells = [_fmt(summary[kind], k) if k != "psnr_hole" or k in summary[kind] else "(reference)"
             for kind in evaluate.KINDS for k in keys]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return lines


def vae_table(results: dict) -> list[str]:
  """The VAE-alone rows (no blend, then the blend decoded by each decoder) and their paired
  differences."""
  vae = results["vae_only"]
  keys = ("cd", "excess_cd", "seam_step", "psnr_kept", "psnr_all")
  lines = ["| Decoding | " + " | ".join(f"{kind.capitalize() if i == 0 else ''} "
                                        f"{METRIC_TITLES[k]}".strip()
                                        for kind in evaluate.KINDS
                                        for i, k in enumerate(keys)) + " |",
           "|---|" + "---|" * (2 * len(keys))]
  for name in ("plain",) + evaluate.DECODERS:
    cells = [_fmt(vae["summary"][name][kind], k) for kind in evaluate.KINDS for k in keys]
    lines.append(f"| {VAE_LABELS[name]} | " + " | ".join(cells) + " |")
  labels = {name: VAE_LABELS[name].split(", ")[-1] for name in evaluate.DECODERS}
  decoder_of = {name: name for name in evaluate.DECODERS}
  lines += ["", "Paired by case (same image, mask and seed; mean ± standard error over the "
            "cases):", ""]
  lines += paired_lines(vae["paired"], labels, decoder_of)
  lines += [""] + effect_statements(vae["paired"], labels, decoder_of)
  return lines


def ordering_statement(results: dict) -> list[str]:
  """What ordering (inpaint and outpaint) we measured vs the paper's CD ordering (the four
  rows of the paper's Table 4)."""
  bld = {key: results["bld"][key] for key in PAPER_TABLE4}
  paper = sorted(PAPER_TABLE4, key=lambda k: PAPER_TABLE4[k][2])
  label = _labels()
  lines = [f"- Paper (CD, inpaint): {' < '.join(label[k] for k in paper)}."]
  for metric, title in (("excess_cd", "excess CD"), ("seam_step", "seam step")):
    for kind in evaluate.KINDS:
      ours = sorted(bld, key=lambda k: bld[k]["summary"][kind][metric])
      deltas = ", ".join(
          f"{label[k]} {bld[k]['summary'][kind][metric] - bld['base']['summary'][kind][metric]:+.2f}"
          for k in ("vae_only", "two_step_only", "both"))
      same = metric == "excess_cd" and ours == paper  # the seam step is not what CD ranks
      lines.append(f"- Ours ({title}, {kind}): {' < '.join(label[k] for k in ours)}"
                   f"{' (the same ordering)' if same else ''}; vs base: {deltas}.")
  return lines


def training_summary(paths) -> str:
  """``stage steps x batch @ lr`` of every run that has a saved config."""
  parts = []
  for stage, _, _ in RUN_CURVES:
    config = _read_json(os.path.join(paths.run(stage), "config.json"))
    if config:
      parts.append(f"{stage} {config['total_steps']} x {config['batch_size']} @ "
                   f"{config['learning_rate']:g}")
  return ", ".join(parts) or "no runs"


def write_figures(paths, folder: str, stem: str) -> dict:
  """The report's PNGs beside it; ``{'curves', 'closeups', 'fixes', 'vae': file name,
  'cd_keys': in-training CD keys}``."""
  names = {kind: f"{stem}_{kind}.png" for kind in ("curves", "closeups", "fixes", "vae")}
  names["cd_keys"] = plot_curves(paths, os.path.join(folder, names["curves"]))
  ex = np.load(os.path.join(paths.eval, "examples.npz"))
  plot_closeups(ex["truth"], ex["keep"], ex["centre"],
                [(label, ex[f"bld_{key}"]) for key, label, _, _ in evaluate.COMBOS],
                os.path.join(folder, names["closeups"]),
                "BLD at the mask border, where the base decoder's seam is largest")
  plot_closeups(ex["truth"], ex["keep"], ex["centre"],
                [("Base (BLD), no fix", ex["bld_base"])]
                + [(label, ex[f"fix_{mode}"]) for mode, label in evaluate.FIXES]
                + [(_labels()[key], ex[f"bld_{key}"]) for key in ("vae_only", "vae_control")],
                os.path.join(folder, names["fixes"]),
                "Post-hoc fixes of the base row vs the fine-tuned decoders (standard UNet)")
  plot_closeups(ex["vae_truth"], ex["vae_keep"], ex["vae_centre"],
                [(VAE_LABELS[name], ex[f"vae_{name}"]) for name in ("plain",) + evaluate.DECODERS],
                os.path.join(folder, names["vae"]),
                "The VAE alone: decoding an Eq. 6 blend (largest base-decoder seams)")
  return names


def write_report(paths, scale, report_path: str) -> str:
  """Writes the Markdown report and its figures; returns the report path."""
  results = _read_json(os.path.join(paths.eval, "results.json"))
  if results is None:
    raise FileNotFoundError(f"{paths.eval}/results.json is missing: run the 'eval' stage first")
  if "fixes" not in results:
    raise ValueError(f"{paths.eval}/results.json predates the plain fine-tune control and the "
                     "post-hoc fixes: rerun the 'plain_vae' and 'eval' stages")
  folder = os.path.dirname(os.path.abspath(report_path))
  stem = os.path.splitext(os.path.basename(report_path))[0]
  os.makedirs(folder, exist_ok=True)
  figures = write_figures(paths, folder, stem)
  lines = (_setup_lines(paths, scale, results) + _table4_lines(results)
           + _fixes_lines(results, figures) + _vae_and_figure_lines(results, figures))
  notes_path = os.path.join(folder, f"{stem}_notes.md")
  if os.path.isfile(notes_path):
    with open(notes_path, encoding="utf-8") as f:
      lines += ["## Discussion", "", f.read().strip(), ""]
  with open(report_path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return report_path


def _setup_lines(paths, scale, results) -> list[str]:
  """Title, the commands that made the run, and its set-up (data, training, wall time)."""
  timings = _read_json(paths.timings, {})
  info = _read_json(os.path.join(paths.root, "ablation_args.json"), {})
  lines = [f"# Ablation (paper Table 4) at scale `{scale.name}`", "",
           "Generated by `python -m seamless_jax.experiments.ablation` "
           "(`seamless_jax/experiments/`); rerun it to regenerate this page.", "",
           "## Commands", "", "```"]
  commands = [" ".join(["python -m seamless_jax.experiments.ablation"] + argv[1:])
              for argv in info.get("commands", [info.get("argv", [])])]
  lines += list(dict.fromkeys(commands))  # each distinct command once, in first-run order
  lines += ["```", "",
           "## Setup", "",
           f"- Hardware: {info.get('hardware', 'unknown')}.",
           f"- Resolution {scale.resolution} px; evaluation on {results['num_images']} "
           f"held-out images, inpaint and outpaint masks ({evaluate.EVAL_AREA[0]:.0%}–"
           f"{evaluate.EVAL_AREA[1]:.0%} of the image), BLD with DDIM "
           f"{results['num_inference_steps']} steps, guidance {results['guidance_scale']}, "
           f"prompt \"scenery\", no paste-back; seeds {results['seeds']} (each seed draws its "
           "own masks and noise; ± = std of the per-seed means).",
           f"- Training data: the demo photos except the held-out ones "
           f"({', '.join(scales_lib.EVAL_PHOTOS)}), every variant plus {scale.tiles_per_image} "
           "random crops of each.",
           "- Training (steps x batch, learning rate, from each run's config.json): "
           + training_summary(paths) + ". The plain fine-tune (control) trains the same decoder "
           "as the Eq. 6 one, with the same steps, batch, learning rate, data and seed, on "
           "ordinary reconstructions D(E(x)).",
           "- Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
           + f"; total {sum(timings.values()) / 60:.1f} min.", "",
           "## Table 4 layout", "",
           "Paper: BrushBench inpainting, SD-1.5, 512 px (the base row is BLD from Table 1). "
           "Ours: CD on the 0–255 scale as the paper defines it; *excess CD* = CD(output) − "
           "CD(ground truth) on the same border (0 = as smooth as the real photo); *seam step* "
           "= the colour step across the border minus the mean of the steps just beside it "
           "(inside the kept region and inside the hole; 0 = no edge that exists only on the "
           "border; unlike CD it does not reward a blurrier output); PSNR of the kept region "
           "against the input. FID/AS only when their weights were given.", ""]
  return lines


def _table4_lines(results) -> list[str]:
  """Table 4 with the control rows, the paired differences and what they say."""
  labels = _labels()
  decoder_of = {key: decoder for key, _, _, decoder in evaluate.COMBOS}
  lines = list(table4(results))
  lines += ["", "Rows: base = standard-objective UNet + base decoder; Fine-tune VAE = the same "
            "UNet + Eq. 6 decoder; Plain fine-tune VAE = the same UNet + the control decoder; "
            "Two-step = two-step UNet + base decoder; Ours = both; the last row is the "
            "two-step UNet + the control decoder. The two UNets are fine-tuned from the same "
            "base for the same steps and batch; for one UNet the decoders render the same "
            "latents.", "",
            "Paired differences (same image, mask and seed; mean ± standard error over the "
            "cases). Eq. 6 − plain fine-tune is the method's effect; Eq. 6 − base also "
            "contains the extra training:", ""]
  lines += paired_lines(results["paired"], labels, decoder_of)
  lines += [""] + effect_statements(results["paired"], labels, decoder_of)
  return lines


def _fixes_lines(results, figures) -> list[str]:
  """The base row after each post-hoc fix, beside the fine-tuned decoders."""
  lines = []
  sigma = results["fixes"]["blurred"]["blur_sigma"]
  lines += ["", "## Post-hoc fixes", "",
            "The base row after the fixes people use today, beside the fine-tuned decoders "
            "without any (standard UNet, same cases). Paste-back copies the known pixels of "
            "the input over the output; blurred paste-back weights the input by keep · G(keep) "
            f"(Gaussian, σ = {sigma:g} px = 1/128 of the side, at least 1; diffusers' "
            "`mask_blur` + `apply_overlay`, BrushNet's 21×21 blurred blending); Poisson "
            "blending is OpenCV's `seamlessClone` of the generated region into the input "
            "(`seamless_jax.inpaint.apply_paste_back`). *PSNR hole vs unfixed*: the generated "
            "region against the base row's (∞: untouched; for the decoders: the same latents "
            "rendered by the base decoder); PSNR kept ∞: the input's pixels exactly. LPIPS "
            "(kept region, generated pixels blacked out) "
            + ("with the `--lpips` weights." if results.get("lpips") else
               "only with `--lpips` weights (none given)."), ""]
  lines += fixes_table(results)
  lines += ["", f"![Post-hoc fixes]({figures['fixes']})", ""]
  return lines


def _vae_and_figure_lines(results, figures) -> list[str]:
  """The VAE-alone table, the ordering, the close-ups and the training curves."""
  lines = ["## The VAE alone (Eq. 6 blends of held-out images)", "",
           f"Mask seeds {results['vae_seeds']}; posterior means; ± = std of the per-seed "
           "means.", ""]
  lines += vae_table(results)
  lines += ["", f"![VAE close-ups]({figures['vae']})", "",
            "## Ordering", ""]
  lines += ordering_statement(results)
  cd_keys = figures["cd_keys"]
  lines += ["", "## Figures", "",
            "Close-ups: the cases where the base decoder's seam step is largest, cropped where "
            "its seam is largest (the same crop in every column), enlarged without smoothing; "
            "below each, every pixel's largest colour difference to its 4 neighbours (one grey "
            "scale per case: a seam is a bright line along the border).", "",
            f"![Border close-ups]({figures['closeups']})", "",
            f"Training curves{' (with in-training seam CD: ' + ', '.join(cd_keys) + ')' if cd_keys else ' (no in-training CD was logged by these runs)'}:",
            "", f"![Training curves]({figures['curves']})", ""]
  return lines
