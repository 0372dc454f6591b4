#!/usr/bin/env bash
# Compile the train step for the machine you are about to rent, on this one (any CPU machine
# with `pip install -e ".[aot]"`), and stop if it does not fit:
#   launch/check.sh v5e-8 configs/two_step.py:sd15,v5e [--config.field=value ...]
# Exit 0: it fits (the table says by how much); 2: it does not (the message lists settings to
# try); 1: a config or set-up error. Other arguments than --config.* are ignored, so the same
# overrides as the training command can be passed. SD-1.5 takes minutes and < 20 GB of RAM.
set -euo pipefail
TOPOLOGY=${1:?target, e.g. v5e-8, v4-32, h100-8}; CONFIG=${2:?config}; shift 2
OVERRIDES=()
for arg in "$@"; do
  case "${arg}" in --config.*) OVERRIDES+=("${arg}") ;; esac
done
cd "$(dirname "$0")/.."
exec python -m seamless_jax.aot --config="${CONFIG}" --topology="${TOPOLOGY}" "${OVERRIDES[@]}"
