"""The benchmark matrix (issue 5): datasets x models x seeds from one config, a leaderboard, reruns that
reproduce, and a matrix that grows without retraining what is already there.

Real data (WBC classification, ISBI membranes; 2 models x 2 seeds each) at 32x32 for one short epoch on CPU: the metrics mean
nothing, the test is about plumbing and determinism. Two fresh runs of the same config must give the
same metrics and losses bit for bit (CPU, deterministic algorithms on; the second run trains one cell per
dataset, which is what that comparison needs); a third, dry, run with one more model must schedule only
that model's cells. About 4 minutes on two cores (2026-12-03).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_snakemake, wbc_dataset, write_config

pytestmark = pytest.mark.slow

# Two models per dataset (three until 2026-12: 12 runs twice was the largest item of CI's time)
WBC_MODELS = ["mobilenet_v2", "vit_tiny"]
ISBI_MODELS = ["unet_small", "segresnet"]
SEEDS = [0, 1]
ADDED_MODEL = "resnext50_32x4d"
# Written by one rule job per run; compared between the two runs.
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss"]
# The cells the second, from-scratch run repeats: one per dataset, with a seed other than 0.
REPEATED = [("wbc", "vit_tiny", 1), ("isbi", "segresnet", 1)]


def matrix_config(shared_data: Path, wbc_models: list[str]) -> dict:
    return {
        "datasets": {
            "wbc": wbc_dataset(shared_data, resize=[32, 32], models=wbc_models, seeds=SEEDS),
            "isbi": {
                "task": "segmentation",
                "data_dir": str(shared_data / "isbi2012_em_membranes"),
                "layout": {"images": "train/image/*.png", "masks": "train/label/*.png"},
                "resize": [32, 32],
                "patch_size": [32, 32],
                "models": ISBI_MODELS,
                "seeds": SEEDS,
            },
        },
        "epochs": 1,
        "patience": 1,
        "batch_size": 8,
        "max_batches_per_epoch": 2,
        "augmentations": ["flip"],
        "uncertainty": False,
        "export": False,
        "device": "cpu",
    }


def run_matrix(workdir: Path, config: dict, *extra: str):
    return run_snakemake(workdir, write_config(workdir, config), "--replace-workflow-config", *extra)


def scheduled_jobs(dry_run_output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a `snakemake -n` output lists."""
    jobs, rule = [], None
    for line in dry_run_output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = match.group(1)
            jobs.append((rule, {}))
        elif rule and (match := re.match(r"^wildcards: (.*)$", line.strip())):
            jobs[-1][1].update(dict(item.split("=", 1) for item in match.group(1).split(", ")))
    return jobs


def equal_or_both_nan(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, shared_data):
    """The small matrix run from scratch, and again in a second working directory for some of its cells."""
    config = matrix_config(shared_data, WBC_MODELS)
    first, second = tmp_path_factory.mktemp("matrix_a"), tmp_path_factory.mktemp("matrix_b")
    run_matrix(first, config)
    run_matrix(second, config, *(f"results/{d}/{m}/seed{s}/evaluate/metrics.json" for d, m, s in REPEATED))
    return config, first, second


def runs_of(config: dict) -> list[tuple[str, str, int]]:
    return [
        (name, model, seed)
        for name, entry in config["datasets"].items()
        for model in entry["models"]
        for seed in entry["seeds"]
    ]


def test_same_config_and_seed_give_identical_metrics(matrix):
    config, first, second = matrix
    for dataset, model, seed in REPEATED:
        run = f"results/{dataset}/{model}/seed{seed}"
        metrics_a = json.loads((first / run / "evaluate/metrics.json").read_text())
        metrics_b = json.loads((second / run / "evaluate/metrics.json").read_text())
        assert metrics_a.keys() == metrics_b.keys()
        different = {
            k: (metrics_a[k], metrics_b[k])
            for k in metrics_a
            if not equal_or_both_nan(metrics_a[k], metrics_b[k])
        }
        assert not different, f"{run}: metrics differ between identical runs: {different}"
        history_a = pd.read_csv(first / run / "train/history.tsv", sep="\t")[HISTORY_COLUMNS]
        history_b = pd.read_csv(second / run / "train/history.tsv", sep="\t")[HISTORY_COLUMNS]
        pd.testing.assert_frame_equal(history_a, history_b, check_exact=True)


def test_leaderboard_tables_and_figures(matrix):
    config, first, _ = matrix
    summary = first / "results/summary"
    board = pd.read_csv(summary / "leaderboard.tsv", sep="\t")
    assert len(board) == len(runs_of(config))
    for column in [
        "accuracy",
        "iou",
        "n_parameters",
        "train_seconds",
        "seconds_per_epoch",
        "epochs_run",
        "seconds_per_image_batch1",
        "seconds_per_image_batched",
        "train_peak_rss_mb",
        "predict_peak_rss_mb",
        "cpu",
        "version_torch",
        "git_commit",
        "config_hash",
        "dataset_checksum",
    ]:
        assert column in board, column
    wbc = board[board["dataset"] == "wbc"]
    assert wbc["accuracy"].between(0, 1).all() and (wbc["seconds_per_image_batch1"] > 0).all()
    assert wbc["config_hash"].nunique() == len(wbc)  # model and seed are part of the hash
    assert board.groupby("dataset")["dataset_checksum"].nunique().eq(1).all()

    mean = pd.read_csv(summary / "leaderboard_mean.tsv", sep="\t")
    assert sorted(mean[mean["dataset"] == "wbc"]["model"]) == sorted(WBC_MODELS)
    assert sorted(mean[mean["dataset"] == "isbi"]["model"]) == sorted(ISBI_MODELS)
    assert (mean["n_seeds"] == len(SEEDS)).all()
    assert {"accuracy_mean", "accuracy_std", "headline", "pareto_optimal"} <= set(mean.columns)
    assert mean.groupby("dataset")["pareto_optimal"].any().all()  # every dataset has a front

    ranking = pd.read_csv(summary / "ranking.tsv", sep="\t")
    assert set(ranking["model"]) == set(WBC_MODELS) | set(ISBI_MODELS)
    assert ranking["mean_rank"].min() == 1
    with sqlite3.connect(summary / "leaderboard.sqlite") as connection:
        n_rows = connection.execute("select count(*) from runs").fetchone()[0]
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type='table'")}
    assert n_rows == len(board) and tables == {"runs", "mean", "ranking"}
    for figure in ("bars.png", "tradeoff.png"):
        assert (summary / figure).stat().st_size > 1000


def test_finished_matrix_has_nothing_to_do(matrix):
    config, first, _ = matrix
    process = run_matrix(first, config, "-n")
    assert scheduled_jobs(process.stdout + process.stderr) == [], process.stdout + process.stderr


def test_adding_a_model_schedules_only_its_cells(matrix):
    config, first, _ = matrix
    grown = json.loads(json.dumps(config))
    grown["datasets"]["wbc"]["models"].append(ADDED_MODEL)
    process = run_matrix(first, grown, "-n")
    jobs = scheduled_jobs(process.stdout + process.stderr)
    per_run = [(rule, w["model"], int(w["seed"])) for rule, w in jobs if "model" in w]
    assert sorted(per_run) == sorted(
        (rule, ADDED_MODEL, seed) for rule in ("train", "predict", "evaluate") for seed in SEEDS
    ), jobs
    # dataset-level stages are not redone; only the leaderboard, the library record and the target rule
    assert sorted(rule for rule, w in jobs if "model" not in w) == ["all", "library", "summary"], jobs
