import json
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


def get_models(name):
    """The models to train on one dataset: the config's list, or the `recommend` checkpoint's plan when
    the config leaves `models` to the planner (or pins a plan file)."""
    settings = DATASETS[name]
    if "models" in settings["auto_keys"] or settings["plan"]:
        plan = checkpoints.recommend.get(dataset=name).output.plan
        with open(plan) as fh:
            return json.load(fh)["settings"]["models"]
    return settings["models"]


def get_runs():
    """(dataset, model, seed) for every model to train."""
    return [
        (name, model, seed)
        for name, settings in DATASETS.items()
        for model in get_models(name)
        for seed in settings["seeds"]
    ]


def get_run_outputs(path_in_run, *only_if):
    """`path_in_run` of every run whose dataset has all the `only_if` settings on."""
    return [
        f"results/{dataset}/{model}/seed{seed}/{path_in_run}"
        for dataset, model, seed in get_runs()
        if all(DATASETS[dataset][key] for key in only_if)
    ]


def get_final_output(wildcards=None):
    outputs = [f"results/{name}/augment/preview.png" for name in DATASETS]
    outputs += [f"results/{name}/recommend/plan.tsv" for name in DATASETS]
    outputs += get_run_outputs("train/history.tsv")
    if any(settings["evaluate"] for settings in DATASETS.values()):
        outputs += get_run_outputs("evaluate/metrics.json", "evaluate")
        outputs.append("results/summary/leaderboard.tsv")
        if any(settings["results_library"] for settings in DATASETS.values()):
            outputs.append("results/summary/library_rows.tsv")
    outputs += get_run_outputs("uncertainty", "uncertainty")
    return outputs


def get_dataset_files(wildcards):
    return list_input_files(DATASETS[wildcards.dataset])


def get_settings(stage):
    return lambda wildcards: stage_settings(DATASETS[wildcards.dataset], stage)


def get_evaluated_runs():
    return [run for run in get_runs() if DATASETS[run[0]]["evaluate"]]


def get_evaluated(path_in_run, *only_if):
    """Input function: `path_in_run` of every evaluated run (with the `only_if` settings on)."""
    return lambda wildcards: get_run_outputs(path_in_run, "evaluate", *only_if)


def get_uncertainty_summaries(wildcards):
    return [
        (
            f"results/{dataset}/{model}/seed{seed}/uncertainty/summary.json"
            if DATASETS[dataset]["uncertainty"]
            else ""
        )
        for dataset, model, seed in get_evaluated_runs()
    ]
