import functools
import json
import re
import sys
import time
from pathlib import Path

# The package lives beside the scripts; Snakemake's script preamble puts it on sys.path for the
# scripts, this line does the same for the Snakefile's own input functions.
sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from snakemake.exceptions import IncompleteCheckpointException

from snakescope.applications import resolve_applications
from snakescope.config import ConfigError, resolve_datasets, stage_settings
from snakescope.convert import list_input_files
from snakescope.convert.samples import image_files
from snakescope.convert.shards import plan_shards, shard_input_files
from snakescope.logs import warning_summary
from snakescope.provenance import code_checksum
from snakescope.engine.models import is_detector

RUN_STARTED = (
    time.time()
)  # the warning summary at the end covers the logs this run wrote

##### validate the config and fill in defaults #####

try:
    DATASETS = resolve_datasets(config)
    APPLICATIONS = resolve_applications(config, DATASETS)
except ConfigError as error:
    # a user's mistake: its message, which names the key and the fix, without Python's traceback
    print(f"snakescope: {error}", file=sys.stderr)
    sys.exit(1)


wildcard_constraints:
    dataset="|".join(re.escape(name) for name in DATASETS),
    model=r"[A-Za-z0-9_]+",
    seed=r"\d+",
    application="|".join(re.escape(name) for name in APPLICATIONS),


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


def get_dataset_runs(name):
    """(dataset, model, seed) for every model to train on one dataset."""
    return [
        (name, model, seed)
        for model in get_models(name)
        for seed in DATASETS[name]["seeds"]
    ]


def get_runs():
    """(dataset, model, seed) for every model to train."""
    return [run for name in DATASETS for run in get_dataset_runs(name)]


def run_paths(runs, path_in_run, *only_if):
    """`path_in_run` of each run whose dataset has all the `only_if` settings on."""
    return [
        f"results/{dataset}/{model}/seed{seed}/{path_in_run}"
        for dataset, model, seed in runs
        if all(DATASETS[dataset][key] for key in only_if)
    ]


def get_run_outputs(path_in_run, *only_if):
    return run_paths(get_runs(), path_in_run, *only_if)


def get_planned_runs():
    """({dataset: its runs} for the datasets whose models are known, [plans still to be made]).

    A dataset whose models are not planned yet contributes its plan (a checkpoint target, so Snakemake
    calls the input function again once it exists) and lets the other datasets go on. Raising instead
    would hold every dataset back, and a dataset whose input is broken would stop the others even with
    --keep-going.
    """
    runs, pending = {}, []
    for name in DATASETS:
        try:
            runs[name] = get_dataset_runs(name)
        except IncompleteCheckpointException as plan:
            pending.append(plan.targetfile)
    return runs, pending


def get_run_targets(path_in_run, *only_if, keep=lambda model: True):
    """Target rules' input: `path_in_run` of every planned run (of the models `keep` accepts), and the
    plans still to be made."""
    runs, pending = get_planned_runs()
    planned = [
        run for dataset_runs in runs.values() for run in dataset_runs if keep(run[1])
    ]
    return pending + run_paths(planned, path_in_run, *only_if)


def get_final_output(wildcards=None):
    outputs = []
    for name in DATASETS:
        outputs += [
            f"results/{name}/augment/preview.png",
            f"results/{name}/recommend/plan.tsv",
        ]
    outputs += get_run_targets("train/history.tsv")
    outputs += get_run_targets("evaluate/metrics.json", "evaluate")
    outputs += get_run_targets("uncertainty", "uncertainty")
    # detectors have no bioimage.io description (snakescope.export)
    outputs += get_run_targets(
        "export/package.zip", "export", keep=lambda m: not is_detector(m)
    )
    outputs += get_apply_targets()
    if any(settings["evaluate"] for settings in DATASETS.values()):
        outputs.append("results/summary/leaderboard.tsv")
        if any(settings["results_library"] for settings in DATASETS.values()):
            outputs.append("results/summary/library_rows.tsv")
    return sorted(set(outputs), key=outputs.index)


@functools.cache
def dataset_files(name):
    """The input files of dataset `name`, listed once per run: the shard plan and every shard job's input
    need them too, and data_dir may hold 100,000 files."""
    return tuple(list_input_files(DATASETS[name]))


def get_dataset_files(wildcards):
    return list(dataset_files(wildcards.dataset))


@functools.cache
def get_convert_shards(name):
    """The samples of each convert shard of dataset `name`; [] when one convert job reads it."""
    return plan_shards(DATASETS[name], dataset_files(name))


def get_convert_input(wildcards):
    """convert's input: the dataset's files, or the folders of its shards."""
    shards = get_convert_shards(wildcards.dataset)
    if not shards:
        return {"files": get_dataset_files(wildcards)}
    return {
        "shards": [
            f"results/{wildcards.dataset}/convert/shards/{k}"
            for k in range(len(shards))
        ]
    }


def get_shard_files(wildcards):
    shards = get_convert_shards(wildcards.dataset)
    return shard_input_files(shards[int(wildcards.shard)], get_dataset_files(wildcards))


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


def get_code_checksum(script):
    """Checksum of every package module `script` imports: part of a cached rule's cache key."""
    scripts = Path(workflow.basedir) / "scripts"
    return code_checksum(scripts / script, scripts / "snakescope")


def get_train_processes(wildcards):
    return DATASETS[wildcards.dataset]["train_processes"]


def get_train_gpus(wildcards):
    """One GPU per training process, none when the config says device: cpu."""
    settings = DATASETS[wildcards.dataset]
    return 0 if settings["device"] == "cpu" else settings["train_processes"]


def if_distributed(value):
    """A train resource for data-parallel runs only (None leaves it unset for one process)."""
    return lambda wildcards, threads: (
        value(wildcards, threads) if get_train_processes(wildcards) > 1 else None
    )


def print_warning_summary():
    """The snakescope warnings of this run's jobs, repeated once all have ended (not inside a job)."""
    summary = warning_summary("logs", since=RUN_STARTED)
    if summary and not workflow.remote_exec:
        print(summary, file=sys.stderr)


def get_metrics_if_evaluated(wildcards):
    """The run's test metrics (quoted in the exported package's README) when the dataset is evaluated."""
    if DATASETS[wildcards.dataset]["evaluate"]:
        return f"results/{wildcards.dataset}/{wildcards.model}/seed{wildcards.seed}/evaluate/metrics.json"
    return []


def get_apply_targets(wildcards=None):
    return [f"results/apply/{name}" for name in APPLICATIONS]


def get_apply_inputs(wildcards):
    """The model, the new images (a changed folder re-runs it) and, for a run of ours, its data."""
    settings = APPLICATIONS[wildcards.application]
    inputs = {"model": settings["model"], "images": image_files(settings["images"])}
    return {**inputs, **(settings["training"] or {})}
