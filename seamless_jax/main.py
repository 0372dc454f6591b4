"""Training entry point (flax examples/imagenet style).

  python -m seamless_jax.main --config=configs/two_step.py:demo --workdir=runs/demo
  python -m seamless_jax.main --config=configs/two_step.py:sd15 \
      --config.pretrained=/ckpt/stable-diffusion-v1-5 --config.data.path=/data/laion \
      --config.mesh.fsdp=4 --workdir=gs://bucket/runs/two_step

``config.mode`` picks what trains: 'vae_finetune' (Eq. 6 decoder), 'two_step' (Alg. 1) or
'standard' (the v-prediction baseline). Rerunning with the same --workdir resumes.
"""

import os

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from seamless_jax.train import loop

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/two_step.py:demo.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def _is_multi_process() -> bool:
  if os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    return True
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  if _is_multi_process():
    jax.distributed.initialize()  # reads the coordinator/process ids from the environment
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  config = FLAGS.config
  if config.mode not in ("vae_finetune", "two_step", "standard"):
    raise app.UsageError(f"config.mode={config.mode!r} is not one of "
                         "'vae_finetune', 'two_step', 'standard'")
  loop.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
