import re
import sys
from pathlib import Path

# The package lives beside the scripts; Snakemake's script preamble puts it on sys.path for the
# scripts, this line does the same for the Snakefile's own input functions.
sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from snakescope.config import resolve_datasets, stage_settings
from snakescope.convert import list_input_files

##### validate the config and fill in defaults #####

DATASETS = resolve_datasets(config)


wildcard_constraints:
    dataset="|".join(re.escape(name) for name in DATASETS),
    model=r"[A-Za-z0-9_]+",
    seed=r"\d+",


##### input functions #####


def get_runs():
    """(dataset, model, seed) for every model to train."""
    return [
        (name, model, seed)
        for name, settings in DATASETS.items()
        for model in settings["models"]
        for seed in settings["seeds"]
    ]


def get_run_outputs(path_in_run, only_if=None):
    return [
        f"results/{dataset}/{model}/seed{seed}/{path_in_run}"
        for dataset, model, seed in get_runs()
        if only_if is None or DATASETS[dataset][only_if]
    ]


def get_final_output():
    outputs = [f"results/{name}/augment/preview.png" for name in DATASETS]
    outputs += get_run_outputs("train/history.tsv")
    if any(settings["evaluate"] for settings in DATASETS.values()):
        outputs += get_run_outputs("evaluate/metrics.json", only_if="evaluate")
        outputs.append("results/summary/leaderboard.tsv")
    outputs += get_run_outputs("uncertainty", only_if="uncertainty")
    return outputs


def get_dataset_files(wildcards):
    return list_input_files(DATASETS[wildcards.dataset])


def get_settings(stage):
    return lambda wildcards: stage_settings(DATASETS[wildcards.dataset], stage)


def get_uncertainty_summaries(runs):
    return [
        (
            f"results/{dataset}/{model}/seed{seed}/uncertainty/summary.json"
            if DATASETS[dataset]["uncertainty"]
            else ""
        )
        for dataset, model, seed in runs
    ]
