#!/usr/bin/env bash
# TPU pod slice: the same command on every worker; JAX finds the other hosts itself
# (TPU_WORKER_HOSTNAMES -> jax.distributed.initialize() in seamless_jax/main.py).
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh configs/two_step.py:sd15 \
#     gs://bucket/runs/two_step --config.pretrained=/mnt/sd15 --config.mesh.fsdp=4
# The repo must be at ~/seamless_jax on every worker (e.g. `gcloud ... scp --worker=all`),
# with the venv at ~/venv. Data and the workdir should be on GCS or a shared disk.
# --check=TOPOLOGY (first argument, e.g. --check=v4-32) first compiles the step for that slice
# here (launch/check.sh, needs `pip install -e ".[aot]"` on this machine) and stops if it does
# not fit, before any worker is touched.
set -euo pipefail
CHECK=""
if [[ "${1:-}" == --check=* ]]; then CHECK=${1#--check=}; shift; fi
CONFIG=${1:?config}; WORKDIR=${2:?workdir}; shift 2
if [[ -n "${CHECK}" ]]; then
  "$(dirname "$0")/check.sh" "${CHECK}" "${CONFIG}" "$@"
fi
: "${TPU_NAME:?set TPU_NAME}"; : "${ZONE:?set ZONE}"
EXTRA="$*"
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="
  cd ~/seamless_jax && source ~/venv/bin/activate &&
  python -m seamless_jax.main --config=${CONFIG} --workdir=${WORKDIR} ${EXTRA}
    2>&1 | tee -a /tmp/seamless_train.log"
