"""segmentation: one class per pixel (2D and 3D), from label masks with the image's file name.

* convert: stored mask values (e.g. 0/128/255) become class indices 0, 1, 2 in sorted order; masks with
  more values than a semantic mask can hold (JPEG artefacts, instance ids) are refused.
* predict -> per image ``<id>_prob.tif`` (float32 probabilities: YX foreground for two classes, CYX
  otherwise) and ``<id>_mask.tif`` (uint8 class indices, YX; ZYX for volumes). Two-class masks are
  thresholded with Otsu's method on the foreground probability, as InstantDL does, or at a fixed
  threshold from the config; more classes take the most probable one.
* uncertainty: MC dropout (`engine.inference.sample_dropout`: SegResNet samples only its last decoder
  stage, the U-Nets their whole network, the samples batched); the normalised entropy of the
  mean probabilities per pixel (``<id>_uncertainty.tif``).
* evaluate: pixel accuracy, mean IoU and Dice (all classes present, and foreground only), beside the most
  frequent training class everywhere as trivial baseline.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.images import object_areas, read_mask, read_mask_region, resize_image
from snakescope.io import InputError, save_figure, write_tiff
from snakescope.plots import displayable, orthogonal_views
from snakescope.store import open_store
from snakescope.tasks.base import Predictor, Task
from snakescope.uncertainty_measures import mutual_information, normalised_entropy, tracks_error

MAX_MASK_VALUES = 64  # more distinct values than this means a lossy (JPEG) or intensity image, not labels
INSTANCE_LIKE_VALUES = 20  # a semantic mask with this many values, each one region, holds object ids
LOSSY_SUFFIXES = (".jpg", ".jpeg")
PIXELS_PER_IMAGE = 20_000  # sampled per image to rank certainty against error


def otsu_threshold(probability: np.ndarray) -> float:
    """Otsu's threshold (scikit-image) of a probability map; 0.5 when the map is constant."""
    from skimage.filters import threshold_otsu

    if np.ptp(probability) < 1e-6:
        return 0.5
    return float(threshold_otsu(probability))


def write_segmentation(sample_id: str, probabilities: np.ndarray, out: Path, threshold: str | float) -> dict:
    """Threshold (two classes) or argmax (more) a (K, *spatial) probability map and write both TIFFs."""
    axes = "YX" if probabilities.ndim == 3 else "ZYX"
    if probabilities.shape[0] == 2:
        foreground = probabilities[1].astype(np.float32)
        cut = otsu_threshold(foreground) if threshold == "otsu" else float(threshold)
        mask = (foreground > cut).astype(np.uint8)
        write_tiff(foreground, out / f"{sample_id}_prob.tif", axes=axes)
    else:
        cut = float("nan")
        mask = probabilities.argmax(0).astype(np.uint8)
        write_tiff(probabilities.astype(np.float32), out / f"{sample_id}_prob.tif", axes="C" + axes)
    write_tiff(mask, out / f"{sample_id}_mask.tif", axes=axes)
    return {"id": sample_id, "prob": f"{sample_id}_prob.tif", "mask": f"{sample_id}_mask.tif", "threshold": cut}


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


def lossy_mask_errors(samples: list) -> list[str]:
    """Masks saved as JPEG: its compression turns the edges of every region into new values."""
    lossy = [s.target for s in samples if s.target.lower().endswith(LOSSY_SUFFIXES)]
    if not lossy:
        return []
    return [
        f"{lossy[0]}{f' and {len(lossy) - 1} other mask(s)' if len(lossy) > 1 else ''}: masks saved as JPEG. "
        "JPEG compression changes the values along every edge, so a mask no longer holds clean labels. Save "
        "the masks losslessly (PNG or TIFF) from the original labels; converting the JPEGs does not undo it."
    ]


