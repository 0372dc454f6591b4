#!/usr/bin/env bash
# Local (one machine, all its accelerators or the CPU) training run.
#   launch/local.sh configs/two_step.py:demo runs/demo [--config.field=value ...]
set -euo pipefail
CONFIG=${1:-configs/two_step.py:demo}
WORKDIR=${2:-runs/demo}
shift $(( $# > 2 ? 2 : $# ))
cd "$(dirname "$0")/.."
exec python -m seamless_jax.main --config="${CONFIG}" --workdir="${WORKDIR}" "$@"
