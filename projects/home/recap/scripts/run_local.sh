#!/usr/bin/env bash
# Train the ranker with torchrun on this machine.
#
#   projects/home/recap/scripts/run_local.sh [CONFIG] [dotted.path=value ...]
#
# NPROC_PER_NODE (default 2) processes on one node. For several nodes run, on every node:
#   torchrun --nnodes N --nproc_per_node P --rdzv_backend c10d \
#       --rdzv_endpoint HOST:29400 --rdzv_id JOB -m projects.home.recap.main --config_path CFG
set -euo pipefail
cd "$(dirname "$0")/../../../.."
config="${1:-projects/home/recap/config/local_cpu.yaml}"
shift || true
exec .venv/bin/torchrun --standalone --nnodes 1 --nproc_per_node "${NPROC_PER_NODE:-2}" \
    -m projects.home.recap.main --config_path "$config" "$@"
