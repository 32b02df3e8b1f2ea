#!/usr/bin/env bash
# Train the library matrix (bench/library/config.yaml) in WORKDIR and add its rows to the results
# library that auto-configuration learns from. Usage: bash bench/library/run.sh WORKDIR [snakemake args]
set -euo pipefail
project="$(cd "$(dirname "$0")/../.." && pwd)"
workdir="${1:?usage: run.sh WORKDIR}"; shift
mkdir -p "$workdir"
export PYTHONPATH="$project/workflow/scripts" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
[ -d "$workdir/resources/demo/cells" ] || \
  "$project/.venv/bin/python" -m snakescope.synthetic "$workdir/resources/demo/cells" --n-images 200
sed "s#\.\./shared/#$project/../shared/#" "$project/bench/library/config.yaml" > "$workdir/config.yaml"
"$project/.venv/bin/snakemake" --snakefile "$project/workflow/Snakefile" --directory "$workdir" \
  --configfile "$workdir/config.yaml" --replace-workflow-config --cores 2 --keep-going "$@"
