"""Score every tool's test predictions with our evaluation code, and print the comparison table.

    .venv/bin/python bench/peers/score.py WORKDIR/isbi      # or WORKDIR/wbc, WORKDIR/fmd, WORKDIR/cpm15

Reads what bench/peers/run.sh left in the dataset folder: each run's predictions and its `<run>.time`
(GNU time -v: wall time and the peak resident memory of its largest process), a run being named
<tool>_<budget>. Writes scores.tsv (one row per test image and run for segmentation, instances and
regression, one per run for classification) and prints one row per run, the mean over the test images.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))
from snakescope.tasks.classification import classification_metrics  # noqa: E402
from snakescope.tasks.instance_segmentation.labels import watershed_instances  # noqa: E402
from snakescope.tasks.instance_segmentation.metrics import instance_metrics  # noqa: E402
from snakescope.tasks.regression.metrics import regression_metrics  # noqa: E402
from snakescope.tasks.segmentation import segmentation_metrics  # noqa: E402


def _read(path: Path) -> np.ndarray:
    return tifffile.imread(path) if path.suffix in (".tif", ".tiff") else np.asarray(Image.open(path))


def _snakescope_predictions(root: Path, run: str) -> pd.DataFrame:
    (path,) = root.glob(f"{run}/results/*/*/seed*/predict/predictions.csv")
    return pd.read_csv(path, dtype={"id": str, "predicted_label": str})


# Segmentation: each reader returns a test image's mask in our convention (class 1 = cell interior).
def snakescope_mask(root: Path, run: str, stem: str) -> np.ndarray:
    (path,) = root.glob(f"{run}/results/*/*/seed*/predict/{stem}_mask.tif")
    return _read(path)


def nnunet_mask(root: Path, run: str, stem: str) -> np.ndarray:
    return 1 - _read(root / f"{run}_pred" / f"isbi_{int(stem):03d}.png")  # nnU-Net's class 1 is the membrane


def biapy_mask(root: Path, run: str, stem: str) -> np.ndarray:
    (path,) = root.glob(f"{run}_results/*/results/*/per_image_binarized/{int(stem):03d}.tif")
    return 1 - (np.squeeze(_read(path)) > 0).astype(np.uint8)  # BiaPy's class 1 is the membrane


# Instances: each reader returns a test image's label image (0 background, 1..N objects).
def snakescope_instances(root: Path, run: str, stem: str) -> np.ndarray:
    (path,) = root.glob(f"{run}/results/*/*/seed*/predict/{stem}_instances.tif")
    return _read(path)


def nnunet_instances(root: Path, run: str, stem: str) -> np.ndarray:
    # nnU-Net's background / interior / boundary probabilities, (3, 1, Y, X), through our watershed with
    # the default marker threshold and our minimum object area (ours tunes both on its validation images).
    probabilities = np.load(root / f"{run}_pred" / f"cpm_{stem[-2:]}.npz")["probabilities"][:, 0]
    min_area = json.loads((root / "split.json").read_text())["min_area"]
    return watershed_instances(probabilities.astype(np.float32), 0.5, min_area)


def biapy_instances(root: Path, run: str, stem: str) -> np.ndarray:
    (path,) = root.glob(f"{run}_results/*/results/*/full_image_instances/{stem}.tif")
    return np.squeeze(_read(path))


# Classification: each reader returns {test stem: (predicted label, probabilities in `classes` order)}.
def snakescope_labels(root: Path, run: str, classes: list[str]) -> dict:
    table = _snakescope_predictions(root, run)
    probabilities = table[[f"prob_{c}" for c in classes]].to_numpy()
    return {i: (label, p) for i, label, p in zip(table["id"], table["predicted_label"], probabilities, strict=True)}


def biapy_labels(root: Path, run: str, classes: list[str]) -> dict:
    (path,) = root.glob(f"{run}_results/*/results/*/predictions.csv")
    table = pd.read_csv(path)
    folders = sorted(p.name for p in (root / "biapy" / "train").iterdir())  # BiaPy numbers the class folders
    # BiaPy writes no probabilities: its hard label stands in, so its AUC is that of a hard classifier.
    return {Path(f).stem: (folders[int(c)], np.eye(len(classes))[classes.index(folders[int(c)])])
            for f, c in zip(table["filename"], table["class"], strict=True)}


# Regression: each reader returns {test stem: prediction in the target's units (0-255)}.
def snakescope_images(root: Path, run: str) -> dict:
    (predict,) = root.glob(f"{run}/results/*/*/seed*/predict")
    table = _snakescope_predictions(root, run)
    # Our ids are the user's file names, prefixed by the field where names repeat ("19_HV110_...").
    return {_fmd_stem(i): _read(predict / f) for i, f in zip(table["id"], table["prediction"], strict=True)}


def _fmd_stem(sample_id: str) -> str:
    field, name = re.fullmatch(r"(?:\w*?_)?(\d+)_(HV\w+)", sample_id).groups()
    return f"{int(field):02d}_{name}"


def biapy_images(root: Path, run: str) -> dict:
    return {p.stem: np.squeeze(_read(p)).astype(np.float32)
            for p in root.glob(f"{run}_results/*/results/*/per_image/*.tif")}


SEGMENTATION = {"snakescope": snakescope_mask, "nnunet": nnunet_mask, "biapy": biapy_mask}
INSTANCES = {"snakescope": snakescope_instances, "nnunet": nnunet_instances, "biapy": biapy_instances}
CLASSIFICATION = {"snakescope": snakescope_labels, "biapy": biapy_labels}
REGRESSION = {"snakescope": snakescope_images, "biapy": biapy_images}


def gnu_time(path: Path) -> dict:
    """Wall seconds and peak RSS (GiB) from `/usr/bin/time -v` output."""
    text = path.read_text()
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(clock.split(":"))))
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return {"wall_seconds": round(seconds), "peak_rss_gib": round(rss_kib / 2**20, 2)}


def finished_runs(root: Path) -> list[Path]:
    # A run still going or failed (see <run>.log) has no "Exit status: 0" yet.
    return [t for t in sorted(root.glob("*.time")) if "Exit status: 0" in t.read_text()]


def score_segmentation(root: Path, split: dict) -> pd.DataFrame:
    rows = []
    for timing in finished_runs(root):
        run = timing.stem
        read_mask = SEGMENTATION[run.split("_")[0]]
        for stem in split["test"]:
            truth = tifffile.imread(root / "truth" / f"{stem}.tif")
            mask = read_mask(root, run, stem).astype(np.uint8)
            interior = segmentation_metrics(truth, mask, None, 2)
            membrane = segmentation_metrics(1 - truth, 1 - mask, None, 2)
            rows.append({"run": run, "id": stem, "pixel_accuracy": interior["pixel_accuracy"],
                         "membrane_iou": membrane["foreground_iou"], "membrane_dice": membrane["foreground_dice"],
                         "interior_iou": interior["foreground_iou"], "interior_dice": interior["foreground_dice"],
                         **gnu_time(timing)})
    return pd.DataFrame(rows)


def score_instances(root: Path, split: dict) -> pd.DataFrame:
    rows = []
    for timing in finished_runs(root):
        run = timing.stem
        read_instances = INSTANCES[run.split("_")[0]]
        for stem in split["test"]:
            metrics = instance_metrics(tifffile.imread(root / "truth" / f"{stem}.tif"), read_instances(root, run, stem))
            rows.append({"run": run, "id": stem, **{k: metrics[k] for k in
                         ("n_true", "n_pred", "f1_50", "ap_50", "aji", "pq", "dice")}, **gnu_time(timing)})
    return pd.DataFrame(rows)


def score_classification(root: Path, split: dict) -> pd.DataFrame:
    truth = pd.read_csv(root / "truth" / "labels.tsv", sep="\t", dtype=str).set_index("id")["label"]
    classes = sorted(p.name for p in (root / "biapy" / "train").iterdir())
    rows = []
    for timing in finished_runs(root):
        run = timing.stem
        predicted = CLASSIFICATION[run.split("_")[0]](root, run, classes)
        missing = set(split["test"]) - set(predicted)
        if missing:
            raise SystemExit(f"{run}: no prediction for test image(s) {sorted(missing)}")
        stems = split["test"]
        metrics = classification_metrics([truth[s] for s in stems], [predicted[s][0] for s in stems],
                                         np.stack([predicted[s][1] for s in stems]), classes)
        rows.append({"run": run, "n_test": len(stems), **{k: metrics[k] for k in
                     ("accuracy", "balanced_accuracy", "f1_macro", "auc_ovr_macro")}, **gnu_time(timing)})
    return pd.DataFrame(rows)


def score_regression(root: Path, split: dict) -> pd.DataFrame:
    truth = tifffile.imread(root / "truth" / "field19.tif").astype(np.float64)[None]
    rows = []
    for timing in finished_runs(root):
        run = timing.stem
        predicted = REGRESSION[run.split("_")[0]](root, run)
        for stem in split["test"]:
            metrics = regression_metrics(truth, np.asarray(predicted[stem], np.float64).reshape(truth.shape), 255.0)
            rows.append({"run": run, "id": stem, **{k: metrics[k] for k in ("psnr", "ssim", "pearson_r", "mae")},
                         **gnu_time(timing)})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    split = json.loads((root / "split.json").read_text())
    scorer = {"segmentation": score_segmentation, "instance_segmentation": score_instances,
              "classification": score_classification, "regression": score_regression}[split["task"]]
    scored = scorer(root, split)
    scored.to_csv(root / "scores.tsv", sep="\t", index=False)
    table = scored.drop(columns="id", errors="ignore").groupby("run", sort=False).mean().round(3)
    print(table.to_string())
