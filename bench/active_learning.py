"""Active-learning simulation: does annotating the most uncertain images first beat annotating at random?

    .venv/bin/python bench/active_learning.py --dataset wbc --out /tmp/snakescope-al-wbc
    .venv/bin/python bench/active_learning.py --dataset isbi --out /tmp/snakescope-al-isbi

One split of the dataset (seed 0) fixes the validation and test images; its training images are the pool
an annotator labels from. For each seed both strategies start from the same `start` random pool images.
Each round trains a fresh model on the labelled images for about the same number of optimiser steps
(snakescope's own convert, train, predict, evaluate and uncertainty functions, as the workflow runs
them), scores it on the test set, samples MC dropout on
the still unlabelled pool and labels `add` more images: the most uncertain ones by snakescope's per-image
score (`uncertainty`: mean normalised predictive entropy), the most uncertain by its epistemic part
(`bald`: mutual information between prediction and dropout mask), or random ones. The table printed at the end (and written to
OUT/summary.txt, per round to OUT/rounds.tsv, as a figure to OUT/learning_curves.png) gives per round the
test metric's mean ± std over the seeds, the area between the two curves, and the share of random
picking's final labels that each score needs to reach random picking's final score (the issue's
goal: at most 70 %). `--strategies` runs some of them; `--also` joins rounds measured earlier with the same
settings (the runs are CPU-deterministic and only random picking draws random numbers), e.g.

    .venv/bin/python bench/active_learning.py --dataset wbc --out /tmp/snakescope-al-wbc-bald --mc-samples 10 \
        --strategies bald --also docs/measurements/active_learning_wbc_3seeds_cpu_2026-12-03.tsv
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "workflow" / "scripts"))

from snakescope.augment import make_plan  # noqa: E402
from snakescope.config import TrainConfig, resolve_datasets, stage_settings  # noqa: E402
from snakescope.convert import convert_dataset  # noqa: E402
from snakescope.evaluate import evaluate_run  # noqa: E402
from snakescope.io import read_json, write_json  # noqa: E402
from snakescope.predict import predict_dataset  # noqa: E402
from snakescope.split import write_split  # noqa: E402
from snakescope.train import fit  # noqa: E402
from snakescope.uncertainty import estimate_uncertainty  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"
# The datasets of tests/workflow/configs/real_data.yaml, with small CPU models and short training.
DATASETS = {
    "wbc": {
        "config": {"task": "classification", "data_dir": str(SHARED / "wbc_zheng2018"),
                   "layout": {"images": "Dataset_1/*.bmp", "labels_csv": "Class_Labels_of_Dataset_1.csv",
                              "filename_column": "image ID", "label_column": "class label",
                              "filename_format": "{:03d}"},
                   "resize": [64, 64], "batch_size": 16},
        "model": "densenet121", "metric": "accuracy", "start": 20, "add": 20, "rounds": 3, "steps": 120,
    },
    "isbi": {
        "config": {"task": "segmentation", "data_dir": str(SHARED / "isbi2012_em_membranes"),
                   "layout": {"images": "train/image/*.png", "masks": "train/label/*.png"},
                   "patch_size": [128, 128], "batch_size": 8, "max_batches_per_epoch": 6},
        "model": "unet_small", "metric": "iou", "start": 2, "add": 2, "rounds": 4, "steps": 60,
    },
}
# strategy: the column of uncertainty.csv it ranks by (None: random picking)
STRATEGIES = {"uncertainty": "uncertainty", "bald": "mutual_information", "random": None}


def pick(pool: list[str], uncertainty: pd.Series | None, k: int, rng: np.random.Generator) -> list[str]:
    """The `k` pool images to label next: the most uncertain (ties in pool order), or random ones when
    `uncertainty` (per image id) is None."""
    if uncertainty is None:
        return [pool[i] for i in sorted(rng.choice(len(pool), size=min(k, len(pool)), replace=False))]
    scores = uncertainty.reindex(pool).to_numpy()
    order = np.argsort(-scores, kind="stable")
    return [pool[i] for i in order[:k]]


def labels_to_reach(curve: pd.DataFrame, target: float) -> float:
    """The fewest labelled images at which `curve` (n_labelled, mean) reaches `target`; inf if never."""
    reached = curve[curve["mean"] >= target - 1e-12]
    return float(reached["n_labelled"].min()) if len(reached) else float("inf")


def summarise(rounds: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per strategy and round: mean and std of the metric over seeds; per uncertainty score the area
    between its curve and random picking's (mean metric gain over random, averaged over the rounds after
    the shared first one, with the std of the per-seed areas) and the share of random picking's final
    labels it needs to reach random picking's final score."""
    curves = (rounds.groupby(["strategy", "round", "n_labelled"])["metric"].agg(["mean", "std"]).reset_index())
    wide = rounds.pivot_table(index=["seed", "round"], columns="strategy", values="metric").reset_index()
    later = wide[wide["round"] > 1]
    random_curve = curves[curves["strategy"] == "random"].sort_values("round")
    final_random = float(random_curve["mean"].iloc[-1])
    final_labels = float(random_curve["n_labelled"].iloc[-1])
    summary = {"random_final": final_random, "random_final_labels": final_labels}
    for strategy in (s for s in STRATEGIES if s != "random" and s in wide):
        per_seed = (later[strategy] - later["random"]).groupby(later["seed"]).mean()
        needed = labels_to_reach(curves[curves["strategy"] == strategy], final_random)
        summary.update({
            f"{strategy}_area_between_curves": float(per_seed.mean()),
            f"{strategy}_area_between_curves_std": float(per_seed.std()) if len(per_seed) > 1 else 0.0,
            f"{strategy}_labels_to_match": needed,
            f"{strategy}_label_share": needed / final_labels,
        })
    return curves, summary


