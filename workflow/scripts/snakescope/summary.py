"""summary: every trained model's metrics side by side, with a figure per task."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from snakescope.io import read_json, save_figure, write_table

log = logging.getLogger(__name__)

HEADLINE_METRIC = {"classification": "accuracy", "segmentation": "iou", "instance_segmentation": "iou",
                   "regression": "pearson_r"}


def collect_runs(metrics_files: list[str], card_files: list[str], uncertainty_files: list[str | None]) -> pd.DataFrame:
    """One row per trained model: run keys, test metrics, training time and MC-dropout summary."""
    rows = []
    for metrics_file, card_file, uncertainty_file in zip(metrics_files, card_files, uncertainty_files):
        row = dict(read_json(metrics_file))
        card = read_json(card_file)
        training = card["training"]
        row.update({
            "epochs_run": training["epochs_run"],
            "best_epoch": training["best_epoch"],
            "train_seconds": training["train_seconds"],
            "seconds_per_epoch": training["seconds_per_epoch"],
            "device": training["device"],
        })
        if uncertainty_file and Path(uncertainty_file).is_file():
            uncertainty = read_json(uncertainty_file)
            row["mean_uncertainty"] = uncertainty.get("mean_uncertainty")
            row["accuracy_most_certain_20pct"] = uncertainty.get("accuracy_most_certain_20pct")
        rows.append(row)
    return pd.DataFrame(rows)


def write_summary(metrics_files, card_files, uncertainty_files, table_out: str, figure_out: str) -> pd.DataFrame:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = collect_runs(metrics_files, card_files, uncertainty_files)
    keys = [k for k in ("dataset", "task", "model", "seed") if k in table]
    table = table.sort_values(keys).reset_index(drop=True)
    write_table(table, table_out)

    tasks = sorted(table["task"].unique())
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        metric = HEADLINE_METRIC[task]
        subset = table[table["task"] == task]
        grouped = subset.groupby(["dataset", "model"])[metric]
        means, stds = grouped.mean(), grouped.std().fillna(0)
        labels = [f"{d}\n{m}" for d, m in means.index]
        axis.bar(labels, means.values, yerr=stds.values, capsize=3, label="model")
        baseline_column = f"baseline_{metric}"
        if baseline_column in subset:
            baselines = subset.groupby(["dataset", "model"])[baseline_column].mean()
            axis.scatter(labels, baselines.values, color="black", marker="_", s=400, zorder=3,
                         label="trivial baseline")
            axis.legend(fontsize=7)
        axis.set_ylabel(f"test {metric}")
        axis.set_ylim(0, 1)
        axis.set_title(task)
        axis.tick_params(axis="x", labelsize=7)
    save_figure(figure, figure_out)
    log.info("summary of %d runs written to %s", len(table), table_out)
    return table
