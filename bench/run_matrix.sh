#!/usr/bin/env bash
# Run a benchmark matrix config (datasets x models x seeds) through the workflow in WORKDIR, on two CPU
# cores. Usage: bash bench/run_matrix.sh CONFIG WORKDIR [snakemake args]
#   bench/library/config.yaml    the results library auto-configuration learns from (docs/autoconfig.md)
#   bench/instances/config.yaml  U-Net + watershed against Mask R-CNN on CPM-15 (docs/benchmarks.md)
# The config's ../shared/ paths are made absolute; the demo cells are drawn first when it uses them.
set -euo pipefail
project="$(cd "$(dirname "$0")/.." && pwd)"
config="$(realpath "${1:?usage: run_matrix.sh CONFIG WORKDIR}")"
workdir="${2:?usage: run_matrix.sh CONFIG WORKDIR}"; shift 2
mkdir -p "$workdir"
export PYTHONPATH="$project/workflow/scripts" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
if grep -q "resources/demo/cells" "$config" && [ ! -d "$workdir/resources/demo/cells" ]; then
  "$project/.venv/bin/python" -m snakescope.synthetic "$workdir/resources/demo/cells" --n-images 200
fi
sed "s#\.\./shared/#$project/../shared/#" "$config" > "$workdir/config.yaml"
"$project/.venv/bin/snakemake" --snakefile "$project/workflow/Snakefile" --directory "$workdir" \
  --configfile "$workdir/config.yaml" --replace-workflow-config --cores 2 --keep-going "$@"
