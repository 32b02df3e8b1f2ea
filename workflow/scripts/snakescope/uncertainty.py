"""uncertainty: Monte-Carlo dropout (Gal & Ghahramani, ICML 2016), 20 samples by default.

Dropout stays on at test time and the network is sampled repeatedly; the spread of the samples
estimates how unsure the model is. The score is the predictive entropy of the mean probabilities,
divided by log(K) so it lies in [0, 1] whatever the number of classes K (0: all samples agree on one
class with certainty; 1: uniform).

Classifiers compute their backbone features once and sample only the dropout head, which is exact
because dropout sits only in the head. Segmentation samples the whole U-Net, the samples batched.
The summary says whether uncertainty tracks error: accuracy of the most certain 20 % versus the rest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from snakescope.data import load_items, read_samples
from snakescope.io import read_json, save_figure, write_json, write_table, write_tiff
from snakescope.models import Classifier, dropout_modules, enable_mc_dropout
from snakescope.regression import regression_uncertainty
from snakescope.runtime import select_device
from snakescope.train import load_trained, predict_logits

log = logging.getLogger(__name__)

CERTAIN_SHARE = 0.2


def normalised_entropy(mean_probabilities: np.ndarray, axis: int = 0) -> np.ndarray:
    """Entropy of class probabilities along `axis`, divided by log(K): values in [0, 1]."""
    k = mean_probabilities.shape[axis]
    p = np.clip(mean_probabilities, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=axis) / np.log(k)


def _has_active_dropout(module: torch.nn.Module) -> bool:
    return any(layer.p > 0 for layer in dropout_modules(module))


@torch.no_grad()
def mc_classify(model: torch.nn.Module, images: torch.Tensor, samples: int, max_batch: int = 256) -> torch.Tensor:
    """MC-dropout class probabilities, (samples, N, K).

    For a `Classifier` whose backbone has no active dropout, the features are computed once in eval mode
    and the dropout head alone is sampled, all samples in one call (each row draws its own mask): exact,
    and 20 samples cost about one forward pass. Otherwise the whole network is sampled, the images
    repeated along the batch axis, at most `max_batch` rows per pass.
    """
    n = images.shape[0]
    if isinstance(model, Classifier) and not _has_active_dropout(model.features):
        model.eval()
        features = model.features(images)
        model.head.train()  # only Dropout in the head reacts to train mode
        try:
            logits = model.head(features.repeat(samples, *([1] * (features.ndim - 1))))
        finally:
            model.eval()
        return torch.softmax(logits.float(), dim=-1).view(samples, n, -1)
    enable_mc_dropout(model)
    per_pass = max(1, max_batch // max(n, 1))
    outputs = []
    try:
        for start in range(0, samples, per_pass):
            k = min(per_pass, samples - start)
            logits = model(images.repeat(k, *([1] * (images.ndim - 1))))
            outputs.append(torch.softmax(logits.float(), dim=-1).view(k, n, -1))
    finally:
        model.eval()
    return torch.cat(outputs)


@torch.no_grad()
def mc_segment(model: torch.nn.Module, image: torch.Tensor, plan: dict, samples: int, batch: int = 16) -> torch.Tensor:
    """MC-dropout probabilities for one image (1, C, *spatial): returns (samples, K, *spatial).

    The image is repeated along the batch axis so `batch` samples run in one pass, and the sliding
    window (when the plan has a patch size) feeds `batch` windows per forward pass; each batch element
    draws its own dropout masks, and the networks normalise per image (instance norm) or with fixed
    statistics (batch norm in eval mode), so a batch of samples equals the same samples one by one.
    """
    enable_mc_dropout(model)
    outputs = []
    try:
        for start in range(0, samples, batch):
            n = min(batch, samples - start)
            logits = predict_logits(model, image.expand(n, *image.shape[1:]), plan, batch_size=batch)
            outputs.append(torch.softmax(logits.float(), dim=1).cpu())
    finally:
        model.eval()
    return torch.cat(outputs)


def estimate_uncertainty(model_pt: str, arrays_npz: str, samples_tsv: str, split_json: str, out_dir: str,
                         samples: int = 20, seed: int = 0, device: str = "auto", threads: int = 1,
                         threshold: str | float = "otsu") -> dict:
    """Sample the model on the test set; write uncertainty.csv, maps (segmentation), summary.json and a figure.

    `threshold` matters for instance segmentation only: the objects scored are those `predict` makes
    with the same threshold (snakescope.instances).
    """
    import matplotlib

    matplotlib.use("Agg")
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    torch_device = select_device(device)
    model, payload = load_trained(model_pt, torch_device)
    plan = payload["plan"]
    split = read_json(split_json)
    table = read_samples(samples_tsv)
    items = load_items(arrays_npz, table, split["test"], plan)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if plan["task"] == "classification":
        frame = pd.DataFrame(_classification(model, items, payload["classes"], samples, torch_device))
        tracking = _tracks_error(frame["uncertainty"].to_numpy(), frame["correct"].to_numpy(), "images")
    elif plan["task"] == "regression":
        # per-pixel std of the de-normalised samples, in target units (snakescope.regression)
        frame, tracking = regression_uncertainty(model, items, plan, samples, torch_device, out, arrays_npz)
    elif plan["task"] == "instance_segmentation":
        # one score per predicted object; "correct" = it matches a true object at IoU >= 0.5
        from snakescope.instances import instance_uncertainty

        frame, tracking = instance_uncertainty(model, payload, items, arrays_npz, table, split, threshold, samples,
                                               torch_device, out)
        tracking.update(_tracks_error(frame["uncertainty"].to_numpy(), frame["matched"].to_numpy(), "objects"))
    else:
        rows, pixel_uncertainty, pixel_correct = _segmentation(model, items, plan, samples, torch_device, out)
        frame = pd.DataFrame(rows)
        tracking = _tracks_error(pixel_uncertainty, pixel_correct, "pixels")
    seconds = time.perf_counter() - started
    summary = {"mc_samples": samples, "n_images": len(items), "seconds": seconds,
               "mean_uncertainty": float(frame["uncertainty"].mean()), **tracking}
    write_table(frame, out / "uncertainty.csv")
    write_json(summary, out / "summary.json")
    if plan["task"] not in ("regression", "instance_segmentation"):  # these drew their own figure
        _figure(frame, out / "uncertainty_vs_error.png", plan["task"])
    log.info("MC dropout, %d samples, %d images in %.1f s: %s", samples, len(items), seconds, summary)
    return summary


def _classification(model, items, classes, samples, device) -> list[dict]:
    rows = []
    for start in range(0, len(items), 64):
        chunk = items[start:start + 64]
        images = torch.as_tensor(np.stack([it["image"] for it in chunk])).to(device)
        probabilities = mc_classify(model, images, samples).cpu().numpy()  # (S, N, K)
        mean = probabilities.mean(0)
        for index, item in enumerate(chunk):
            predicted = int(mean[index].argmax())
            rows.append({
                "id": item["id"],
                "true_label": classes[item["label"]],
                "mc_predicted_label": classes[predicted],
                "correct": bool(predicted == item["label"]),
                "uncertainty": float(normalised_entropy(mean[index])),
                "predictive_entropy": float(normalised_entropy(mean[index]) * np.log(len(classes))),
                "std_of_predicted_class": float(probabilities[:, index, predicted].std()),
                **{f"mc_prob_{c}": float(v) for c, v in zip(classes, mean[index])},
            })
    return rows


def _segmentation(model, items, plan, samples, device, out: Path):
    rows, pixel_correct, pixel_uncertainty = [], [], []
    for item in items:
        image = torch.as_tensor(item["image"][None]).to(device)
        probabilities = mc_segment(model, image, plan, samples).numpy()  # (S, K, *spatial)
        mean = probabilities.mean(0)
        uncertainty = normalised_entropy(mean, axis=0).astype(np.float32)
        write_tiff(uncertainty, out / f"{item['id']}_uncertainty.tif", axes="YX" if uncertainty.ndim == 2 else "ZYX")
        row = {"id": item["id"], "uncertainty": float(uncertainty.mean()), "map": f"{item['id']}_uncertainty.tif"}
        if "label" in item:
            correct = mean.argmax(0) == item["label"][0]
            row["pixel_error"] = float(1 - correct.mean())
            # a bounded sample of pixels is enough to rank certainty against error
            pick = np.random.default_rng(0).choice(correct.size, size=min(correct.size, 20_000), replace=False)
            pixel_correct.append(correct.ravel()[pick])
            pixel_uncertainty.append(uncertainty.ravel()[pick])
        rows.append(row)
    if not pixel_correct:
        return rows, np.array([]), np.array([], dtype=bool)
    return rows, np.concatenate(pixel_uncertainty), np.concatenate(pixel_correct)


def _tracks_error(uncertainty: np.ndarray, correct: np.ndarray, unit: str) -> dict:
    """Accuracy of the most certain 20 % versus the rest (of images, or of sampled pixels)."""
    if correct.size == 0:
        return {}
    order = np.argsort(uncertainty, kind="stable")
    n_certain = max(1, int(round(CERTAIN_SHARE * len(order))))
    certain, rest = order[:n_certain], order[n_certain:]
    result = {
        "unit": unit,
        "accuracy_most_certain_20pct": float(correct[certain].mean()),
        "accuracy_rest": float(correct[rest].mean()) if len(rest) else float("nan"),
    }
    if np.ptp(uncertainty) > 0 and 0 < correct.mean() < 1:
        from sklearn.metrics import roc_auc_score

        # AUC of uncertainty as a detector of errors: 0.5 = unrelated, 1 = every error is more uncertain
        result["error_detection_auc"] = float(roc_auc_score(~correct.astype(bool), uncertainty))
    return result


def _figure(frame: pd.DataFrame, path: Path, task: str) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.8))
    if task == "classification":
        bins = np.linspace(0, 1, 21)
        axis.hist(frame.loc[frame["correct"], "uncertainty"], bins=bins, alpha=0.7, label="correct")
        axis.hist(frame.loc[~frame["correct"], "uncertainty"], bins=bins, alpha=0.7, label="wrong")
        axis.set_xlabel("MC-dropout uncertainty (normalised entropy)")
        axis.set_ylabel("test images")
        axis.legend()
    else:
        if "pixel_error" in frame:
            axis.scatter(frame["uncertainty"], frame["pixel_error"], s=14)
            axis.set_ylabel("pixel error rate")
        axis.set_xlabel("mean MC-dropout uncertainty of the image")
    axis.set_title("Does uncertainty track error?")
    save_figure(figure, path)
