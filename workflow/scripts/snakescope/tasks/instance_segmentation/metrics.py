"""metrics: instance segmentation scored as the field scores it, beside a trivial baseline.

Object-level precision / recall / F1 and average precision (AP = TP / (TP + FP + FN), the DSB 2018
definition) at IoU 0.5 and averaged over IoU 0.5:0.05:0.95, the aggregated Jaccard index (AJI, Kumar et
al., IEEE TMI 2017), panoptic quality (PQ, Kirillov et al., CVPR 2019) and the mean IoU of matched
objects. Overlaps come from scikit-image's contingency table, one-to-one matching from SciPy's
linear_sum_assignment. The trivial baseline is the connected components of an Otsu threshold of the
image.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.io import save_figure
from snakescope.plots import displayable
from snakescope.store import StoredArrays, open_store

IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2).tolist())  # 0.5, 0.55, ..., 0.95


def _overlaps(truth: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intersection (n_true, n_pred), true areas, predicted areas) in pixels, objects renumbered 1..n."""
    from skimage.metrics import contingency_table
    from skimage.segmentation import relabel_sequential

    truth = relabel_sequential(np.asarray(truth, dtype=np.int64))[0]
    prediction = relabel_sequential(np.asarray(prediction, dtype=np.int64))[0]
    table = contingency_table(truth, prediction).toarray()
    table = np.pad(table, ((0, truth.max() + 1 - table.shape[0]), (0, prediction.max() + 1 - table.shape[1])))
    return (
        table[1:, 1:].astype(np.float64),
        table[1:].sum(1).astype(np.float64),
        table[:, 1:].sum(0).astype(np.float64),
    )


