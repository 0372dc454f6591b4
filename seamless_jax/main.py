"""Training entry point (flax examples/imagenet style).

  python -m seamless_jax.main --config=configs/two_step.py:demo --workdir=runs/demo
  python -m seamless_jax.main --config=configs/two_step.py:sd15 \\
      --config.pretrained=/ckpt/stable-diffusion-v1-5 --config.data.path=/data/laion \\
      --config.mesh.fsdp=4 --workdir=gs://bucket/runs/two_step

``config.mode`` picks what trains: 'vae_finetune' (Eq. 6 decoder), 'two_step' (Alg. 1) or
'standard' (the v-prediction baseline). Rerunning with the same --workdir resumes.
Any config field can be set with --config.<field>=<value> (all fields: configs/default.py).

Exit status: 0 when the run finished, had nothing left to do, or saved a checkpoint and stopped
after SIGTERM / Ctrl-C (rerun to resume); 1 on an error (config, checkpoint, data), reported
in one line (bad data: followed by the list of bad files); 130 when a second Ctrl-C aborted
without saving.
"""

from __future__ import annotations

from seamless_jax import console

console.import_jax_quietly()  # first: no JAX plugin start-up chatter on this command's console
# pylint: disable=wrong-import-position

import ast
import glob
import os
import re
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from seamless_jax import config_files
from seamless_jax.data import pipeline
from seamless_jax.train import checkpoint
from seamless_jax.train import config_check
from seamless_jax.runtime import hardware
from seamless_jax.train import metric_writer as log_lib
from seamless_jax.train import loop

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/two_step.py:demo.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

VARIANTS = {
    "sd15": "real SD-1.5 weights (--config.pretrained=DIR, a diffusers folder); the default",
    "tiny": "tiny random models, 32 px images from --config.data.path (CPU-fast; tests)",
    "demo": "tiny models on the bundled demo photos, written to WORKDIR/demo_data",
}
HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")
# What --help lists (absl's own listing names this file and prints "(default: 'None')").
FLAG_HELP = (
    ("--config=PATH[:VARIANT]", "the training config, e.g. configs/two_step.py:demo (required)"),
    ("--workdir=DIR", "checkpoints, metrics.jsonl, TensorBoard events, samples; rerunning "
                      "resumes (required)"),
    ("--config.<field>=<value>", "override any config field (all: configs/default.py)"),
    ("--verbosity=N", "1 also shows the libraries' INFO lines (orbax, jax); default 0"),
)
USER_ERRORS = (config_check.ConfigError, checkpoint.CheckpointError, pipeline.BadDataError,
               loop.NonFiniteError)
EXIT_ERROR, EXIT_ABORTED = 1, 130


def listed_configs() -> list[tuple[str, str]]:
  """``(path as given to --config, first docstring line)`` for each mode config."""
  folder = config_files.configs_dir()
  if folder is None:
    return []
  found = []
  for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
    if os.path.basename(path) in ("__init__.py", "default.py"):
      continue
    with open(path, encoding="utf-8") as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
    shown = os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path
    found.append((shown, doc.splitlines()[0] if doc else ""))
  return found


def help_text() -> str:
  lines = [__doc__.strip(), "", "Configs (--config=PATH[:VARIANT]):"]
  configs = listed_configs()
  lines += [f"  {path}\n      {doc}" for path, doc in configs] or [
      "  (no configs/ folder here: run from the repository checkout)"]
  lines += ["", "Variants (the part after ':'):"]
  lines += [f"  :{name:<5} {text}" for name, text in VARIANTS.items()]
  lines += ["", "Flags:"] + [f"  {flag:<26}{text}" for flag, text in FLAG_HELP]
  return "\n".join(lines)


def fail(message: str) -> None:
  """One line on stderr, exit status 1 (no traceback: the message names what to change)."""
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  sys.exit(EXIT_ERROR)


def _unknown_field_message(error: Exception, argv: list[str]) -> str:
  """ml_collections' "no field 'x' / Did you mean 'y'" as one line naming the --config flag."""
  text = str(error).replace("\\n", "\n").replace("\\'", "'")
  key = re.search(r"'([^'\s]+)'", text)
  key = key.group(1) if key else "?"
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  flag = next((a.split("=", 1)[0] for a in argv
               if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")), None)
  where = flag or "--config"
  message = f"{where}: the config has no field {key!r}"
  if suggestion:
    dotted = flag[len("--"):].split(".") if flag else [key]
    dotted[-1] = suggestion.group(1)
    message += f"; did you mean --{'.'.join(dotted)}?"
  return message


def _flag_error_message(error: Exception) -> str:
  """absl's flag error (a config file's traceback included) as one line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  first = lines[0][len("flag "):] if lines[0].startswith("flag ") else lines[0]
  return first if len(lines) == 1 else f"{first} {lines[-1]}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a --help that exits 0 and one-line errors for bad flags."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    print(help_text())
    sys.exit(0)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(_flag_error_message(e))
  except (AttributeError, KeyError) as e:  # --config.<field> override of a field that is absent
    fail(_unknown_field_message(e, argv))
  return argv  # not reached


def load_config():
  """``FLAGS.config``; a config file that does not load is reported in one line."""
  try:
    config = FLAGS.config
    config.get("mode")  # a file that failed to load raises here (config_flags loads lazily)
    return config
  except OSError as e:
    path = config_flags.get_config_filename(FLAGS["config"])
    known = ", ".join(p for p, _ in listed_configs())
    if not os.path.isfile(path):
      fail(f"--config: no such file {path!r}" + (f" (configs: {known})" if known else ""))
    fail(f"--config: {_flag_error_message(e)}")
  return None  # not reached


def _distributed_args() -> dict:
  """``num_processes`` / ``process_id`` from JAX_NUM_PROCESSES / JAX_PROCESS_ID (local or
  hand-made launches); cluster launchers (SLURM, TPU) are detected by JAX itself."""
  args = {}
  if os.environ.get("JAX_NUM_PROCESSES"):
    args["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if os.environ.get("JAX_PROCESS_ID"):
    args["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  return args


def _is_multi_process() -> bool:
  if os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    return True
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def main(argv):
  if len(argv) > 1:
    fail(f"too many command-line arguments: {argv[1:]} (flags look like --config.x=value)")
  log_lib.quiet_library_logs()
  config = load_config()
  if _is_multi_process():
    jax.distributed.initialize(**_distributed_args())  # the rest comes from the environment
  hardware.start_backends()  # without the plugins' start-up chatter on a CPU machine
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  try:
    result = loop.train(config, FLAGS.workdir)
  except USER_ERRORS as e:
    fail(str(e))
  except KeyboardInterrupt:
    sys.stderr.write("aborted by a second Ctrl-C without saving; rerun to resume from the "
                     "newest checkpoint\n")
    sys.exit(EXIT_ABORTED)
  if result.get("compile_abandoned"):
    # Stopped while XLA was compiling: its helper thread cannot be interrupted and would keep
    # the interpreter's shutdown waiting or crash it; nothing is left to save or close.
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # pylint: disable=protected-access


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=parse_flags)
