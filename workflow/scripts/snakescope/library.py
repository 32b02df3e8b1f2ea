"""library: every evaluated run, with its dataset's fingerprint, and a meta-learner that reads it.

The results library is one SQLite table (`runs`) that grows with every workflow that evaluates
something: a leaderboard row (model, seed, headline score, costs, provenance) plus numeric features of
the dataset's fingerprint. A results table shipped with snakescope (`workflow/resources/
results_library.tsv`, our own benchmark of the shared datasets, see docs/autoconfig.md) is read
beside it, so a fresh install already learns from earlier runs.

The meta-learner is nearest neighbours in fingerprint space (scikit-learn), the approach of
auto-sklearn's meta-learning warm start: find the datasets of the same task most like the new one and
recommend the model that scored best *relative to the best model on each of them*, weighted by
closeness. Relative scores (points below that dataset's best) make easy and hard datasets comparable.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.io import atomic_path

log = logging.getLogger(__name__)

TABLE = "runs"
SHIPPED_LIBRARY = Path(__file__).resolve().parents[2] / "resources" / "results_library.tsv"
# One library row is identified by these; re-recording the same run replaces it.
ROW_KEY = ["dataset_checksum", "config_hash", "model", "seed"]
# Columns kept from a leaderboard row (besides the features).
RUN_COLUMNS = [
    "dataset", "task", "model", "seed", "score", "metric", "baseline_score",
    "seconds_per_image_batch1", "train_seconds", "train_peak_gpu_mb", "n_parameters", "epochs_run",
    "device", "gpu", "git_commit", "config_hash", "dataset_checksum",
]
# Feature -> the smallest difference that matters (in the feature's own units). Distances divide each
# feature by its spread over the library's datasets, but never by less than this: with a handful of
# datasets, a feature that happens to be nearly equal on all of them (brightness spread 0.073 and 0.074)
# would otherwise turn a small difference into dozens of standard deviations and decide alone.
FEATURE_RESOLUTION = {
    "log_images": 0.3,  # a factor of two in the number of images
    "log_pixels": 0.3,
    "spatial_dims": 1.0,
    "channels": 1.0,
    "bit_depth": 8.0,
    "intensity_cv": 0.1,
    "brightness_spread": 0.05,
    "n_classes": 1.0,
    "imbalance": 0.3,
    "foreground_fraction": 0.1,
    "log_object_area": 0.3,
}
FEATURES = list(FEATURE_RESOLUTION)


def fingerprint_features(fingerprint: dict) -> dict[str, float]:
    """Numbers describing a dataset, comparable across datasets: sizes on log scales, fractions in [0, 1].

    Features a task does not have (object size for classification) are 0, so they never separate two
    datasets of that task.
    """
    shape = fingerprint.get("shape_median") or [1]
    intensity = fingerprint.get("intensity") or [{"mean": 0.0, "std": 0.0}]
    mean = float(np.mean([c["mean"] for c in intensity]))
    std = float(np.mean([c["std"] for c in intensity]))
    dtypes = fingerprint.get("source_dtypes") or {}
    bits = max((np.dtype(d).itemsize * 8 if np.dtype(d).kind in "ui" else 32 for d in dtypes), default=8)
    features = {
        "log_images": math.log10(max(1, fingerprint.get("n_images", 1))),
        "log_pixels": math.log10(max(1.0, float(np.prod(shape)))),
        "spatial_dims": float(fingerprint.get("spatial_dims", 2)),
        "channels": float(fingerprint.get("channels", 1)),
        "bit_depth": float(bits),
        "intensity_cv": std / abs(mean) if mean else 0.0,
        "brightness_spread": float(fingerprint.get("brightness_spread", 0.0)),
        "n_classes": 0.0,
        "imbalance": 0.0,
        "foreground_fraction": 0.0,
        "log_object_area": 0.0,
    }
    if fingerprint.get("class_counts"):
        counts = [c for c in fingerprint["class_counts"].values() if c]
        features["n_classes"] = float(len(fingerprint["class_counts"]))
        features["imbalance"] = math.log10(max(counts) / min(counts)) if counts else 0.0
    elif fingerprint.get("class_fraction"):
        fractions = list(fingerprint["class_fraction"].values())
        features["n_classes"] = float(len(fractions))
        features["foreground_fraction"] = 1.0 - fractions[0]
        features["imbalance"] = math.log10(max(fractions) / max(min(fractions), 1e-6))
    if fingerprint.get("foreground_fraction") is not None:
        features["foreground_fraction"] = float(fingerprint["foreground_fraction"])
    if fingerprint.get("median_object_area"):
        features["log_object_area"] = math.log10(max(1.0, float(fingerprint["median_object_area"])))
    return features


def library_rows(leaderboard: pd.DataFrame, fingerprints: dict[str, dict]) -> pd.DataFrame:
    """Leaderboard rows -> library rows: the headline score under one name, plus dataset features.

    Args:
        leaderboard: `results/summary/leaderboard.tsv` as a frame (one row per run).
        fingerprints: dataset name -> its `convert` fingerprint.
    """
    from snakescope.summary import headline

    rows = []
    for _, run in leaderboard.iterrows():
        metric = headline(run["task"])
        row = {column: run.get(column) for column in RUN_COLUMNS if column in run}
        row.update(
            metric=metric,
            score=float(run[metric]),
            baseline_score=float(run.get(f"baseline_{metric}", np.nan)),
            **fingerprint_features(fingerprints[run["dataset"]]),
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=RUN_COLUMNS + FEATURES)


def record(rows: pd.DataFrame, library_path: str | Path) -> int:
    """Add `rows` to the SQLite library (created if absent); a run recorded before is replaced.

    Returns the number of rows in the library afterwards. The file is written to a temporary copy and
    renamed, so an interrupted job never leaves a half-written library.
    """
    library_path = Path(library_path)
    library_path.parent.mkdir(parents=True, exist_ok=True)
    merged = _latest_per_run([read_sqlite(library_path), rows])
    with atomic_path(library_path) as tmp, sqlite3.connect(tmp) as connection:
        merged.to_sql(TABLE, connection, index=False)
    return len(merged)


def read_sqlite(path: str | Path) -> pd.DataFrame:
    if not Path(path).is_file():
        return pd.DataFrame(columns=RUN_COLUMNS + FEATURES)
    with sqlite3.connect(path) as connection:
        return pd.read_sql(f"SELECT * FROM {TABLE}", connection)


def load_library(library_path: str | Path | None, shipped: str | Path | None = SHIPPED_LIBRARY) -> pd.DataFrame:
    """The shipped results and the local library together (local rows win for the same run)."""
    frames = []
    if shipped and Path(shipped).is_file():
        frames.append(pd.read_csv(shipped, sep="\t"))
    if library_path:
        frames.append(read_sqlite(library_path))
    return _latest_per_run(frames)


def _latest_per_run(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The frames' rows together, one per run (ROW_KEY): a later frame's row replaces an earlier one."""
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=RUN_COLUMNS + FEATURES)
    library = pd.concat(frames, ignore_index=True)
    key = library[ROW_KEY].astype(str).agg("|".join, axis=1)
    return library[~key.duplicated(keep="last")].reset_index(drop=True)


