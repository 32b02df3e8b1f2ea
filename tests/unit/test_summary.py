"""Tests for the leaderboard tables (snakescope.summary) and provenance hashes (snakescope.provenance)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from snakescope.provenance import config_hash, dataset_checksum
from snakescope.summary import leaderboard, mean_table, pareto_front, ranking_table, write_leaderboard


def test_pareto_front_keeps_only_undominated_points():
    costs = np.array([1.0, 2.0, 3.0, 2.5, np.nan])
    scores = np.array([0.5, 0.8, 0.9, 0.7, 1.0])
    # 2.5/0.7 is beaten by 2.0/0.8; the NaN point is never on the front
    assert pareto_front(costs, scores).tolist() == [True, True, True, False, False]
    assert pareto_front(np.array([1.0, 1.0]), np.array([0.5, 0.5])).tolist() == [True, True]


def _rows():
    rows = []
    for model, accuracy, seconds in (("fast", 0.70, 0.01), ("good", 0.90, 0.10), ("bad", 0.60, 0.20)):
        for seed, jitter in ((0, -0.01), (1, 0.01)):
            rows.append(
                {
                    "model": model,
                    "seed": seed,
                    "dataset": "a",
                    "task": "classification",
                    "accuracy": accuracy + jitter,
                    "baseline_accuracy": 0.25,
                    "seconds_per_image_batch1": seconds,
                    "cpu": "x",
                    "version_torch": "2",
                }
            )
    rows.append(
        {
            "dataset": "b",
            "task": "classification",
            "model": "fast",
            "seed": 0,
            "accuracy": 0.95,
            "seconds_per_image_batch1": 0.01,
        }
    )
    rows.append(
        {
            "dataset": "b",
            "task": "classification",
            "model": "good",
            "seed": 0,
            "accuracy": 0.85,
            "seconds_per_image_batch1": 0.1,
        }
    )
    return rows


def test_leaderboard_orders_keys_metrics_baselines_then_costs():
    board = leaderboard(_rows())
    assert list(board.columns[:6]) == ["dataset", "task", "model", "seed", "accuracy", "baseline_accuracy"]
    assert board.columns.get_loc("version_torch") > board.columns.get_loc("seconds_per_image_batch1")
    assert board[["dataset", "model", "seed"]].values.tolist()[:2] == [["a", "bad", 0], ["a", "bad", 1]]


def test_mean_table_and_ranking():
    mean = mean_table(leaderboard(_rows()))
    good = mean[(mean["dataset"] == "a") & (mean["model"] == "good")].iloc[0]
    assert good["n_seeds"] == 2
    assert good["accuracy_mean"] == pytest.approx(0.90)
    assert good["accuracy_std"] == pytest.approx(np.std([0.89, 0.91], ddof=1))
    assert good["headline"] == "0.9000 ± 0.0141"
    front = dict(zip(mean[mean["dataset"] == "a"]["model"], mean[mean["dataset"] == "a"]["pareto_optimal"]))
    assert front == {"bad": False, "fast": True, "good": True}

    ranking = ranking_table(mean).set_index("model")
    assert ranking.loc["good", "rank_a"] == 1 and ranking.loc["good", "rank_b"] == 2
    assert ranking.loc["fast", "mean_rank"] == pytest.approx(1.5) and ranking.loc["good", "mean_rank"] == 1.5
    assert ranking.loc["bad", "n_datasets"] == 1


def test_config_hash_ignores_location_and_the_rest_of_the_matrix():
    settings = {"task": "classification", "epochs": 3, "data_dir": "/a", "models": ["x"], "seeds": [0]}
    moved = {**settings, "data_dir": "/b", "models": ["x", "y"], "seeds": [0, 1]}
    assert config_hash(settings, "x", 0) == config_hash(moved, "x", 0)
    assert config_hash(settings, "x", 0) != config_hash(settings, "x", 1)
    assert config_hash(settings, "x", 0) != config_hash({**settings, "epochs": 4}, "x", 0)
    assert dataset_checksum({"checksums": {"a": "1", "b": "2"}}) == dataset_checksum(
        {"checksums": {"b": "2", "a": "1"}}
    )


def test_write_leaderboard_from_run_files(tmp_path):
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"run{seed}"
        (run / "predict").mkdir(parents=True)
        (run / "metrics.json").write_text(
            json.dumps(
                {
                    "dataset": "a",
                    "model": "m",
                    "seed": seed,
                    "task": "classification",
                    "n_test": 4,
                    "accuracy": 0.5 + seed / 4,
                }
            )
        )
        (run / "card.json").write_text(
            json.dumps(
                {
                    "training": {
                        "epochs_run": 3,
                        "best_epoch": 2,
                        "early_stopped": True,
                        "train_seconds": 6.0,
                        "seconds_per_epoch": 2.0,
                    }
                }
            )
        )
        (run / "predict" / "timing.json").write_text(
            json.dumps(
                {
                    "n_parameters": 10,
                    "seconds_per_image_batch1": 0.02,
                    "seconds_per_image_batched": 0.01,
                    "timing_batch_size": 16,
                    "peak_cpu_rss_mb": 100.0,
                    "peak_gpu_mb": None,
                    "hardware": {"cpu": "x", "cpu_count": 2, "gpu": None, "device": "cpu"},
                    "versions": {"torch": "2"},
                }
            )
        )
        (run / "fingerprint.json").write_text(json.dumps({"checksums": {"i1": "abc"}}))
        (run / "train.tsv").write_text("s\th:m:s\tmax_rss\n6.5\t0:00:06\t321.0\n")
        runs.append(
            {
                "metrics_json": str(run / "metrics.json"),
                "card_json": str(run / "card.json"),
                "predict_dir": str(run / "predict"),
                "fingerprint_json": str(run / "fingerprint.json"),
                "train_benchmark": str(run / "train.tsv"),
                "config_hash": f"h{seed}",
            }
        )
    out = tmp_path / "summary"
    names = [
        "leaderboard.tsv",
        "leaderboard_mean.tsv",
        "ranking.tsv",
        "leaderboard.sqlite",
        "bars.png",
        "tradeoff.png",
    ]
    board = write_leaderboard(runs, *(str(out / n) for n in names))
    assert board["train_peak_rss_mb"].tolist() == [321.0, 321.0]
    assert board["early_stopped"].tolist() == [True, True]
    mean = pd.read_csv(out / "leaderboard_mean.tsv", sep="\t")
    assert mean.loc[0, "accuracy_mean"] == pytest.approx(0.625) and mean.loc[0, "n_seeds"] == 2
    with sqlite3.connect(out / "leaderboard.sqlite") as connection:
        assert connection.execute("select avg(accuracy) from runs").fetchone()[0] == pytest.approx(0.625)
    assert all((out / n).stat().st_size > 0 for n in names)
