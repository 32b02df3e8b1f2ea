"""summary: the benchmark leaderboard of every (dataset, model, seed) run, with figures.

Outputs (all under ``results/summary/``):

* ``leaderboard.tsv``: one row per run: dataset, task, model, seed, every test metric (and the
  trivial baseline's), parameters, training time (total and per epoch), epochs run / best epoch /
  early stop, inference time per image (median, batch 1 and batched), peak memory, hardware, software
  versions, provenance (git commit, config hash, dataset checksum);
* ``leaderboard_mean.tsv``: mean and standard deviation over seeds per (dataset, model), the headline
  metric as "mean ± std", and whether the model is on the accuracy/speed Pareto front of its dataset;
* ``ranking.tsv``: each model's rank per dataset (1 = best headline metric) and its mean rank over the
  datasets of its task;
* ``leaderboard.sqlite``: the three tables above (`runs`, `mean`, `ranking`) for SQL queries;
* ``bars.png``: per dataset, the headline metric per model with error bars (std over seeds);
* ``tradeoff.png``: per dataset, headline metric against inference time per image, Pareto front marked
  (the trade-off of the AIMIC paper: the most accurate network versus the fastest adequate one).

The headline metric is each task's (accuracy, IoU, AJI, Pearson r); higher is better for all.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.io import atomic_path, read_json, save_figure, write_table
from snakescope.provenance import dataset_checksum, git_commit
from snakescope.tasks import get_task

log = logging.getLogger(__name__)

KEYS = ["dataset", "task", "model", "seed"]
# Run columns after the metrics, in this order; "version_<package>" columns go before the provenance.
_COST_COLUMNS = [
    "n_parameters",
    "epochs_run",
    "best_epoch",
    "early_stopped",
    "train_seconds",
    "seconds_per_epoch",
    "train_job_seconds",
    "seconds_per_image_batch1",
    "seconds_per_image_batched",
    "timing_batch_size",
    "train_peak_rss_mb",
    "train_peak_gpu_mb",
    "predict_peak_rss_mb",
    "predict_peak_gpu_mb",
    "mean_uncertainty",
    "accuracy_most_certain_20pct",
    "mae_most_certain_20pct",
    "device",
    "cpu",
    "cpu_count",
    "gpu",
]
_PROVENANCE_COLUMNS = ["git_commit", "config_hash", "dataset_checksum"]
# Numeric columns that describe the measurement rather than the result; not averaged over seeds.
_NOT_AVERAGED = {"seed", "n_test", "timed_images", "timing_batch_size", "cpu_count"}
TIME_COLUMN = "seconds_per_image_batch1"


def _read_benchmark(path: str | None) -> dict:
    """Peak memory and wall time of a job from Snakemake's `benchmark:` file (MB, s); {} when absent."""
    if not path or not Path(path).is_file():
        return {}
    frame = pd.read_csv(path, sep="\t")
    return {"train_peak_rss_mb": float(frame["max_rss"].max()), "train_job_seconds": float(frame["s"].max())}


def collect_run(
    metrics_json: str,
    card_json: str,
    predict_dir: str,
    fingerprint_json: str,
    uncertainty_json: str | None = None,
    train_benchmark: str | None = None,
    config_hash: str | None = None,
    commit: str | None = None,
) -> dict:
    """One leaderboard row from the files one run wrote. Missing optional files leave NaN/None."""
    row = {key: value for key, value in read_json(metrics_json).items()}
    card = read_json(card_json)
    training = card["training"]
    row.update(
        {
            "epochs_run": training["epochs_run"],
            "best_epoch": training["best_epoch"],
            "early_stopped": training.get("early_stopped"),
            "train_seconds": training["train_seconds"],
            "seconds_per_epoch": training["seconds_per_epoch"],
            "train_peak_gpu_mb": training.get("peak_gpu_mb"),
        }
    )
    row.update(_read_benchmark(train_benchmark))
    timing_json = Path(predict_dir) / "timing.json"
    if timing_json.is_file():
        timing = read_json(timing_json)
        row.update(
            {
                "n_parameters": timing["n_parameters"],
                "seconds_per_image_batch1": timing["seconds_per_image_batch1"],
                "seconds_per_image_batched": timing["seconds_per_image_batched"],
                "timing_batch_size": timing["timing_batch_size"],
                "predict_peak_rss_mb": timing["peak_cpu_rss_mb"],
                "predict_peak_gpu_mb": timing["peak_gpu_mb"],
                **timing["hardware"],
                **{f"version_{name}": version for name, version in timing["versions"].items()},
            }
        )
    else:
        log.warning(
            "%s: no timing.json (predicted before timing existed?); speed columns stay empty", predict_dir
        )
        row["device"] = training.get("device")
    if uncertainty_json and Path(uncertainty_json).is_file():
        uncertainty = read_json(uncertainty_json)
        row["mean_uncertainty"] = uncertainty.get("mean_uncertainty")
        # classification/segmentation report accuracy, regression the mean absolute error
        for key in ("accuracy_most_certain_20pct", "mae_most_certain_20pct"):
            row[key] = uncertainty.get(key)
    row.update(
        {
            "git_commit": commit,
            "config_hash": config_hash,
            "dataset_checksum": dataset_checksum(read_json(fingerprint_json)),
        }
    )
    return row


