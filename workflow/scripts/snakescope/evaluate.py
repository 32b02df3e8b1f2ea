"""evaluate: metrics and figures on the test set, beside a trivial baseline for scale.

The baseline is what a model that learned nothing would score: the majority class (classification)
or the most frequent pixel class of the training masks everywhere (segmentation). A useful model beats
it; the report shows both. Metrics come from scikit-learn.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.io import read_json, save_figure, write_json, write_table
from snakescope.plots import displayable
from snakescope.regression import evaluate_regression, orthogonal_views

log = logging.getLogger(__name__)


def classification_metrics(truth: list[str], predicted: list[str], probabilities: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro F1, macro Jaccard, MAE/MSE of the class index, one-vs-rest AUC.

    AUC is macro-averaged over the classes present in `truth` (a class absent from the test set has no
    ROC curve); it is NaN when fewer than two classes are present.
    """
    from sklearn import metrics

    index = {c: i for i, c in enumerate(classes)}
    y_true = np.array([index[t] for t in truth])
    y_pred = np.array([index[p] for p in predicted])
    result = {
        "accuracy": metrics.accuracy_score(y_true, y_pred),
        "balanced_accuracy": metrics.balanced_accuracy_score(y_true, y_pred),
        "f1_macro": metrics.f1_score(y_true, y_pred, average="macro", labels=sorted(set(y_true)), zero_division=0),
        "jaccard_macro": metrics.jaccard_score(y_true, y_pred, average="macro", labels=sorted(set(y_true)), zero_division=0),
        "mae": metrics.mean_absolute_error(y_true, y_pred),
        "mse": metrics.mean_squared_error(y_true, y_pred),
    }
    present = sorted(set(y_true))
    if len(present) >= 2:
        aucs = [metrics.roc_auc_score(y_true == c, probabilities[:, c]) for c in present]
        result["auc_ovr_macro"] = float(np.mean(aucs))
    else:
        result["auc_ovr_macro"] = float("nan")
    return {k: float(v) for k, v in result.items()}


def segmentation_metrics(truth: np.ndarray, mask: np.ndarray, foreground_probability: np.ndarray | None,
                         n_classes: int) -> dict:
    """Per-image metrics: pixel accuracy; IoU (Jaccard) and Dice averaged over every class present in
    the truth or the prediction (`iou`, `dice`: the usual mean IoU, so predicting one class everywhere
    scores low) and over the foreground classes only (`foreground_iou`, `foreground_dice`); for two
    classes also the mean absolute / relative error and Pearson r of the foreground probability
    against the true mask."""
    result = {"pixel_accuracy": float((truth == mask).mean())}
    ious, dices = {}, {}
    for c in range(n_classes):
        t, p = truth == c, mask == c
        union = (t | p).sum()
        if union == 0:
            continue
        intersection = (t & p).sum()
        ious[c] = intersection / union
        dices[c] = 2 * intersection / (t.sum() + p.sum())
    foreground = [c for c in ious if c > 0]
    result["iou"] = float(np.mean(list(ious.values())))
    result["dice"] = float(np.mean(list(dices.values())))
    result["foreground_iou"] = float(np.mean([ious[c] for c in foreground])) if foreground else 1.0
    result["foreground_dice"] = float(np.mean([dices[c] for c in foreground])) if foreground else 1.0
    if foreground_probability is not None:
        target = (truth > 0).astype(np.float32)
        error = np.abs(foreground_probability - target)
        result["mean_absolute_error"] = float(error.mean())
        result["mean_relative_error"] = float(error.sum() / max(target.sum(), 1.0))
        if np.ptp(foreground_probability) > 0 and np.ptp(target) > 0:
            result["pearson_r"] = float(np.corrcoef(foreground_probability.ravel(), target.ravel())[0, 1])
        else:
            result["pearson_r"] = float("nan")
    return result