def compression_noise(targets: dict, share: float = 0.005, distance: int = 16, min_rare: int = 4) -> dict | None:
    """The signature of lossy compression in label masks: besides a few values that cover the pixels, at least
    `min_rare` values each under `share` of the pixels and within `distance` of one of them (an edge's
    pixels blurred towards its neighbour). Returns the values and the rare ones, or None."""
    counts: Counter = Counter()
    for mask in targets.values():
        values, n = np.unique(mask, return_counts=True)
        counts.update(dict(zip(values.tolist(), n.tolist(), strict=True)))
    total = sum(counts.values())
    common = sorted(v for v, n in counts.items() if n >= share * total)
    rare = sorted(v for v, n in counts.items() if n < share * total)
    if len(rare) < min_rare or not all(min(abs(v - c) for c in common) <= distance for v in rare):
        return None
    return {"values": common, "rare": rare, "share": sum(counts[v] for v in rare) / total}


def value_regions(mask: np.ndarray) -> dict[int, int]:
    """For each non-zero value of a label image: how many separate regions of that value it has."""
    from skimage.measure import label

    regions = label(mask, background=0, connectivity=1)  # connected pixels of one value form a region
    first = np.unique(regions[regions > 0], return_index=True)[1]
    values, counts = np.unique(mask[regions > 0][first], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def mean_foreground_dice(pred, truth, n_classes: int) -> float:
    """Mean Dice of the foreground classes present in either class map (torch tensors); 1 when none is."""
    dices = []
    for c in range(1, n_classes):
        p, t = pred == c, truth == c
        denominator = p.sum() + t.sum()
        if denominator > 0:
            dices.append((2 * (p & t).sum() / denominator).item())
    return float(np.mean(dices)) if dices else 1.0


def median_object_area(masks, background) -> float:
    """Median size (pixels or voxels) of the connected foreground regions: the typical object size."""
    from scipy import ndimage

    areas = np.concatenate([object_areas(ndimage.label(mask != background)[0]) for mask in masks] or [np.zeros(0)])
    return float(np.median(areas)) if areas.size else 0.0


class SegmentationPredictor(Predictor):
    predicts_in_blocks = True

    def predict(self, items: list[dict], out: Path) -> list[dict]:
        return [write_segmentation(item["id"], self.probabilities(item), out, self.threshold) for item in items]

    def predict_large(self, image, sample_id, out, uncertainty_dir):
        from snakescope.engine.tiled import predict_large_segmentation

        return predict_large_segmentation(image, self.plan, self.payload["spec"]["out_channels"],
                                          lambda block: self.probabilities({"image": block}), sample_id,
                                          self.threshold, out, uncertainty_dir)

    def logits(self, item: dict):
        """(1, K, *spatial) network outputs for one item (sliding window, autocast on GPUs), on the CPU."""
        import torch

        from snakescope.engine.inference import predict_logits
        from snakescope.engine.runtime import autocast_dtype

        amp_dtype = autocast_dtype(self.device)
        image = torch.as_tensor(item["image"][None]).to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=amp_dtype or torch.float32,
                                             enabled=amp_dtype is not None):
            return predict_logits(self.model, image, self.plan).float().cpu()

    def probabilities(self, item: dict) -> np.ndarray:
        """(K, *spatial) softmax of the network for one item."""
        import torch

        return torch.softmax(self.logits(item), dim=1)[0].numpy()


