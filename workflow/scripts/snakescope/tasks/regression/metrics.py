"""metrics: how close a regression prediction is to its target, and what a model that learned nothing
would score.

Per test image MAE, mean relative error (sum |p - t| / sum |t|, which stays finite where t = 0), MSE,
PSNR and SSIM (scikit-image, data range = the target dtype's range for integer sources, e.g. 255 for
8-bit, else the targets' observed range) and pixel-wise Pearson r. Beside them the trivial baseline:
the input itself when input and target have the same channels (denoising: the noisy frame), otherwise a
per-pixel linear least-squares fit of the target from the input channels on the training set
(label-free prediction: 13 phase slices -> DAPI).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.io import InputError, read_image, save_figure
from snakescope.lazy_images import BLOCK_SIDE, LazyImage, blocks, reads_lazily
from snakescope.plots import display_2d, displayable, orthogonal_views
from snakescope.store import StoredArrays, open_store
from snakescope.tasks.regression.targets import as_channels_first

log = logging.getLogger(__name__)

METRIC_NAMES = ("mae", "mean_relative_error", "mse", "psnr", "ssim", "pearson_r")


def target_data_range(target_paths: list[str], spatial_dims: int = 2) -> float:
    """The intensity range PSNR and SSIM are computed over: the target files' integer dtype range
    (255 for 8-bit, 65535 for 16-bit: the convention of scikit-image), else the targets' observed range.
    TIFF and OME-Zarr targets are read block by block (a whole-slide target need not fit in memory)."""
    ranges = []
    for path in sorted(set(target_paths)):
        dtype, low, high = _value_range(path, spatial_dims)
        if dtype.kind in "ui":
            ranges.append(float(np.iinfo(dtype).max - min(np.iinfo(dtype).min, 0)))
        else:
            ranges.append(float(high - low))
    return max(ranges) if ranges else 1.0


def _value_range(path: str, spatial_dims: int) -> tuple[np.dtype, float, float]:
    """(stored dtype, minimum, maximum) of a target file; the extremes only for float files."""
    if reads_lazily(path):
        try:
            with LazyImage(path, spatial_dims) as target:
                if target.dtype.kind in "ui":
                    return target.dtype, 0.0, 0.0
                extremes = [(values.min(), values.max()) for values in
                            (target.read_stored(block.write) for block in
                             blocks(target.spatial_shape, [BLOCK_SIDE[spatial_dims]] * spatial_dims, 0))]
                return target.dtype, min(low for low, _ in extremes), max(high for _, high in extremes)
        except InputError:  # axes the lazy reader does not place (e.g. unlabelled pages): read it whole
            pass
    target = read_image(path)
    return target.dtype, target.min(), target.max()


def regression_metrics(truth: np.ndarray, prediction: np.ndarray, data_range: float) -> dict:
    """Per-image metrics of `prediction` against `truth`, both float C+spatial in target units.

    mae, mse; mean_relative_error = sum|p - t| / sum|t|; psnr and ssim from scikit-image with the given
    `data_range` (SSIM per channel, averaged; its window shrinks for volumes thinner than 7 voxels);
    pearson_r over all pixels (NaN when either image is constant).
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    truth = np.asarray(truth, np.float64)
    prediction = np.asarray(prediction, np.float64)
    if truth.shape != prediction.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from the target's {truth.shape}")
    error = prediction - truth
    result = {
        "mae": float(np.abs(error).mean()),
        "mean_relative_error": float(np.abs(error).sum() / max(np.abs(truth).sum(), 1e-12)),
        "mse": float((error**2).mean()),
        "psnr": float(peak_signal_noise_ratio(truth, prediction, data_range=data_range)),
    }
    win_size = min(7, min(truth.shape[1:]))
    win_size -= 1 - win_size % 2  # odd
    result["ssim"] = (
        float(
            np.mean(
                [
                    structural_similarity(t, p, data_range=data_range, win_size=win_size)
                    for t, p in zip(truth, prediction, strict=True)
                ]
            )
        )
        if win_size >= 3
        else float("nan")
    )
    if np.ptp(truth) > 0 and np.ptp(prediction) > 0:
        result["pearson_r"] = float(np.corrcoef(truth.ravel(), prediction.ravel())[0, 1])
    else:
        result["pearson_r"] = float("nan")
    return result


def fit_linear_baseline(
    images: Sequence[np.ndarray], targets: Sequence[np.ndarray], max_pixels: int = 200_000, seed: int = 0
) -> np.ndarray:
    """Least-squares coefficients (C_in + 1, C_out) mapping input pixel intensities to the target.

    The trivial baseline where the input is not the target's modality: what a per-pixel linear model
    (no spatial context) achieves. Fitted on a random subset of training pixels.
    """
    rng = np.random.default_rng(seed)
    per_image = max(1, max_pixels // len(images))
    rows, values = [], []
    for image, target in zip(images, targets, strict=True):
        flat_x = image.reshape(image.shape[0], -1)
        flat_y = target.reshape(target.shape[0], -1)
        pick = rng.choice(flat_x.shape[1], size=min(flat_x.shape[1], per_image), replace=False)
        rows.append(flat_x[:, pick].T)
        values.append(flat_y[:, pick].T)
    x = np.concatenate(rows).astype(np.float64)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, np.concatenate(values).astype(np.float64), rcond=None)
    return coefficients