def evaluate_run(predict_dir: str, arrays_npz: str, samples_tsv: str, split_json: str, fingerprint_json: str,
                 out_dir: str, run_info: dict | None = None) -> dict:
    """Write metrics.json, metrics.tsv, per_sample.tsv and figures/ for one trained model."""
    import matplotlib

    matplotlib.use("Agg")
    fingerprint = read_json(fingerprint_json)
    split = read_json(split_json)
    samples = pd.read_csv(samples_tsv, sep="\t", dtype={"id": str, "label": str}, keep_default_na=False)
    predictions = pd.read_csv(Path(predict_dir) / "predictions.csv", dtype={"id": str, "predicted_label": str})
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    test_ids = set(split["test"])
    predictions = predictions[predictions["id"].isin(test_ids)]
    if fingerprint["task"] == "classification":
        metrics, per_sample = _evaluate_classification(predictions, samples, split, fingerprint, out / "figures")
    elif fingerprint["task"] == "instance_segmentation":
        from snakescope.instances import evaluate_instances

        metrics, per_sample = evaluate_instances(predictions, Path(predict_dir), arrays_npz, split, out / "figures")
    elif fingerprint["task"] == "regression":
        metrics, per_sample = evaluate_regression(predictions, Path(predict_dir), arrays_npz, split, fingerprint,
                                                  out / "figures")
    else:
        metrics, per_sample = _evaluate_segmentation(predictions, Path(predict_dir), arrays_npz, split, fingerprint,
                                                     out / "figures")
    record = {**(run_info or {}), "task": fingerprint["task"], "n_test": int(len(predictions)), **metrics}
    write_json(record, out / "metrics.json")
    write_table(pd.DataFrame([record]), out / "metrics.tsv")
    write_table(per_sample, out / "per_sample.tsv")
    log.info("metrics: %s", {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    return record


def _evaluate_classification(predictions, samples, split, fingerprint, figures: Path):
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    classes = fingerprint["classes"]
    truth_by_id = samples.set_index("id")["label"]
    truth = [truth_by_id[i] for i in predictions["id"]]
    probabilities = predictions[[f"prob_{c}" for c in classes]].to_numpy()
    metrics = classification_metrics(truth, predictions["predicted_label"].tolist(), probabilities, classes)
    train_labels = [truth_by_id[i] for i in split["train"]]
    majority = max(classes, key=train_labels.count)
    baseline = classification_metrics(truth, [majority] * len(truth), np.eye(len(classes))[[classes.index(majority)] * len(truth)], classes)
    metrics.update({f"baseline_{k}": v for k, v in baseline.items()})

    figure, axis = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ConfusionMatrixDisplay.from_predictions(truth, predictions["predicted_label"], labels=classes, ax=axis, colorbar=False)
    axis.set_title(f"Confusion matrix (n={len(truth)})")
    save_figure(figure, figures / "confusion_matrix.png")
    figure, axis = plt.subplots(figsize=(5, 4.5))
    for index, name in enumerate(classes):
        positives = np.array([t == name for t in truth])
        if 0 < positives.sum() < len(positives):
            RocCurveDisplay.from_predictions(positives, probabilities[:, index], name=name, ax=axis)
    axis.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    axis.set_title("ROC, one class vs the rest")
    save_figure(figure, figures / "roc.png")
    per_sample = predictions.assign(true_label=truth, correct=[t == p for t, p in zip(truth, predictions["predicted_label"])])
    return metrics, per_sample


def _evaluate_segmentation(predictions, predict_dir: Path, arrays_npz, split, fingerprint, figures: Path):
    import matplotlib.pyplot as plt
    import tifffile

    n_classes = fingerprint["num_classes"]
    rows, examples = [], []
    with np.load(arrays_npz) as arrays:
        train_counts = np.zeros(n_classes)
        for sample_id in split["train"]:
            train_counts += np.bincount(arrays[f"target/{sample_id}"].ravel(), minlength=n_classes)[:n_classes]
        majority_class = int(train_counts.argmax())
        for _, prediction in predictions.iterrows():
            truth = arrays[f"target/{prediction['id']}"]
            mask = tifffile.imread(predict_dir / prediction["mask"]).astype(np.int64)
            probability = tifffile.imread(predict_dir / prediction["prob"]) if n_classes == 2 else None
            row = {"id": prediction["id"], **segmentation_metrics(truth, mask, probability, n_classes)}
            baseline = segmentation_metrics(truth, np.full_like(truth, majority_class), None, n_classes)
            row.update({f"baseline_{k}": v for k, v in baseline.items()})
            rows.append(row)
            if len(examples) < 4:
                image = arrays[f"image/{prediction['id']}"]
                if truth.ndim == 3:  # a volume: show three orthogonal central slices
                    examples.append((prediction["id"], orthogonal_views(image), orthogonal_views(truth),
                                     orthogonal_views(mask)))
                else:
                    examples.append((prediction["id"], image, truth, mask))
    per_sample = pd.DataFrame(rows)
    metrics = {k: float(per_sample[k].mean()) for k in per_sample.columns if k != "id"}

    names = [k for k in ("pixel_accuracy", "iou", "dice", "pearson_r") if k in per_sample]
    figure, axis = plt.subplots(figsize=(1.4 * len(names) + 1, 3.5))
    axis.boxplot([per_sample[k].dropna() for k in names], tick_labels=names)
    axis.set_ylim(0, 1.02)
    axis.set_title(f"Per-image metrics (n={len(per_sample)})")
    save_figure(figure, figures / "per_image_boxplot.png")
    figure, axes = plt.subplots(len(examples), 4, figsize=(10, 2.6 * len(examples)), squeeze=False)
    for row, (sample_id, image, truth, mask) in enumerate(examples):
        panels = [(displayable(image), "input", None), (truth, "ground truth", "viridis"),
                  (mask, "prediction", "viridis"), (truth != mask, "error", "Reds")]
        for column, (panel, title, cmap) in enumerate(panels):
            axes[row, column].imshow(panel, cmap=cmap, vmin=0 if cmap else None, vmax=max(n_classes - 1, 1) if cmap == "viridis" else None)
            axes[row, column].set_title(f"{sample_id}: {title}" if column == 0 else title, fontsize=8)
            axes[row, column].set_axis_off()
    save_figure(figure, figures / "examples.png")
    return metrics, per_sample