class Segmentation(Task):
    name = "segmentation"
    losses = ("dice_cross_entropy", "dice", "cross_entropy", "focal")
    headline_metric = "iou"
    score_name = "val_dice"

    def read_target(self, path: str, spatial_shape: tuple[int, ...], settings: dict) -> np.ndarray:
        mask = _foreground_if_asked(read_mask(path, spatial_shape), settings)
        if settings.get("resize"):
            mask = resize_image(mask, settings["resize"], is_mask=True)
        return mask

    def read_target_region(self, target, region: tuple[slice, ...], settings: dict) -> np.ndarray:
        return _foreground_if_asked(read_mask_region(target, region), settings)

    def check_targets(self, samples: list, targets: dict, settings: dict) -> list[str]:
        errors = lossy_mask_errors(samples)
        if settings.get("num_classes"):  # the user said how many classes there are
            return errors
        noise = compression_noise(targets)
        if noise and not errors:
            errors.append(
                f"{settings['data_dir']}: besides the mask values {noise['values']}, {len(noise['rare'])} rare values "
                f"close to them ({noise['rare'][:8]}{' ...' if len(noise['rare']) > 8 else ''}, together "
                f"{noise['share']:.1%} of the pixels): the traces of lossy (JPEG) compression, which would become "
                "classes of their own. Save the masks as lossless PNG/TIFF label images from the original labels "
                "(or set num_classes if these really are classes)."
            )
        by_id = {s.id: s for s in samples}
        for sample_id, mask in targets.items():
            values = np.unique(mask[mask != 0])
            if len(values) >= INSTANCE_LIKE_VALUES and all(n == 1 for n in value_regions(mask).values()):
                errors.append(
                    f"{by_id[sample_id].target}: {len(values)} different values, each one separate region: these "
                    "look like instance labels (one id per object), which semantic segmentation would learn as "
                    f"{len(values)} classes. Use task: instance_segmentation, or give masks with one value per "
                    "class (set num_classes if you really have that many classes)."
                )
                break
        return errors

    def fingerprint(self, settings: dict, samples: list, targets: dict, spatial_dims: int) -> dict:
        counts: Counter = Counter()
        for mask in targets.values():
            values, n = np.unique(mask, return_counts=True)
            counts.update(dict(zip(values.tolist(), n.tolist(), strict=True)))
        values = sorted(counts)
        data_dir = settings["data_dir"]
        if len(values) > MAX_MASK_VALUES:
            raise InputError(
                f"{data_dir}: the masks hold {len(values)} distinct values; a semantic "
                "segmentation mask holds one value per class. Save masks as lossless PNG/TIFF label "
                "images (not JPEG), or use task: instance_segmentation for one id per object."
            )
        num_classes = settings.get("num_classes")
        if num_classes and len(values) > num_classes:
            raise InputError(
                f"{data_dir}: the masks hold {len(values)} distinct values {values[:10]} but "
                f"num_classes is {num_classes}. Raise num_classes or fix the masks."
            )
        if len(values) < 2:
            raise InputError(
                f"{data_dir}: every mask holds only the value {values}; there is nothing to learn. Check "
                "the ground-truth folder."
            )
        if num_classes and all(0 <= v < num_classes for v in values):
            # The masks hold class indices already: keep them, even when a class is absent
            # (0/2 with num_classes 3 must not become 0/1).
            values = list(range(num_classes))
        total = sum(counts.values())
        return {
            "mask_values": values,
            "num_classes": max(num_classes or 0, len(values)),
            "class_fraction": {str(v): counts[v] / total for v in values},
            "median_object_area": median_object_area(targets.values(), background=values[0]),
        }

    def encode_target(self, target: np.ndarray, fingerprint: dict) -> np.ndarray:
        # Stored mask values (e.g. 0/128/255) -> class indices 0, 1, 2 in sorted order.
        return np.searchsorted(np.asarray(fingerprint["mask_values"], dtype=np.int64), target).astype(np.int64)

    def out_channels(self, fingerprint: dict) -> int:
        return int(fingerprint.get("num_classes", 2))

    def loss(self, name: str):
        from monai.losses import DiceCELoss, DiceLoss, FocalLoss
        from torch import nn

        from snakescope.engine.losses import FunctionLoss

        if name == "dice":
            return DiceLoss(to_onehot_y=True, softmax=True)
        if name == "dice_cross_entropy":
            return DiceCELoss(to_onehot_y=True, softmax=True)
        if name == "focal":
            return FocalLoss(to_onehot_y=True, use_softmax=True)
        return FunctionLoss(lambda logits, label: nn.functional.cross_entropy(logits, label[:, 0]))

    def validation_score(self, logits, label) -> float:
        return mean_foreground_dice(logits.argmax(1), label[:, 0], logits.shape[1]) * len(label)

    def predictor(self, model, payload, data, threshold, device) -> Predictor:
        return SegmentationPredictor(self, model, payload, data, threshold, device)

    calibrated = True

    def calibration_logits(self, model, payload, items, device):
        predictor = self.predictor(model, payload, None, "otsu", device)
        rng = np.random.default_rng(0)
        logits, labels = [], []
        for item in items:
            image_logits = predictor.logits(item)[0].numpy()
            image_logits = image_logits.reshape(len(image_logits), -1)
            truth = item["label"][0].ravel()
            pick = rng.choice(truth.size, size=min(truth.size, PIXELS_PER_IMAGE), replace=False)
            logits.append(image_logits[:, pick].T)
            labels.append(truth[pick])
        return np.concatenate(logits).astype(np.float64), np.concatenate(labels).astype(np.int64)

    def uncertainty(self, model, payload, items, data, samples, device, out, threshold):
        import torch

        from snakescope.engine.inference import sample_dropout

        rows, pixel_correct, pixel_uncertainty = [], [], []
        for item in items:
            image = torch.as_tensor(item["image"][None]).to(device)
            probabilities = sample_dropout(model, image, payload["plan"], samples, self.mc_rows_per_pass,
                                           activation=lambda logits: torch.softmax(logits, dim=1))[:, 0].numpy()
            mean = probabilities.mean(0)  # (K, *spatial)
            uncertainty = normalised_entropy(mean, axis=0).astype(np.float32)
            write_tiff(uncertainty, out / f"{item['id']}_uncertainty.tif", axes="YX" if uncertainty.ndim == 2 else "ZYX")
            row = {"id": item["id"], "uncertainty": float(uncertainty.mean()),
                   "mutual_information": float(mutual_information(probabilities, uncertainty, axis=1).mean()),
                   "map": f"{item['id']}_uncertainty.tif"}
            if "label" in item:
                correct = mean.argmax(0) == item["label"][0]
                row["pixel_error"] = float(1 - correct.mean())
                pick = np.random.default_rng(0).choice(correct.size, size=min(correct.size, PIXELS_PER_IMAGE),
                                                       replace=False)
                pixel_correct.append(correct.ravel()[pick])
                pixel_uncertainty.append(uncertainty.ravel()[pick])
            rows.append(row)
        frame = pd.DataFrame(rows)
        if not pixel_correct:  # new images: nothing to compare with
            return frame, {}
        _uncertainty_figure(frame, out / "uncertainty_vs_error.png")
        return frame, tracks_error(np.concatenate(pixel_uncertainty), np.concatenate(pixel_correct), "pixels")

    def evaluate(self, predictions, predict_dir, arrays_store, samples, split, fingerprint, figures):
        import tifffile

        n_classes = fingerprint["num_classes"]
        rows, examples = [], []
        with open_store(arrays_store) as arrays:
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
        _evaluation_figures(per_sample, examples, n_classes, figures)
        return metrics, per_sample


def _evaluation_figures(per_sample: pd.DataFrame, examples: list, n_classes: int, figures: Path) -> None:
    import matplotlib.pyplot as plt

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
            axes[row, column].imshow(panel, cmap=cmap, vmin=0 if cmap else None,
                                     vmax=max(n_classes - 1, 1) if cmap == "viridis" else None)
            axes[row, column].set_title(f"{sample_id}: {title}" if column == 0 else title, fontsize=8)
            axes[row, column].set_axis_off()
    save_figure(figure, figures / "examples.png")


def _uncertainty_figure(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.8))
    if "pixel_error" in frame:
        axis.scatter(frame["uncertainty"], frame["pixel_error"], s=14)
        axis.set_ylabel("pixel error rate")
    axis.set_xlabel("mean MC-dropout uncertainty of the image")
    axis.set_title("Does uncertainty track error?")
    save_figure(figure, path)


TASK = Segmentation()


def _foreground_if_asked(mask: np.ndarray, settings: dict) -> np.ndarray:
    """Every non-zero label as class 1 when ``layout.mask_foreground`` says so."""
    if (settings.get("layout") or {}).get("mask_foreground"):
        return (mask > 0).astype(np.int64)
    return mask