def epochs_for(steps: int, n_labelled: int, settings: dict) -> int:
    """Epochs giving about `steps` optimiser steps: every round trains as long, however few images it has
    (a fixed number of epochs would give the first rounds a handful of steps and nothing learnt)."""
    batches = -(-n_labelled // settings["batch_size"])
    if settings.get("max_batches_per_epoch"):
        batches = min(batches, settings["max_batches_per_epoch"])
    return max(1, -(-steps // batches))


def train_and_score(settings: dict, model: str, prepared: Path, split: dict, pool: list[str], run: Path,
                    metric: str, seed: int, mc_samples: int) -> tuple[float, pd.DataFrame]:
    """Train on split["train"], return the test metric and the pool's per-image uncertainty scores."""
    run.mkdir(parents=True, exist_ok=True)
    write_json(split, run / "splits.json")
    write_json({"train": [], "val": [], "test": pool}, run / "pool.json")
    files = [str(prepared / name) for name in ("arrays.zarr", "samples.tsv")]
    write_json(make_plan(settings, read_json(prepared / "fingerprint.json")), run / "plan.json")
    fit(*files, str(run / "splits.json"), str(run / "plan.json"), str(prepared / "fingerprint.json"),
        TrainConfig.from_settings(settings, model=model, seed=seed), str(run / "model.pt"),
        str(run / "history.tsv"), str(run / "card.json"), str(run), threads=2)
    predict_dataset(str(run / "model.pt"), *files, str(run / "splits.json"), str(run / "predict"), threads=2)
    metrics = evaluate_run(str(run / "predict"), *files, str(run / "splits.json"), str(prepared / "fingerprint.json"),
                           str(run / "evaluate"))
    columns = [column for column in STRATEGIES.values() if column]
    if not pool:
        return float(metrics[metric]), pd.DataFrame(columns=columns, dtype=float)
    estimate_uncertainty(str(run / "model.pt"), *files, str(run / "pool.json"), str(run / "uncertainty"),
                         samples=mc_samples, seed=seed, threads=2)
    table = pd.read_csv(run / "uncertainty" / "uncertainty.csv", dtype={"id": str})
    return float(metrics[metric]), table.groupby("id")[columns].mean()


def simulate(name: str, spec: dict, out: Path, seeds: list[int], mc_samples: int,
             strategies: list[str]) -> pd.DataFrame:
    (settings,) = resolve_datasets({**spec["config"], "augmentations": ["flip", "rotate90"], "seed": 0}).values()
    prepared = out / "prepared"
    if not (prepared / "fingerprint.json").is_file():
        convert_dataset(stage_settings(settings, "convert"), prepared / "arrays.zarr", prepared / "samples.tsv",
                        prepared / "fingerprint.json")
    fixed = write_split(str(prepared / "samples.tsv"), stage_settings(settings, "split"), str(prepared / "splits.json"))
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        start = pick(fixed["train"], None, spec["start"], rng)
        labelled = dict.fromkeys(strategies, start)
        first = None  # round 1 is the same for both strategies: trained once
        for round_ in range(1, spec["rounds"] + 1):
            for strategy in strategies:
                chosen = labelled[strategy]
                pool = [i for i in fixed["train"] if i not in chosen]
                split = {"train": chosen, "val": fixed["val"], "test": fixed["test"]}
                if round_ == 1 and first is not None:
                    score, uncertainty = first
                else:
                    run = out / f"seed{seed}" / strategy / f"round{round_}"
                    epochs = epochs_for(spec["steps"], len(chosen), settings)
                    score, uncertainty = train_and_score({**settings, "epochs": epochs, "patience": epochs},
                                                         spec["model"], prepared, split, pool, run,
                                                         spec["metric"], seed, mc_samples)
                    first = first or (score, uncertainty)
                rows.append({"dataset": name, "seed": seed, "strategy": strategy, "round": round_,
                             "n_labelled": len(chosen), "metric": score})
                print(f"{name} seed {seed} {strategy:>11} round {round_}: {len(chosen):4d} labelled, "
                      f"test {spec['metric']} {score:.4f}", flush=True)
                pd.DataFrame(rows).to_csv(out / "rounds.tsv", sep="\t", index=False)  # kept if stopped early
                column = STRATEGIES[strategy]
                picked = pick(pool, uncertainty[column] if column else None, spec["add"], rng)
                labelled[strategy] = chosen + picked
    return pd.DataFrame(rows)


def learning_curves_figure(curves: pd.DataFrame, metric: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.8))
    for strategy, curve in curves.groupby("strategy"):
        axis.errorbar(curve["n_labelled"], curve["mean"], yerr=curve["std"].fillna(0), marker="o", capsize=3,
                      label=f"{strategy} picking")
    axis.set_xlabel("labelled training images")
    axis.set_ylabel(f"test {metric}")
    axis.set_title(title, fontsize=9)
    axis.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--rounds", type=int, help="override the dataset's number of rounds")
    parser.add_argument("--steps", type=int, help="override the dataset's optimiser steps per training")
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    parser.add_argument("--also", type=Path, nargs="*", default=[],
                        help="rounds.tsv files measured earlier with the same settings, joined before summarising")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    spec = {**DATASETS[args.dataset]}
    spec.update({key: value for key, value in (("rounds", args.rounds), ("steps", args.steps)) if value})
    args.out.mkdir(parents=True, exist_ok=True)
    rounds = simulate(args.dataset, spec, args.out, args.seeds, args.mc_samples, args.strategies)
    rounds = pd.concat([rounds, *(pd.read_csv(path, sep="\t") for path in args.also)], ignore_index=True)
    rounds = rounds[rounds["seed"].isin(args.seeds)].drop_duplicates(["seed", "strategy", "round"])
    rounds.to_csv(args.out / "rounds.tsv", sep="\t", index=False)
    curves, summary = summarise(rounds)
    learning_curves_figure(curves, spec["metric"], f"{args.dataset}: {spec['model']}, {len(args.seeds)} seeds",
                           args.out / "learning_curves.png")
    text = "\n".join([
        f"{args.dataset}: {spec['model']}, about {spec['steps']} steps a training, start {spec['start']}, +{spec['add']} "
        f"a round, {len(args.seeds)} seeds, {args.mc_samples} MC samples",
        curves.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
        *(f"{key}: {value:.4f}" for key, value in summary.items()),
    ])
    print(text)
    (args.out / "summary.txt").write_text(text + "\n")
    return summary


if __name__ == "__main__":
    main()
