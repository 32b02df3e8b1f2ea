#!/usr/bin/env bash
# Run the three benchmarks on a CUDA machine and write their output to $OUT (default bench/out).
#
#   bash bench/run_gpu.sh
#
# On a machine without MONAI (or jsonschema), put their wheels in .whl/ first (see docs/performance.md):
# they are installed to /tmp/site and put on PYTHONPATH. BENCH_ARGS is appended to every benchmark's
# arguments (BENCH_ARGS=--cpu-smoke SKIP_WHEELS=1 tries the script on a CPU); BENCHMARKS picks some of
# train_throughput, mc_dropout, inference_latency (default: all three).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:workflow/scripts${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=workflow/scripts${PYTHONPATH:+:$PYTHONPATH}
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    "$PYTHON" -c "import torch, torchvision, monai; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'monai', monai.__version__)"
    nproc
} 2>&1 | tee "$OUT/environment.txt"

status=0
run() {  # name, seconds, arguments...
    local name=$1 limit=$2
    shift 2
    echo "=== $name $*"
    # shellcheck disable=SC2086  # BENCH_ARGS (e.g. --cpu-smoke, to try the script on a CPU) splits on spaces
    timeout "$limit" "$PYTHON" "bench/$name.py" --json "$OUT/$name.json" "$@" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "=== $name exited with $rc"; status=1; }
}
BENCHMARKS=${BENCHMARKS:-train_throughput mc_dropout inference_latency}
for name in $BENCHMARKS; do
    case $name in
        train_throughput) run train_throughput "${TRAIN_LIMIT:-220}" ;;
        mc_dropout) run mc_dropout "${MC_LIMIT:-100}" ;;
        inference_latency) run inference_latency "${INFERENCE_LIMIT:-100}" ;;
        *) echo "unknown benchmark $name"; status=1 ;;
    esac
done

echo "=== summary"
for name in $BENCHMARKS; do
    # the tables and verdicts: everything after each script's progress lines
    grep -v -E '^  done |^  return |UserWarning|warnings.warn' "$OUT/$name.txt" | tail -n 30
done
exit $status