def leaderboard(rows: Sequence[dict]) -> pd.DataFrame:
    """Rows -> table sorted by dataset, task, model, seed. Columns: the keys, the test metrics (the
    model's, then the trivial baseline's), costs and hardware, versions, provenance."""
    table = pd.DataFrame(list(rows))
    keys = [k for k in KEYS if k in table]
    versions = [c for c in table.columns if c.startswith("version_")]
    known = set(keys) | set(_COST_COLUMNS) | set(_PROVENANCE_COLUMNS) | set(versions)
    metrics = [c for c in table.columns if c not in known and not c.startswith("baseline_")]
    baselines = [c for c in table.columns if c.startswith("baseline_")]
    rest = [c for c in _COST_COLUMNS + versions + _PROVENANCE_COLUMNS if c in table]
    return table[keys + metrics + baselines + rest].sort_values(keys).reset_index(drop=True)


def headline(task: str) -> str:
    """The metric a task's runs are ranked by (each task's `headline_metric`)."""
    return get_task(task).headline_metric


def mean_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of every numeric result column, per (dataset, task, model).

    The std is the sample standard deviation (ddof=1), NaN for a single seed. Adds `n_seeds`,
    `headline_metric`, `headline` ("mean ± std" of that metric) and `pareto_optimal` (on the front of
    higher headline metric and lower `seconds_per_image_batch1` within the dataset).
    """
    numeric = [
        c
        for c in table.columns
        if c not in KEYS
        and c not in _NOT_AVERAGED
        and pd.api.types.is_numeric_dtype(table[c])
        and not pd.api.types.is_bool_dtype(table[c])
    ]
    grouped = table.groupby(["dataset", "task", "model"], sort=True)
    mean = grouped[numeric].mean().add_suffix("_mean")
    std = grouped[numeric].std(ddof=1).add_suffix("_std")
    out = pd.concat([grouped.size().rename("n_seeds"), mean, std], axis=1)
    out = out[["n_seeds"] + [f"{c}_{s}" for c in numeric for s in ("mean", "std")]].reset_index()
    out.insert(4, "headline_metric", [headline(t) for t in out["task"]])
    out.insert(5, "headline", [_mean_std_text(row) for _, row in out.iterrows()])
    out["pareto_optimal"] = False
    time_mean = f"{TIME_COLUMN}_mean"
    for _, index in out.groupby("dataset").groups.items():
        subset = out.loc[index]
        scores = np.array([row.get(f"{row['headline_metric']}_mean", np.nan) for _, row in subset.iterrows()])
        times = (
            subset[time_mean].to_numpy(dtype=float) if time_mean in subset else np.full(len(subset), np.nan)
        )
        out.loc[index, "pareto_optimal"] = pareto_front(times, scores)
    return out


def _mean_std_text(row: pd.Series) -> str:
    mean, std = (
        row.get(f"{row['headline_metric']}_mean", np.nan),
        row.get(f"{row['headline_metric']}_std", np.nan),
    )
    if pd.isna(mean):
        return ""
    return f"{mean:.4f} ± {std:.4f}" if pd.notna(std) else f"{mean:.4f}"


def pareto_front(costs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats: none has lower-or-equal cost and higher-or-equal
    score with one of the two strictly better. Points with a NaN are never on the front."""
    costs, scores = np.asarray(costs, dtype=float), np.asarray(scores, dtype=float)
    valid = ~(np.isnan(costs) | np.isnan(scores))
    front = np.zeros(len(costs), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid & (np.arange(len(costs)) != i)
        dominated = (
            others & (costs <= costs[i]) & (scores >= scores[i]) & ((costs < costs[i]) | (scores > scores[i]))
        )
        front[i] = not dominated.any()
    return front


def ranking_table(mean: pd.DataFrame) -> pd.DataFrame:
    """Rank of each model per dataset by mean headline metric (1 = best, ties share the lower rank),
    and the mean rank over the datasets of the model's task (the AIMIC paper's cross-dataset summary)."""
    rows = []
    for (dataset, task), subset in mean.groupby(["dataset", "task"]):
        scores = subset[f"{headline(task)}_mean"]
        ranks = scores.rank(ascending=False, method="min")
        rows += [
            {"task": task, "model": model, "dataset": dataset, "rank": rank}
            for model, rank in zip(subset["model"], ranks, strict=True)
        ]
    if not rows:
        return pd.DataFrame(columns=["task", "model", "mean_rank", "n_datasets"])
    long = pd.DataFrame(rows)
    wide = long.pivot_table(index=["task", "model"], columns="dataset", values="rank").add_prefix("rank_")
    wide["mean_rank"] = long.groupby(["task", "model"])["rank"].mean()
    wide["n_datasets"] = long.groupby(["task", "model"])["rank"].count()
    return wide.reset_index().sort_values(["task", "mean_rank", "model"]).reset_index(drop=True)


def write_sqlite(tables: dict[str, pd.DataFrame], path: str | Path) -> None:
    """Write each table into one SQLite file (replacing it atomically)."""
    with atomic_path(path) as tmp:
        with sqlite3.connect(tmp) as connection:
            for name, frame in tables.items():
                frame.to_sql(name, connection, index=False, if_exists="replace")
        connection.close()


def plot_bars(mean: pd.DataFrame, runs: pd.DataFrame, path: str | Path) -> None:
    """One panel per dataset: headline metric per model (mean, error bar = std over seeds), each seed as
    a dot, the trivial baseline as a black dash."""
    import matplotlib.pyplot as plt

    datasets = sorted(mean["dataset"].unique())
    figure, axes = plt.subplots(
        1,
        len(datasets),
        figsize=(max(4.0, 0.7 * mean["model"].nunique() + 2) * len(datasets), 3.8),
        squeeze=False,
    )
    for axis, dataset in zip(axes[0], datasets, strict=True):
        subset = mean[mean["dataset"] == dataset]
        metric = subset["headline_metric"].iloc[0]
        x = np.arange(len(subset))
        axis.bar(
            x,
            subset[f"{metric}_mean"],
            yerr=subset[f"{metric}_std"].fillna(0),
            capsize=3,
            color="tab:blue",
            alpha=0.8,
        )
        for position, model in zip(x, subset["model"], strict=True):
            seeds = runs[(runs["dataset"] == dataset) & (runs["model"] == model)][metric]
            axis.scatter(np.full(len(seeds), position), seeds, color="black", s=8, zorder=3)
        baseline = f"baseline_{metric}_mean"
        if baseline in subset and subset[baseline].notna().any():
            axis.scatter(
                x, subset[baseline], color="black", marker="_", s=300, zorder=3, label="trivial baseline"
            )
            axis.legend(fontsize=7, loc="lower right")
        axis.set_xticks(x, subset["model"], rotation=45, ha="right", fontsize=8)
        axis.set_ylabel(f"test {metric}")
        axis.set_ylim(0, 1.02)
        axis.set_title(f"{dataset} (n seeds: {int(subset['n_seeds'].max())})", fontsize=9)
    save_figure(figure, path)


def plot_tradeoff(mean: pd.DataFrame, path: str | Path) -> None:
    """One panel per dataset: headline metric against inference time per image (batch 1, log scale),
    error bars over seeds, Pareto-optimal models in red joined by the front's staircase."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    datasets = sorted(mean["dataset"].unique())
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 4.0), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        subset = mean[mean["dataset"] == dataset]
        metric = subset["headline_metric"].iloc[0]
        time_mean = f"{TIME_COLUMN}_mean"
        if time_mean not in subset or subset[time_mean].isna().all():
            axis.text(0.5, 0.5, "no timing", ha="center", transform=axis.transAxes)
            continue
        ms, score = subset[time_mean] * 1000, subset[f"{metric}_mean"]
        axis.errorbar(
            ms,
            score,
            xerr=subset[f"{TIME_COLUMN}_std"].fillna(0) * 1000,
            yerr=subset[f"{metric}_std"].fillna(0),
            fmt="none",
            ecolor="grey",
            elinewidth=0.8,
        )
        front = subset["pareto_optimal"].to_numpy(dtype=bool)
        axis.scatter(ms[~front], score[~front], color="tab:blue", label="model", zorder=3)
        axis.scatter(ms[front], score[front], color="tab:red", label="Pareto front", zorder=3)
        order = np.argsort(ms[front].to_numpy())
        axis.step(
            ms[front].to_numpy()[order],
            score[front].to_numpy()[order],
            where="post",
            color="tab:red",
            linewidth=1,
        )
        for model, x, y in zip(subset["model"], ms, score, strict=True):
            axis.annotate(model, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel("inference time per image, batch 1 (ms)")
        axis.set_ylabel(f"test {metric}")
        axis.set_title(dataset, fontsize=9)
        axis.legend(fontsize=7, loc="best")
    save_figure(figure, path)


def write_leaderboard(
    runs: Sequence[dict],
    table_out: str,
    mean_out: str,
    ranking_out: str,
    sqlite_out: str,
    bars_out: str,
    tradeoff_out: str,
) -> pd.DataFrame:
    """Collect every run and write the outputs listed in the module docstring.

    Args:
        runs: one dict of `collect_run` keyword arguments per run (commit excluded).
    Returns:
        the per-run leaderboard.
    """
    import matplotlib

    matplotlib.use("Agg")
    commit = git_commit(Path(__file__).parent)  # the checkout this package runs from
    table = leaderboard([collect_run(**run, commit=commit) for run in runs])
    mean = mean_table(table)
    ranking = ranking_table(mean)
    write_table(table, table_out)
    write_table(mean, mean_out)
    write_table(ranking, ranking_out)
    write_sqlite({"runs": table, "mean": mean, "ranking": ranking}, sqlite_out)
    plot_bars(mean, table, bars_out)
    plot_tradeoff(mean, tradeoff_out)
    log.info(
        "leaderboard of %d runs (%d dataset x model cells) written to %s", len(table), len(mean), table_out
    )
    return table