def iou_matrix(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """IoU of every true object (rows) with every predicted object (columns), ids renumbered 1..n."""
    intersection, true_area, pred_area = _overlaps(truth, prediction)
    union = true_area[:, None] + pred_area[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def best_match_iou(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """For each predicted object (ids renumbered 1..n), its highest IoU with any true object."""
    iou = iou_matrix(truth, prediction)
    return iou.max(0) if iou.shape[0] else np.zeros(iou.shape[1])


def match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of true (rows) and predicted (columns) objects with IoU >= threshold.

    Maximises the number of matches, then their total IoU (as StarDist's `matching` does); for
    thresholds >= 0.5 a match is unique anyway, since an object cannot overlap two others by more than
    half. Returns the matched row and column indices.
    """
    from scipy.optimize import linear_sum_assignment

    if iou.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    hit = iou >= threshold
    cost = -hit.astype(np.float64) - iou / (2 * max(iou.shape))
    rows, columns = linear_sum_assignment(cost)
    keep = hit[rows, columns]
    return rows[keep], columns[keep]


def aggregated_jaccard_index(truth: np.ndarray, prediction: np.ndarray) -> float:
    """AJI (Kumar et al., IEEE TMI 2017): every true object is paired with the predicted object of highest
    IoU; the paired intersections are summed over the paired unions plus the areas of unpaired true
    and predicted objects. A true object overlapping no prediction adds its area to the union only, as
    in the HoVer-Net reference code. A predicted object may pair with several true objects (the
    original definition; AJI+ forbids it). 1 when both images are empty."""
    intersection, true_area, pred_area = _overlaps(truth, prediction)
    if true_area.size == 0 and pred_area.size == 0:
        return 1.0
    union = true_area[:, None] + pred_area[None, :] - intersection
    total_intersection, total_union = 0.0, 0.0
    used = np.zeros(pred_area.size, bool)
    for row in range(true_area.size):
        if pred_area.size == 0 or intersection[row].max() == 0:
            total_union += true_area[row]
            continue
        column = int(np.argmax(intersection[row] / union[row]))
        total_intersection += intersection[row, column]
        total_union += union[row, column]
        used[column] = True
    total_union += pred_area[~used].sum()
    return float(total_intersection / total_union) if total_union else 1.0


def panoptic_quality(truth: np.ndarray, prediction: np.ndarray) -> float:
    """PQ (Kirillov et al., CVPR 2019): summed IoU of the matches at IoU >= 0.5 over TP + FP/2 + FN/2."""
    iou = iou_matrix(truth, prediction)
    rows, columns = match(iou, 0.5)
    tp = len(rows)
    denominator = tp + 0.5 * (iou.shape[0] - tp) + 0.5 * (iou.shape[1] - tp)
    return _ratio(iou[rows, columns].sum(), denominator, 1.0)


def _ratio(numerator: float, denominator: float, empty: float) -> float:
    return float(numerator / denominator) if denominator else empty


def instance_metrics(truth: np.ndarray, prediction: np.ndarray, thresholds=IOU_THRESHOLDS) -> dict:
    """Object- and pixel-level metrics of one predicted label image against the true one (both YX ints).

    Object counts (tp/fp/fn) and precision, recall, F1 are at IoU 0.5. `ap_50` is the DSB 2018 average
    precision TP / (TP + FP + FN) at 0.5 and `ap_50_95` its mean over IoU 0.5:0.05:0.95. `pq` is the
    panoptic quality (segmentation quality `mean_matched_iou` times recognition quality `f1_50`).
    `iou` and `dice` are pixel-level foreground scores, comparable with semantic segmentation.
    Ratios with an empty denominator are 1 when both images are empty, else NaN (precision without
    predictions, recall without true objects) or 0.
    """
    iou = iou_matrix(truth, prediction)
    n_true, n_pred = iou.shape
    both_empty = 1.0 if n_true == 0 and n_pred == 0 else 0.0
    aps = []
    for threshold in thresholds:
        tp = len(match(iou, threshold)[0])
        aps.append(_ratio(tp, n_true + n_pred - tp, both_empty))
    rows, columns = match(iou, 0.5)
    tp = len(rows)
    fp, fn = n_pred - tp, n_true - tp
    matched_iou = iou[rows, columns]
    fg_true, fg_pred = np.asarray(truth) > 0, np.asarray(prediction) > 0
    intersection, union = float((fg_true & fg_pred).sum()), float((fg_true | fg_pred).sum())
    return {
        "n_true": n_true,
        "n_pred": n_pred,
        "tp_50": tp,
        "fp_50": fp,
        "fn_50": fn,
        "precision_50": _ratio(tp, n_pred, 1.0 if both_empty else float("nan")),
        "recall_50": _ratio(tp, n_true, 1.0 if both_empty else float("nan")),
        "f1_50": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "ap_50": aps[list(thresholds).index(0.5)] if 0.5 in thresholds else float("nan"),
        "ap_50_95": float(np.mean(aps)),
        "aji": aggregated_jaccard_index(truth, prediction),
        "pq": _ratio(matched_iou.sum(), tp + 0.5 * fp + 0.5 * fn, both_empty),
        "mean_matched_iou": float(matched_iou.mean()) if tp else float("nan"),
        "iou": _ratio(intersection, union, 1.0),
        "dice": _ratio(2 * intersection, fg_true.sum() + fg_pred.sum(), 1.0),
    }


def average_precision_curve(
    truth: np.ndarray, prediction: np.ndarray, thresholds=IOU_THRESHOLDS
) -> list[float]:
    """AP = TP / (TP + FP + FN) of one image at each IoU threshold."""
    iou = iou_matrix(truth, prediction)
    n = iou.shape[0] + iou.shape[1]
    tps = [len(match(iou, t)[0]) for t in thresholds]
    return [_ratio(tp, n - tp, 1.0 if n == 0 else 0.0) for tp in tps]


def grey(image: np.ndarray) -> np.ndarray:
    """(C, Y, X) -> (Y, X) float: the mean of the channels."""
    return np.asarray(image, dtype=np.float32).mean(0)


def objects_are_bright(images: Iterable[np.ndarray], targets: Iterable[np.ndarray]) -> bool:
    """Whether objects are brighter than background in the training images (grey = channel mean).

    Fluorescent nuclei are bright on dark; haematoxylin-stained nuclei in H&E are dark on light.
    """
    sums, counts = np.zeros(2), np.zeros(2)  # object, background; one image at a time
    for image, target in zip(images, targets, strict=True):
        grey_image = grey(image)
        for k, where in enumerate((target > 0, target == 0)):
            sums[k] += grey_image[where].sum(dtype=np.float64)
            counts[k] += where.sum()
    return bool(sums[0] / counts[0] > sums[1] / counts[1])


def otsu_instances(image: np.ndarray, bright_objects: bool) -> np.ndarray:
    """The trivial baseline: connected components (8-connectivity) of an Otsu threshold of the grey image.

    Args:
        image: (C, Y, X) at any intensity scale (Otsu's threshold does not depend on it).
        bright_objects: objects above the threshold (True) or below it.
    """
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    values = grey(image)
    if np.ptp(values) == 0:
        return np.zeros(values.shape, np.int32)
    cut = threshold_otsu(values)
    return label(values > cut if bright_objects else values < cut).astype(np.int32)


def evaluate_instances(
    predictions: pd.DataFrame, predict_dir: Path, arrays_store: str, split: dict, figures: Path
) -> tuple[dict, pd.DataFrame]:
    """Per-image metrics (model and Otsu baseline), their means, and figures: overlays, AP vs IoU, boxplot."""
    import tifffile

    rows, examples, curves, baseline_curves = [], [], [], []
    with open_store(arrays_store) as arrays:
        train_ids = [i for i in split["train"] if f"target/{i}" in arrays]
        bright = objects_are_bright(
            StoredArrays(arrays, [f"image/{i}" for i in train_ids]), StoredArrays(arrays, [f"target/{i}" for i in train_ids])
        )
        for _, prediction in predictions.iterrows():
            sample_id = prediction["id"]
            truth = arrays[f"target/{sample_id}"]
            image = arrays[f"image/{sample_id}"]
            labels = tifffile.imread(predict_dir / prediction["instances"]).astype(np.int64)
            baseline = otsu_instances(image, bright)
            row = {"id": sample_id, **instance_metrics(truth, labels)}
            row.update({f"baseline_{k}": v for k, v in instance_metrics(truth, baseline).items()})
            rows.append(row)
            curves.append(average_precision_curve(truth, labels))
            baseline_curves.append(average_precision_curve(truth, baseline))
            if len(examples) < 4:
                examples.append((sample_id, image, truth, labels))
    per_sample = pd.DataFrame(rows)
    metrics = {k: float(per_sample[k].mean()) for k in per_sample.columns if k != "id"}
    metrics["baseline_objects_bright"] = float(bright)
    _figures(per_sample, examples, np.array(curves), np.array(baseline_curves), figures)
    return metrics, per_sample


def _figures(
    per_sample: pd.DataFrame, examples: list, curves: np.ndarray, baseline_curves: np.ndarray, figures: Path
) -> None:
    import matplotlib.pyplot as plt

    names = ["f1_50", "ap_50", "ap_50_95", "aji", "pq", "mean_matched_iou"]
    figure, axis = plt.subplots(figsize=(8, 3.6))
    positions = np.arange(len(names))
    axis.boxplot(
        [per_sample[k].dropna() for k in names], positions=positions - 0.18, widths=0.3, tick_labels=names
    )
    axis.boxplot(
        [per_sample[f"baseline_{k}"].dropna() for k in names],
        positions=positions + 0.18,
        widths=0.3,
        tick_labels=[""] * len(names),
        boxprops={"color": "grey"},
        medianprops={"color": "grey"},
    )
    axis.set_xticks(positions, names)
    axis.set_ylim(0, 1.02)
    axis.set_title(f"Per-image metrics, model (black) vs Otsu baseline (grey), n={len(per_sample)}")
    save_figure(figure, figures / "per_image_boxplot.png")

    figure, axis = plt.subplots(figsize=(4.5, 3.6))
    if len(curves):
        axis.plot(IOU_THRESHOLDS, curves.mean(0), "o-", label="model")
        axis.plot(IOU_THRESHOLDS, baseline_curves.mean(0), "s--", color="grey", label="Otsu baseline")
    axis.set_xlabel("IoU threshold")
    axis.set_ylabel("AP = TP / (TP + FP + FN)")
    axis.set_ylim(0, 1)
    axis.legend()
    axis.set_title("Average precision vs IoU threshold")
    save_figure(figure, figures / "ap_vs_iou.png")

    figure, axes = plt.subplots(
        max(len(examples), 1), 2, figsize=(10, 4.6 * max(len(examples), 1)), squeeze=False
    )
    for row, (sample_id, image, truth, labels) in enumerate(examples):
        shown = displayable(image)
        height, width = truth.shape
        size = min(256, height, width)
        top, left = (height - size) // 2, (width - size) // 2
        for column, (window, title) in enumerate(
            [
                ((slice(None), slice(None)), "whole image"),
                ((slice(top, top + size), slice(left, left + size)), f"centre {size} px"),
            ]
        ):
            axis = axes[row, column]
            axis.imshow(shown[window], cmap="gray" if shown.ndim == 2 else None)
            _contours(axis, truth[window], "lime")
            _contours(axis, labels[window], "magenta")
            axis.set_title(f"{sample_id}, {title}: truth green, prediction magenta", fontsize=8)
            axis.set_axis_off()
    save_figure(figure, figures / "overlay.png")


def _contours(axis, labels: np.ndarray, colour: str) -> None:
    from matplotlib.colors import to_rgba
    from skimage.segmentation import find_boundaries

    overlay = np.zeros((*labels.shape, 4), np.float32)
    overlay[find_boundaries(labels, mode="inner")] = to_rgba(colour)
    axis.imshow(overlay, interpolation="nearest")
