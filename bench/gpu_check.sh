#!/usr/bin/env bash
# The whole GPU check in one command, for a lent H100/H200 machine (CuPy, numba-cuda and
# PyTorch installed, no network):  bash bench/gpu_check.sh [OUTDIR] [followup]
# (OUTDIR default bench/results)
#
#   1. installs the working tree without dependencies (falls back to PYTHONPATH)
#   2. python -m cusoft info --kernels, python -m cusoft check (every backend usable there)
#   3. pytest -m gpu (the GPU half of the suite)
#   4. the benchmarks
#   5. every kernel family once under compute-sanitizer memcheck and racecheck
#   then <device>-<date>.json and .png in OUTDIR
# Each step has its own time limit, clipped to what is left of one overall budget
# (CUSOFT_GPU_CHECK_BUDGET seconds, default 540: the device tool kills a command at 600 s,
# and the step limits alone add up to more), so the report is always written; a failing or
# skipped step is reported in the summary and the exit status, and the later steps still run.
#
# "followup" (a second device call, once the first has been read): the sanitizers, the
# tensor-core tile sweep (bench_attention.py --sweep), the full attention benchmark (L up to
# 16k) and logsumexp; its logs and report get a "-followup" suffix.
set -u
BUDGET=${CUSOFT_GPU_CHECK_BUDGET:-540}
RESERVE=20   # for report.py and the summary
cd "$(dirname "$0")/.."
OUTDIR=${1:-bench/results}
MODE=${2:-main}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
# wheels carried to an offline machine (see the device tool's README): dask, distributed, ...
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! $PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
dev=$($PY -c "import cupy; p = cupy.cuda.runtime.getDeviceProperties(0); print(p['name'].decode().replace(' ', '_'))" 2>/dev/null || echo unknown-gpu)
stamp=$(date +%F)
base="$OUTDIR/$dev-$stamp"
[ "$MODE" = followup ] && base="$base-followup"
status=()
step() {  # step NAME SECONDS CMD...
    local name=$1 secs=$2; shift 2
    local left=$((BUDGET - RESERVE - SECONDS))
    if [ "$left" -lt 10 ]; then
        echo; echo "=== $name: skipped, the ${BUDGET}s budget is spent"
        status+=("$name=skipped")
        return
    fi
    [ "$secs" -gt "$left" ] && secs=$left
    echo; echo "=== $name (limit ${secs}s)"
    timeout "$secs" "$@" 2>&1 | tee "$base-$name.log"
    local rc=${PIPESTATUS[0]}
    status+=("$name=$rc")
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
sanitize() {
    if command -v compute-sanitizer >/dev/null; then
        step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 3 $PY bench/sanitize_kernels.py
        step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 3 $PY bench/sanitize_kernels.py --small
    else
        status+=("sanitizer=missing")
    fi
}
if [ "$MODE" = followup ]; then
    sanitize
    step attention-sweep 120 $PY bench/bench_attention.py --sweep --out "$OUTDIR"
    step bench-attention-full 240 $PY bench/bench_attention.py --out "$OUTDIR"
    step bench-logsumexp 90 $PY bench/bench_logsumexp.py --out "$OUTDIR"
else
    step info 60 $PY -m cusoft info --kernels
    step check 150 $PY -m cusoft check
    step pytest-gpu 180 $PY -m pytest -m gpu -q -rs -p no:cacheprovider
    # The benchmarks before the sanitizers: the measurements are what only a GPU session can
    # give (the open acceptance items), while a squeezed sanitizer step is cheap to rerun alone.
    step bench-softmax 150 $PY bench/bench_softmax.py --out "$OUTDIR"
    step bench-attention 120 $PY bench/bench_attention.py --quick --out "$OUTDIR"
    sanitize
fi
$PY bench/report.py "$OUTDIR" "$base" "${status[@]}"
echo; echo "summary: ${status[*]}"
for s in "${status[@]}"; do
    case "$s" in *=0) ;; *) exit 1 ;; esac
done