def dataset_results(library: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model): mean score over seeds, points below the dataset's best model
    (`regret`, >= 0) and the median inference time; with the dataset's features."""
    by = ["dataset_checksum", "dataset", "task", "model"]
    numeric = library.assign(score=pd.to_numeric(library["score"], errors="coerce"))
    per_model = numeric.groupby(by, dropna=False).agg(
        score=("score", "mean"),
        seconds_per_image=("seconds_per_image_batch1", "median"),
        n_runs=("score", "size"),
        **{f: (f, "first") for f in FEATURES},
    ).reset_index()
    best = per_model.groupby("dataset_checksum")["score"].transform("max")
    per_model["regret"] = 100.0 * (best - per_model["score"])
    return per_model


@dataclass
class Recommendation:
    """The meta-learner's choice and why."""

    model: str
    predicted_regret: float  # points below the best model, weighted over the neighbours
    neighbours: list[dict] = field(default_factory=list)  # dataset, distance, weight, best model, score
    candidates: list[dict] = field(default_factory=list)  # model, predicted regret, datasets seen on

    def reasons(self) -> list[str]:
        near = "; ".join(
            f"{n['dataset']} (distance {n['distance']:.2f}: best {n['best_model']} {n['best_score']:.3f}, "
            f"{self.model} {n['chosen_score']:.3f})" if n["chosen_score"] is not None else
            f"{n['dataset']} (distance {n['distance']:.2f}: best {n['best_model']} {n['best_score']:.3f})"
            for n in self.neighbours
        )
        others = ", ".join(f"{c['model']} {c['predicted_regret']:.1f}" for c in self.candidates[1:4])
        return [
            f"{self.model} is predicted {self.predicted_regret:.1f} points below the best model on the most "
            f"similar datasets in the results library: {near}.",
            f"Next best predictions (points below the best): {others or 'none'}.",
        ]


