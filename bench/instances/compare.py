"""Print the instance-segmentation comparison of a bench/instances run: mean ± std over seeds per method.

    .venv/bin/python bench/instances/compare.py WORKDIR

WORKDIR is where bench/run_matrix.sh ran bench/instances/config.yaml; the figures come from its
leaderboard (results/summary/leaderboard.tsv), one row per (method, seed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

METRICS = ["aji", "f1_50", "pq", "ap_50", "ap_50_95", "mean_matched_iou", "train_seconds", "seconds_per_image_batch1"]


def compare(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """Per model: seeds, then "mean ± std" of each metric, the Otsu baseline's AJI and F1 last."""
    grouped = leaderboard.groupby("model")
    table = pd.DataFrame({"seeds": grouped.size()})
    for column in [*METRICS, "baseline_aji", "baseline_f1_50"]:
        mean, std = grouped[column].mean(), grouped[column].std()
        digits = 0 if column == "train_seconds" else 3
        table[column] = [f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(mean, std.fillna(0))]
    return table


if __name__ == "__main__":
    workdir = Path(sys.argv[1])
    board = pd.read_csv(workdir / "results" / "summary" / "leaderboard.tsv", sep="\t")
    with pd.option_context("display.width", 250, "display.max_columns", None):
        print(compare(board[board["task"] == "instance_segmentation"]).T.to_string())