def baseline_prediction(
    image: np.ndarray, target_channels: int, coefficients: np.ndarray | None
) -> np.ndarray:
    """The trivial baseline for one image (C+spatial, native units): the input itself when `coefficients`
    is None (same channels as the target), else the linear per-pixel fit."""
    if coefficients is None:
        return image.astype(np.float32)
    flat = image.reshape(image.shape[0], -1).astype(np.float64)
    predicted = coefficients[:-1].T @ flat + coefficients[-1][:, None]
    return predicted.reshape((target_channels, *image.shape[1:])).astype(np.float32)


def baseline_kind(fingerprint: dict) -> str:
    """ "input" (identity) when input and target have the same channel count, else "linear"."""
    return "input" if fingerprint["channels"] == fingerprint.get("target_channels", 1) else "linear"


def read_prediction(path: Path, target_shape: tuple[int, ...]) -> np.ndarray:
    """Read a ``_pred.tif`` back as C+spatial with the target's shape."""
    import tifffile

    return tifffile.imread(path).astype(np.float32).reshape(target_shape)


def evaluate(
    predictions: pd.DataFrame,
    predict_dir: Path,
    arrays_store: str,
    split: dict,
    fingerprint: dict,
    figures: Path,
) -> tuple[dict, pd.DataFrame]:
    """Metrics of every test prediction and of the trivial baseline, plus figures.

    Returns:
        (mean metrics with ``baseline_`` twins and ``baseline``: "input" or "linear", per-image table).
    """
    data_range = float(fingerprint["target_data_range"])
    spatial_dims = fingerprint["spatial_dims"]
    kind = baseline_kind(fingerprint)
    rows, examples = [], []
    with open_store(arrays_store) as arrays:
        coefficients = None
        if kind == "linear":
            ids = [i for i in split["train"] if f"target/{i}" in arrays]
            coefficients = fit_linear_baseline(
                StoredArrays(arrays, [f"image/{i}" for i in ids]),
                StoredArrays(arrays, [f"target/{i}" for i in ids], lambda t: as_channels_first(t, spatial_dims)),
            )
        for _, prediction_row in predictions.iterrows():
            sample_id = prediction_row["id"]
            if f"target/{sample_id}" not in arrays:
                continue
            truth = as_channels_first(arrays[f"target/{sample_id}"], spatial_dims)
            image = arrays[f"image/{sample_id}"]
            prediction = read_prediction(predict_dir / prediction_row["prediction"], truth.shape)
            baseline = baseline_prediction(image, truth.shape[0], coefficients)
            row = {"id": sample_id, **regression_metrics(truth, prediction, data_range)}
            row.update(
                {f"baseline_{k}": v for k, v in regression_metrics(truth, baseline, data_range).items()}
            )
            rows.append(row)
            if len(examples) < 4:
                examples.append((sample_id, image, truth, prediction, baseline))
    per_sample = pd.DataFrame(rows)
    metrics = {k: float(per_sample[k].mean()) for k in per_sample.columns if k != "id"}
    metrics["baseline"] = kind
    metrics["data_range"] = data_range
    if rows:
        _boxplots(per_sample, figures / "per_image_boxplot.png", kind)
        _examples_figure(examples, figures / "examples.png", kind)
    else:
        log.warning("no test image has a target; there is nothing to evaluate")
    return metrics, per_sample


def _boxplots(per_sample: pd.DataFrame, path: Path, kind: str) -> None:
    import matplotlib.pyplot as plt

    names = [n for n in ("psnr", "ssim", "pearson_r", "mae") if n in per_sample]
    figure, axes = plt.subplots(1, len(names), figsize=(2.4 * len(names), 3.4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        axis.boxplot(
            [per_sample[name].dropna(), per_sample[f"baseline_{name}"].dropna()],
            tick_labels=["model", f"baseline\n({kind})"],
        )
        axis.set_title(name, fontsize=9)
        axis.tick_params(labelsize=7)
    figure.suptitle(f"Per-image metrics, model vs trivial baseline (n={len(per_sample)})", fontsize=9)
    save_figure(figure, path)


def _examples_figure(examples: list, path: Path, kind: str) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        max(len(examples), 1), 5, figsize=(13, 2.8 * max(len(examples), 1)), squeeze=False
    )
    for row, (sample_id, image, truth, prediction, baseline) in enumerate(examples):
        truth_2d, prediction_2d = display_2d(truth), display_2d(prediction)
        low, high = np.percentile(truth_2d, (1, 99.5))
        error = np.abs(prediction - truth)
        baseline_error = np.abs(baseline - truth)
        error_max = float(np.percentile(display_2d(baseline_error), 99.5)) or 1.0
        image_view = displayable(orthogonal_views(image)) if image.ndim == 4 else displayable(image)
        panels = [
            (image_view, f"{sample_id}: input", "gray", None, None),
            (truth_2d, "target", "magma", low, high),
            (prediction_2d, "prediction", "magma", low, high),
            (display_2d(error), "|prediction - target|", "inferno", 0, error_max),
            (display_2d(baseline_error), f"|{kind} baseline - target|", "inferno", 0, error_max),
        ]
        for column, (panel, title, cmap, vmin, vmax) in enumerate(panels):
            shown = axes[row, column].imshow(panel, cmap=cmap, vmin=vmin, vmax=vmax)
            axes[row, column].set_title(title, fontsize=8)
            axes[row, column].set_axis_off()
            if column >= 3:
                figure.colorbar(shown, ax=axes[row, column], fraction=0.046)
    save_figure(figure, path)
