#!/usr/bin/env bash
# GPU validation in one go, sized for a fresh one-GPU machine (8 minutes in all): set up the GPU
# flavour, run the tests marked gpu, then the throughput benchmark of local_prod.yaml (fp32 with
# TF32 and bf16, MFU against the GPU's bf16 peak), printing every figure.
#
#   benchmarks/gpu_check.sh             on a GPU machine, from the repository root
#   benchmarks/gpu_check.sh --dry-run   the same steps on this CPU with tiny sizes (or set
#                                       GPU_CHECK_DRY_RUN=1): checks the script, installs nothing
#
# Set-up, by what the machine offers:
#   * a package index: `make setup`, which installs the gpu flavour where nvidia-smi lists a GPU
#     (CUDA torch, fbgemm-gpu and torchrec as pinned; a few GB of wheels);
#   * no index (the device machine lent to this project): TML_WHEELS=<the parts folder that
#     `benchmarks/gpu/wheels.py pack` wrote>; the packages are unpacked into /tmp/tml-site and put
#     ahead of the machine's own python3, whose CUDA torch is used (its version, not our pin);
#   * PYTHON=<interpreter>: use it as it is.
# Each stage runs under a time limit; a failed stage is reported and the later ones still run.
# With carried wheels (TML_WHEELS) the limits add up to 470 s: 8 minutes, inside one 600 s call
# of the device machine. make setup downloads a few GB first (up to 300 s more).
# Logs go to $GPU_CHECK_OUT (default runs/gpu_check): setup.log, tests.log, benchmark.log.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
for argument in "$@"; do
    case $argument in
        --dry-run) DRY_RUN=1 ;;
        *) echo "usage: benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
    esac
done
OUT_DIR=${GPU_CHECK_OUT:-$REPO/runs/gpu_check}
mkdir -p "$OUT_DIR"
STARTED=$SECONDS
declare -a SUMMARY=()

stage() {  # stage NAME LIMIT_S LOG COMMAND...: runs COMMAND under a time limit, tees its log
    local name=$1 limit=$2 log=$3
    shift 3
    # A dry run shares a small CPU with other work: it gets time, not speed, to prove the steps.
    [ "$DRY_RUN" = 1 ] && limit=$((limit * 5))
    echo
    echo "== $name (limit ${limit} s, at $((SECONDS - STARTED)) s)"
    local begun=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$log"
    local status=${PIPESTATUS[0]}
    local result="ok"
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        result="TIMED OUT"
    elif [ "$status" -ne 0 ]; then
        result="FAILED (exit $status)"
    fi
    SUMMARY+=("$(printf '%-10s %-22s %4d s  log: %s' "$name" "$result" $((SECONDS - begun)) "$OUT_DIR/$log")")
}

echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, dry run: $DRY_RUN"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi lists no GPU"
if command -v make >/dev/null; then
    echo "make setup installs the $(make -s flavour) flavour here"
else
    echo "no make on this machine"
fi

# Set-up ----------------------------------------------------------------------------------------
SITE=/tmp/tml-site
if [ "$DRY_RUN" = 1 ]; then
    PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
    # Show what make setup would install; install nothing.
    stage setup 60 setup.log bash -c "make -n -B setup | grep -E 'pip|venv' || true"
elif [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -n "${TML_WHEELS:-}" ]; then
    PY=python3
    stage setup 60 setup.log "$PY" benchmarks/gpu/wheels.py unpack --parts "$TML_WHEELS" --target "$SITE"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    PY=.venv/bin/python
    stage setup 300 setup.log make setup
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

"$PY" - <<'EOF' 2>&1 | tee "$OUT_DIR/versions.log"
import importlib.metadata as metadata
import sys

import torch

print(f"python {sys.version.split()[0]} at {sys.executable}")
for name in ("torch", "fbgemm-gpu", "fbgemm-gpu-cpu", "torchrec", "torchmetrics", "pydantic"):
    try:
        print(f"  {name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
if torch.cuda.is_available():
    print(f"  CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
else:
    print("  torch sees no CUDA device")
EOF

# The tests marked gpu -------------------------------------------------------------------------
# In parallel where pytest-xdist is installed: they share the GPU (one rank each, own ports).
PARALLEL=()
if "$PY" -c "import xdist" 2>/dev/null; then
    PARALLEL=(-n "${GPU_CHECK_WORKERS:-4}")
fi
stage tests 230 tests.log "$PY" -m pytest -m gpu -p no:cacheprovider -q --durations=15 \
    "${PARALLEL[@]}" tests/

# Throughput -----------------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
    # torch.compile takes minutes on a small CPU; the compiled path is left to the real run.
    SIZES=(--batch_sizes 8 16 --steps 1 --compile_batch_size 0 --trainer_batch_sizes 8
        --trainer_steps 10 --num_examples 128)
else
    SIZES=(--batch_sizes 1024 4096 16384 --steps 20 --compile_batch_size 4096
        --trainer_batch_sizes 4096 --trainer_steps 30 --num_examples 16384)
fi
stage benchmark 180 benchmark.log "$PY" benchmarks/gpu/throughput.py "${SIZES[@]}"

echo
echo "== summary ($((SECONDS - STARTED)) s in all)"
printf '%s\n' "${SUMMARY[@]}"
for line in "${SUMMARY[@]}"; do
    case $line in *FAILED*|*"TIMED OUT"*) exit 1 ;; esac
done
