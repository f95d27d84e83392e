#!/usr/bin/env bash
# Train the ranker with torchrun on this machine, restarting failed workers (see
# docs/operations.md).
#
#   projects/home/recap/scripts/run_local.sh [CONFIG] [dotted.path=value ...]
#
# NPROC_PER_NODE (default 2) processes on one node; MAX_RESTARTS as in docker/entrypoint.sh,
# which launches it. For several nodes run, on every node:
#   NNODES=N NPROC_PER_NODE=P RDZV_ENDPOINT=HOST:29400 RDZV_ID=JOB docker/entrypoint.sh \
#       --config_path CFG
set -euo pipefail
cd "$(dirname "$0")/../../../.."
config="${1:-projects/home/recap/config/local_cpu.yaml}"
shift || true
PATH="$PWD/.venv/bin:$PATH" NPROC_PER_NODE="${NPROC_PER_NODE:-2}" \
    exec docker/entrypoint.sh --config_path "$config" "$@"
