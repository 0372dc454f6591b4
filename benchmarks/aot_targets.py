"""The compiled-fit table of docs/targets.md: `python -m seamless_jax.aot` once per row.

  python benchmarks/aot_targets.py --out /tmp/aot_rows.jsonl            # every row below
  python benchmarks/aot_targets.py --only v5e-8 --out /tmp/rows.jsonl   # rows of one target
  python benchmarks/aot_targets.py --table /tmp/aot_rows.jsonl          # print the markdown
  python benchmarks/aot_targets.py --tiny --out /tmp/tiny.jsonl         # the tiny config (CI)

Each row runs in its own process (so "host RAM peak" is that compile's alone) and appends its
report (seamless_jax.aot's JSON plus the exit status, wall time and the machine) to --out; rows
already in --out are skipped, so an interrupted sweep resumes. A row that does not fit is kept
too: it shows where the limit is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (config, target, overrides): the shipped SD-1.5 settings per target.
SD15_ROWS = [
    ("configs/two_step.py:sd15,gpu", "h100-8", ()),
    ("configs/vae_finetune.py:sd15,gpu", "h100-8", ()),
    ("configs/vae_finetune.py:sd15,v5e", "v5e-8", ()),
    ("configs/vae_finetune.py:sd15,v4", "v4-8", ()),
    ("configs/two_step.py:sd15,v4", "v4-8", ()),
    ("configs/two_step.py:sd15,v5e", "v5e-8", ()),
    # the largest per-device batch: twice the shipped one where it fits
    ("configs/two_step.py:sd15,gpu", "h100-8", ("--config.batch_size=64",)),
    ("configs/two_step.py:sd15,gpu", "h100-8", ("--config.batch_size=96",)),
    # the inference sampler (50 DDIM steps, 512², CFG), one GPU
    ("configs/two_step.py:sd15", "h100-1", ("--what=sample", "--sample_batch=1")),
    ("configs/two_step.py:sd15", "h100-1", ("--what=sample", "--sample_batch=8")),
]
TINY_ROWS = [("configs/two_step.py:tiny", "v5e-8", ()), ("configs/two_step.py:tiny", "h100-8", ())]


def row_key(config: str, target: str, overrides) -> str:
  return " ".join([config, target, *overrides])


def run_row(config: str, target: str, overrides, timeout: int) -> dict:
  """One ``seamless_jax.aot`` process; its JSON report + status, wall seconds, machine."""
  with tempfile.TemporaryDirectory() as tmp:
    report_path = os.path.join(tmp, "report.json")
    cmd = [sys.executable, "-m", "seamless_jax.aot", f"--config={config}", f"--topology={target}",
           f"--json={report_path}", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)
    row = {"exit": proc.returncode, "wall_s": time.perf_counter() - t0}
    if os.path.exists(report_path):
      with open(report_path, encoding="utf-8") as f:
        row.update(json.load(f))
    else:
      row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
  row.update(key=row_key(config, target, overrides), command=" ".join(cmd[1:-2] + cmd[-1:]),
             machine=f"{platform.node()}, {os.cpu_count()} CPUs",
             date=datetime.date.today().isoformat())
  return row


def table(rows: list[dict]) -> str:
  """Markdown: one line per compiled row."""
  head = ("| target | program | per-device batch | settings | peak / usable HBM (GiB) | fits | "
          "compile (s) | host RAM (GiB) | predicted img/s at 40 % MFU |\n"
          "|---|---|---|---|---|---|---|---|---|")
  lines = [head]
  gib = 2 ** 30
  for r in rows:
    if "settings" not in r:
      lines.append(f"| {r['key']} | error: {r.get('error', '?')} ||||||||")
      continue
    s = r["settings"]
    if r["what"] == "sample":
      per_device = max(r["global_batch"] // r["devices"], 1)
      settings = (f"{s['sample_steps']} DDIM steps + CFG, {s['sample_resolution']}², "
                  f"batch {r['global_batch']}, {s['dtype']}")
    else:
      per_device = s["batch_size"] // (s["grad_accum_steps"] * r["devices"])
      settings = (f"fsdp={s['mesh.fsdp']}, remat={s['remat_policy'] if s['remat'] else 'off'}, "
                  f"frozen {s['frozen_dtype']}, accum {s['grad_accum_steps']}, "
                  f"global batch {s['batch_size']}")
    peak = r["bytes"].get("peak")
    peak_text = (f"{peak / gib:.1f} / {r['usable_bytes'] / gib:.1f}" if peak
                 else f"XLA: {r.get('xla_message', '')[:80]}")
    img_s = f"{r['img_s_at_40_mfu']:.1f}" if r.get("img_s_at_40_mfu") else "-"
    program = f"`{r['config']}`" + (" sampler" if r["what"] == "sample" else "")
    lines.append(f"| {r['target']} | {program} | {per_device} | {settings} | {peak_text} | "
                 f"{'yes' if r['fits'] else '**no**'} | {(r['lower_s'] or 0) + r['compile_s']:.0f} | "
                 f"{r['host_peak_rss_bytes'] / gib:.1f} | {img_s} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="JSON-lines file the rows are appended to")
  parser.add_argument("--only", help="only the rows of this target")
  parser.add_argument("--config", dest="config_filter", help="only rows whose config contains this")
  parser.add_argument("--tiny", action="store_true", help="the tiny config's rows (fast)")
  parser.add_argument("--table", help="print the markdown table of this JSON-lines file")
  parser.add_argument("--timeout", type=int, default=3600)
  args = parser.parse_args()
  if args.table:
    with open(args.table, encoding="utf-8") as f:
      print(table([json.loads(line) for line in f if line.strip()]))
    return
  done = set()
  if args.out and os.path.exists(args.out):
    with open(args.out, encoding="utf-8") as f:
      done = {json.loads(line)["key"] for line in f if line.strip()}
  rows = TINY_ROWS if args.tiny else SD15_ROWS
  for config, target, overrides in rows:
    if ((args.only and target != args.only) or row_key(config, target, overrides) in done
        or (args.config_filter and args.config_filter not in config)):
      continue
    row = run_row(config, target, overrides, args.timeout)
    print(f"{row['key']}: exit {row['exit']}, {row['wall_s']:.0f} s", flush=True)
    if args.out:
      with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