def recommend_model(
    features: dict[str, float],
    task: str,
    library: pd.DataFrame,
    candidates: list[str],
    k: int = 3,
    exclude_dataset: str | None = None,
) -> Recommendation | None:
    """The candidate model predicted to score best on a dataset with `features`, from the k most similar
    library datasets of the same task; None when the library holds no dataset of this task with any of
    the candidates.

    Similarity: Euclidean distance between standardised feature vectors (each feature divided by its
    standard deviation over the library's datasets of this task, or by its FEATURE_RESOLUTION when that
    is larger). Each neighbour's vote is weighted 1 / (distance + 0.5), so an
    identical dataset counts most but never alone. A candidate's predicted regret is the weighted mean of
    its regret on the neighbours that ran it; ties go to the faster model.
    """
    from sklearn.neighbors import NearestNeighbors

    results = dataset_results(library[library["task"] == task]) if not library.empty else pd.DataFrame()
    if results.empty:
        return None
    if exclude_dataset is not None:
        results = results[results["dataset"] != exclude_dataset]
    results = results[results["model"].isin(candidates)]
    datasets = results.drop_duplicates("dataset_checksum").reset_index(drop=True)
    if datasets.empty:
        return None
    known = datasets[FEATURES].astype(float).to_numpy()
    scale = np.maximum(known.std(axis=0), [FEATURE_RESOLUTION[f] for f in FEATURES])
    centre = known.mean(axis=0)
    search = NearestNeighbors(n_neighbors=min(k, len(datasets))).fit((known - centre) / scale)
    query = (np.array([[features[f] for f in FEATURES]], dtype=float) - centre) / scale
    distances, indices = search.kneighbors(query)
    neighbours = []
    for distance, index in zip(distances[0], indices[0], strict=True):
        checksum = datasets.loc[index, "dataset_checksum"]
        on_dataset = results[results["dataset_checksum"] == checksum]
        best = on_dataset.loc[on_dataset["score"].idxmax()]
        neighbours.append(
            {
                "dataset": best["dataset"],
                "checksum": checksum,
                "distance": float(distance),
                "weight": 1.0 / (float(distance) + 0.5),
                "best_model": best["model"],
                "best_score": float(best["score"]),
            }
        )
    predictions = []
    for model in candidates:
        votes = [
            (n["weight"], row["regret"], row["seconds_per_image"])
            for n in neighbours
            for _, row in results[(results["dataset_checksum"] == n["checksum"]) & (results["model"] == model)].iterrows()
        ]
        if not votes:
            continue
        weights = np.array([v[0] for v in votes])
        regret = float(np.dot(weights, [v[1] for v in votes]) / weights.sum())
        seconds = float(np.nanmedian([v[2] for v in votes])) if any(pd.notna(v[2]) for v in votes) else math.inf
        predictions.append({"model": model, "predicted_regret": regret, "seconds_per_image": seconds,
                            "datasets": len(votes)})
    if not predictions:
        return None
    predictions.sort(key=lambda p: (round(p["predicted_regret"], 6), p["seconds_per_image"]))
    chosen = predictions[0]["model"]
    for n in neighbours:
        row = results[(results["dataset_checksum"] == n["checksum"]) & (results["model"] == chosen)]
        n["chosen_score"] = float(row["score"].iloc[0]) if len(row) else None
    return Recommendation(chosen, predictions[0]["predicted_regret"], neighbours, predictions)


def record_workflow_runs(leaderboard_tsv: str, fingerprint_jsons: list[str], library_path: str, rows_out: str) -> None:
    """The `library` rule: add a workflow's leaderboard to the results library."""
    from snakescope.io import read_json, write_table

    fingerprints = {fp["dataset"]: fp for fp in map(read_json, fingerprint_jsons)}
    rows = library_rows(pd.read_csv(leaderboard_tsv, sep="\t"), fingerprints)
    total = record(rows, library_path)
    log.info("recorded %d runs in %s (%d runs in all)", len(rows), library_path, total)
    write_table(rows, rows_out)
