"""Leave-one-dataset-out evaluation of the model recommendation (issue 6).

    python bench/lodo.py [LIBRARY] [--k 2]

LIBRARY: a results table (.tsv, default the shipped workflow/resources/results_library.tsv) or a
results library (.sqlite). For every dataset in it, the meta-learner recommends a model from the
*other* datasets of the same task only, among the models that ran on the held-out dataset, and the
recommendation is scored against that dataset's real results:

* regret: points (headline metric x 100: accuracy, IoU, ...) below the best model in hindsight;
* hit: the recommendation is the best model, or within 1 point of it;
* compared with the model that is best on average over the other datasets (no similarity), a fixed
  default (snakescope's pre-planner defaults: resnet50, unet), the planner's cold-start rule for a CPU
  (mobilenet_v2, unet_small) and a model drawn at random (expected regret).

Prints a Markdown table per dataset and a summary line per strategy (docs/autoconfig.md holds the output).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.library import (
    FEATURES,
    SHIPPED_LIBRARY,
    dataset_results,
    load_library,
    read_sqlite,
    recommend_model,
)
from snakescope.tasks import get_task


def read_library(path: Path) -> pd.DataFrame:
    if path.suffix == ".sqlite":
        return read_sqlite(path)
    return load_library(None, shipped=path)


def evaluate(library: pd.DataFrame, k: int) -> pd.DataFrame:
    results = dataset_results(library)
    rows = []
    for (task, dataset), on_dataset in results.groupby(["task", "dataset"]):
        scores = on_dataset.set_index("model")["score"]
        features = on_dataset.iloc[0][FEATURES].astype(float).to_dict()
        choice = recommend_model(features, task, library, list(scores.index), k=k, exclude_dataset=dataset)
        best = scores.idxmax()

        def regret(model, scores=scores):
            return 100.0 * (scores.max() - scores[model]) if model in scores else np.nan

        # "global": the model with the lowest mean regret over the other datasets of the task, ignoring
        # which are similar; what the nearest-neighbour step must beat to be worth having.
        others = results[(results["task"] == task) & (results["dataset"] != dataset)
                         & results["model"].isin(scores.index)]
        global_pick = others.groupby("model")["regret"].mean().idxmin() if not others.empty else None
        recommended = choice.model if choice else None
        default, rule = get_task(task).default_model, get_task(task).rule_models["cpu"]
        rows.append({
            "task": task, "dataset": dataset, "models": len(scores),
            "best": f"{best} {scores[best]:.3f}",
            "recommended": f"{recommended} {scores[recommended]:.3f}" if recommended else "none",
            "regret_recommended": regret(recommended) if recommended else np.nan,
            "regret_global": regret(global_pick) if global_pick else np.nan,
            "regret_default": regret(default),
            "regret_rule": regret(rule),
            "regret_random": float(np.mean([regret(m) for m in scores.index])),
            "neighbours": ", ".join(f"{n['dataset']} ({n['distance']:.1f})" for n in choice.neighbours) if choice else "",
        })
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    lines = []
    for strategy in ("recommended", "global", "default", "rule", "random"):
        regrets = table[f"regret_{strategy}"].dropna()
        lines.append({
            "strategy": strategy,
            "datasets": len(regrets),
            "mean_regret_points": regrets.mean(),
            "median_regret_points": regrets.median(),
            "best_share": (regrets <= 1e-9).mean() if strategy != "random" else np.nan,
            "within_1_point_share": (regrets <= 1.0).mean() if strategy != "random" else np.nan,
        })
    return pd.DataFrame(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library", nargs="?", type=Path, default=SHIPPED_LIBRARY)
    parser.add_argument("--k", type=int, default=2, help="neighbours the meta-learner uses (default 2)")
    args = parser.parse_args()
    library = read_library(args.library)
    table = evaluate(library, args.k)
    print(f"library: {args.library} ({len(library)} runs, {library['dataset'].nunique()} datasets), k={args.k}\n")
    print(table.to_markdown(index=False, floatfmt=".1f"))
    print()
    print(summary(table).to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
