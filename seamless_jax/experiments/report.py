"""The ablation's report: a Markdown page with the Table 4 layout, training curves and close-ups.

``write_report(paths, scale, report_path)`` reads ``eval/results.json``, ``timings.json``,
``ablation_args.json`` and every run's ``metrics.jsonl`` under the experiment workdir and writes
``report_path`` plus three PNGs beside it (``<stem>_curves.png``, ``<stem>_closeups.png``,
``<stem>_vae.png``). Needs matplotlib (``pip install seamless_jax[experiments]``).
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


def border_point(keep: np.ndarray) -> tuple[int, int]:
  """The border pixel (a kept pixel with a generated 4-neighbour) nearest the image centre."""
  k = keep.astype(bool)
  border = np.zeros_like(k)
  border[:-1] |= k[:-1] != k[1:]
  border[1:] |= k[:-1] != k[1:]
  border[:, :-1] |= k[:, :-1] != k[:, 1:]
  border[:, 1:] |= k[:, :-1] != k[:, 1:]
  ys, xs = np.nonzero(border & k)
  h, w = k.shape
  i = int(np.argmin((ys - h / 2) ** 2 + (xs - w / 2) ** 2))
  return int(ys[i]), int(xs[i])


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


def plot_closeups(truth, keep, columns: list[tuple[str, np.ndarray]], out_path: str,
                  title: str) -> None:
  """Rows: each case in full and a close-up at its border; columns: input, then ``columns``."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  n, size = len(truth), truth.shape[1]
  zoom = max(16, size // 4)
  cols = 1 + len(columns)
  fig, axes = plt.subplots(2 * n, cols, figsize=(2.1 * cols, 2.1 * 2 * n), squeeze=False)
  for i in range(n):
    centre = border_point(keep[i])
    panels = [("input (hole dark, border red)", outline(truth[i], keep[i]))] + [
        (name, images[i]) for name, images in columns]
    for j, (name, image) in enumerate(panels):
      axes[2 * i, j].imshow(image)
      axes[2 * i + 1, j].imshow(crop_around(image if j else outline(truth[i], keep[i], False),
                                            centre, zoom),
                                interpolation="nearest")
      if i == 0:
        axes[0, j].set_title(name, fontsize=8)
      for ax in (axes[2 * i, j], axes[2 * i + 1, j]):
        ax.set_xticks([])
        ax.set_yticks([])
    h0 = np.clip(centre[0] - zoom // 2, 0, size - zoom)
    w0 = np.clip(centre[1] - zoom // 2, 0, size - zoom)
    for j in range(cols):
      axes[2 * i, j].add_patch(matplotlib.patches.Rectangle(
          (w0 - 0.5, h0 - 0.5), zoom, zoom, fill=False, edgecolor="yellow", linewidth=1))
    axes[2 * i + 1, 0].set_ylabel("close-up", fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the title
  save_figure(fig, out_path, dpi=80)
  plt.close(fig)


# ============================================================================ Markdown

def _fmt(summary: dict, key: str, digits: int = 2) -> str:
  if key not in summary:
    return "–"
  spread = summary.get(key + "_seed_std")
  value = f"{summary[key]:.{digits}f}"
  return f"{value} ± {spread:.{digits}f}" if spread else value


def table4(results: dict) -> list[str]:
  """The Table 4 layout (rows = the four combinations), paper numbers beside ours."""
  bld = results["bld"]
  lines = ["| Models | Paper FID ↓ | Paper AS ↑ | Paper CD ↓ | "
           "Inpaint CD ↓ | excess CD ↓ | seam step ↓ | PSNR kept ↑ | FID ↓ | AS ↑ | "
           "Outpaint CD ↓ | excess CD ↓ | seam step ↓ | PSNR kept ↑ |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for key, label, _, _ in evaluate.COMBOS:
    fid_p, as_p, cd_p = PAPER_TABLE4[key]
    s_in, s_out = bld[key]["summary"]["inpaint"], bld[key]["summary"]["outpaint"]
    cells = ([_fmt(s_in, k) for k in ("cd", "excess_cd", "seam_step", "psnr_kept", "fid", "as")]
             + [_fmt(s_out, k) for k in ("cd", "excess_cd", "seam_step", "psnr_kept")])
    lines.append(f"| {label} | {fid_p:.3f} | {as_p:.3f} | {cd_p:.3f} | " + " | ".join(cells)
                 + " |")
  return lines


def vae_table(results: dict) -> list[str]:
  vae = results["vae_only"]
  names = {"plain": "Base VAE, no blend: D(E(x))", "base": "Eq. 6 blend, base decoder",
           "eq6": "Eq. 6 blend, Eq. 6 decoder"}
  keys = ("cd", "excess_cd", "seam_step", "psnr_kept", "psnr_all")
  lines = ["| Decoding | Inpaint CD | excess CD ↓ | seam step ↓ | PSNR kept ↑ | PSNR all ↑ | "
           "Outpaint CD | excess CD ↓ | seam step ↓ | PSNR kept ↑ | PSNR all ↑ |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for name in ("plain", "base", "eq6"):
    s_in, s_out = vae["summary"][name]["inpaint"], vae["summary"][name]["outpaint"]
    cells = [_fmt(s, k) for s in (s_in, s_out) for k in keys]
    lines.append(f"| {names[name]} | " + " | ".join(cells) + " |")
  lines.append("")
  for metric, title in (("excess_cd", "excess CD"), ("seam_step", "seam step")):
    for kind in evaluate.KINDS:
      p = vae["paired"][metric][kind]
      lines.append(f"- {kind}, {title}: drop (base decoder − Eq. 6 decoder, same image, mask "
                   f"and seed) = **{p['mean_drop']:.2f} ± {p['sem']:.2f}** (mean ± standard "
                   f"error over {p['n']} cases, std {p['std_drop']:.2f}); the Eq. 6 decoder is "
                   f"lower in {100 * p['fraction_improved']:.0f} % of them.")
  return lines


def paired_vs_base(results: dict) -> list[str]:
  """Per-case differences to the base row (same image, mask, seed): mean ± standard error."""
  bld = results["bld"]
  lines = ["| Models | Inpaint Δ excess CD | Δ PSNR kept | Outpaint Δ excess CD | "
           "Δ PSNR kept |", "|---|---|---|---|---|"]
  for key, label, _, _ in evaluate.COMBOS[1:]:
    cells = []
    for kind in evaluate.KINDS:
      for metric in ("excess_cd", "psnr_kept"):
        diff = np.asarray([r[metric] - b[metric] for r, b in zip(bld[key]["rows"],
                                                                 bld["base"]["rows"])
                           if r["kind"] == kind])
        sem = diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else 0.0
        cells.append(f"{diff.mean():+.2f} ± {sem:.2f}")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return lines


def ordering_statement(results: dict) -> list[str]:
  """What ordering (inpaint and outpaint) we measured vs the paper's CD ordering."""
  bld = results["bld"]
  paper = sorted(PAPER_TABLE4, key=lambda k: PAPER_TABLE4[k][2])
  label = {key: lab for key, lab, _, _ in evaluate.COMBOS}
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


def write_report(paths, scale, report_path: str) -> str:
  """Writes the Markdown report and its figures; returns the report path."""
  results = _read_json(os.path.join(paths.eval, "results.json"))
  if results is None:
    raise FileNotFoundError(f"{paths.eval}/results.json is missing: run the 'eval' stage first")
  folder = os.path.dirname(os.path.abspath(report_path))
  stem = os.path.splitext(os.path.basename(report_path))[0]
  os.makedirs(folder, exist_ok=True)
  curves, closeups, vae_fig = (f"{stem}_curves.png", f"{stem}_closeups.png", f"{stem}_vae.png")
  cd_keys = plot_curves(paths, os.path.join(folder, curves))
  ex = np.load(os.path.join(paths.eval, "examples.npz"))
  plot_closeups(ex["truth"], ex["keep"],
                [(label, ex[f"bld_{key}"]) for key, label, _, _ in evaluate.COMBOS],
                os.path.join(folder, closeups), "BLD results at the mask border (first seed)")
  plot_closeups(ex["vae_truth"], ex["vae_keep"],
                [("D(E(x)), no blend", ex["vae_plain"]),
                 ("Eq. 6 blend, base decoder", ex["vae_base"]),
                 ("Eq. 6 blend, Eq. 6 decoder", ex["vae_eq6"])],
                os.path.join(folder, vae_fig), "The VAE alone: decoding an Eq. 6 blend")
  timings = _read_json(paths.timings, {})
  info = _read_json(os.path.join(paths.root, "ablation_args.json"), {})
  notes_path = os.path.join(folder, f"{stem}_notes.md")
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
           + training_summary(paths) + ".",
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
  lines += table4(results)
  lines += ["", "Rows: base = standard-objective UNet + base decoder; Fine-tune VAE = the same "
            "UNet + Eq. 6 decoder; Two-step = two-step UNet + base decoder; Ours = both. The "
            "two UNets are fine-tuned from the same base for the same steps and batch.", "",
            "Differences to the base row, paired by case (same image, mask and seed; mean ± "
            "standard error over the cases):", ""]
  lines += paired_vs_base(results)
  lines += ["",
            "## The VAE alone (Eq. 6 blends of held-out images)", "",
            f"Mask seeds {results['vae_seeds']}; posterior means; ± = std of the per-seed "
            "means.", ""]
  lines += vae_table(results)
  lines += ["", f"![VAE close-ups]({vae_fig})", "",
            "## Ordering", ""]
  lines += ordering_statement(results)
  lines += ["", "## Figures", "", f"![Border close-ups]({closeups})", "",
            f"Training curves{' (with in-training seam CD: ' + ', '.join(cd_keys) + ')' if cd_keys else ' (no in-training CD was logged by these runs)'}:",
            "", f"![Training curves]({curves})", ""]
  if os.path.isfile(notes_path):
    with open(notes_path, encoding="utf-8") as f:
      lines += ["## Discussion", "", f.read().strip(), ""]
  with open(report_path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return report_path
