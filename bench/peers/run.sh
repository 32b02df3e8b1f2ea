#!/usr/bin/env bash
# Run one tool on a dataset written by bench/peers/prepare.py, on two CPU cores, under GNU time:
#   bash bench/peers/run.sh snakescope DIR [MINUTES]   # task, data_dir, test layout; time_budget_minutes (6)
#   bash bench/peers/run.sh nnunet DIR SECONDS         # nnU-Net v2 2d, fold 0, wall-clock trainer (SECONDS)
#   bash bench/peers/run.sh biapy DIR [EPOCHS]         # BiaPy's template, 360 epochs unless given
# A run is named <tool>_<budget> (or <tool>): it leaves <run>.time (wall time, peak RSS of the largest
# process), <run>.log and its predictions in DIR, where score.py finds them.
set -euo pipefail
project="$(cd "$(dirname "$0")/../.." && pwd)"
tool="${1:?usage: run.sh TOOL DIR [BUDGET]}"; dir="$(realpath "${2:?usage: run.sh TOOL DIR [BUDGET]}")"
budget="${3:-}"; run="$tool${budget:+_$budget}"
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
timed() { /usr/bin/time -v -o "$dir/$run.time" "$@" > "$dir/$run.log" 2>&1; }
case "$tool" in
  snakescope)
    rm -rf "${dir:?}/$run"; mkdir -p "$dir/$run"
    sed "s/^time_budget_minutes: .*/time_budget_minutes: ${budget:-6}/" "$dir/snakescope.yaml" > "$dir/$run/config.yaml"
    PYTHONPATH="$project/workflow/scripts" timed "$project/.venv/bin/snakemake" \
      --snakefile "$project/workflow/Snakefile" --directory "$dir/$run" \
      --configfile "$dir/$run/config.yaml" --replace-workflow-config --cores 2 ;;
  nnunet)
    export nnUNet_raw="$dir/nnunet_raw" nnUNet_preprocessed="$dir/${run}_preprocessed" \
      nnUNet_results="$dir/${run}_results" NNUNET_TRAIN_SECONDS="${budget:?nnunet: give the training seconds}"
    rm -rf "$nnUNet_preprocessed" "$nnUNet_results" "$dir/${run}_pred"
    bin="$project/.peers/nnunet/bin"
    id=$(basename "$dir/nnunet_raw"/Dataset*_* | sed 's/Dataset0*\([0-9]*\)_.*/\1/')
    timed bash -c "set -e
      '$bin/nnUNetv2_plan_and_preprocess' -d $id -c 2d -np 2 --verify_dataset_integrity
      '$bin/nnUNetv2_train' $id 2d 0 -tr nnUNetTrainer_WallClock -device cpu
      '$bin/nnUNetv2_predict' -i '$nnUNet_raw'/Dataset*/imagesTs -o '$dir/${run}_pred' -d $id -c 2d -f 0 \
        -tr nnUNetTrainer_WallClock -device cpu -npp 1 -nps 1 --save_probabilities" ;;
  biapy)
    rm -rf "${dir:?}/${run}_results"
    sed "s/^  EPOCHS: .*/  EPOCHS: ${budget:-360}/" "$dir/biapy/biapy.yaml" > "$dir/biapy/$run.yaml"
    timed "$project/.peers/biapy/bin/biapy" --config "$dir/biapy/$run.yaml" --result_dir "$dir/${run}_results" \
      --name "$(basename "$dir")" --run_id 1 ;;
  *) echo "unknown tool $tool (snakescope, nnunet, biapy)" >&2; exit 2 ;;
esac
tail -n 3 "$dir/$run.log"; grep -E "Elapsed|Maximum resident" "$dir/$run.time"
