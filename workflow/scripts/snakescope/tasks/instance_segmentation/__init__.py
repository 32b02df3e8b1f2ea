"""instance_segmentation: one id per object in 2D images, from instance label images (or binary masks).

Two methods, chosen by the `models:` entry of the config:

* any dense network of the registry (``unet`` by default): U-Net + seeded watershed
  (snakescope.tasks.instance_segmentation.labels). The U-Net learns background, interior and boundary,
  trained exactly as semantic segmentation is; the watershed's marker threshold and the minimum object
  area are tuned on the validation images (`tune_postprocessing`).
* a detector of the registry (``maskrcnn``, ``maskrcnn_resnet18``): Mask R-CNN, trained by its own
  trainer variant (snakescope.tasks.instance_segmentation.detector).

Both write one instance label image per test image (``<id>_instances.tif``: YX, uint16 or uint32,
0 = background, one id per object). Uncertainty is scored per object: for the U-Net, the mean MC-dropout
foreground uncertainty inside the object; for Mask R-CNN, which has no dropout layer, 1 - the detector's
score. Metrics: snakescope.tasks.instance_segmentation.metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.engine.models import is_detector
from snakescope.io import save_figure, write_tiff
from snakescope.tasks.base import Predictor
from snakescope.tasks.instance_segmentation.labels import (
    UNET_CLASSES,
    instance_fingerprint,
    minimum_object_area,
    prepare_instance_targets,
    remove_small,
    to_class_items,
    training_object_areas,
    watershed_instances,
)
from snakescope.tasks.instance_segmentation.metrics import (
    best_match_iou,
    evaluate_instances,
    panoptic_quality,
)
from snakescope.tasks.segmentation import Segmentation, lossy_mask_errors, value_regions
from snakescope.uncertainty_measures import normalised_entropy, tracks_error

log = logging.getLogger(__name__)

INTERIOR_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # U-Net marker thresholds tried on the validation images


def unet_probabilities(model, plan: dict, image: np.ndarray, device) -> np.ndarray:
    """(3, Y, X) softmax of the U-Net (sliding window) for one (C, Y, X) normalised image."""
    import torch

    from snakescope.engine.inference import predict_logits

    model.eval()
    with torch.no_grad():
        logits = predict_logits(model, torch.as_tensor(image)[None].to(device), plan)
    return torch.softmax(logits.float(), 1)[0].cpu().numpy()


def tune_postprocessing(
    model, plan: dict, val_items: list[dict], min_area: int, device
) -> tuple[float, int, dict[str, float]]:
    """The watershed marker threshold and minimum object area with the best mean panoptic quality on the
    validation images, as StarDist tunes its thresholds on validation data. Thresholds INTERIOR_THRESHOLDS
    and areas 1, 2 and 4 times `min_area` are tried; PQ rewards finding each object once (F1) and
    outlining it well (IoU), so it penalises both fragments and merges.

    Returns:
        (threshold, minimum area, {"threshold/area": mean validation PQ}); (0.5, `min_area`, {}) without
        labelled validation images.
    """
    from skimage.segmentation import relabel_sequential

    pairs = [
        (unet_probabilities(model, plan, item["image"], device), item["label"][0])
        for item in val_items
        if "label" in item
    ]
    if not pairs:
        return 0.5, min_area, {}
    scores: dict[tuple[float, int], float] = {}
    for threshold in INTERIOR_THRESHOLDS:
        # objects are removed last, so one watershed per threshold serves every minimum area
        grown = [(watershed_instances(p, threshold, min_area=0), truth) for p, truth in pairs]
        for area in (min_area, 2 * min_area, 4 * min_area):
            scores[threshold, area] = float(np.mean(
                [panoptic_quality(truth, relabel_sequential(remove_small(labels, area))[0]) for labels, truth in grown]
            ))
    best = max(scores, key=lambda key: (scores[key], -abs(key[0] - 0.5), -key[1]))
    log.info(
        "post-processing: interior threshold %.2f, minimum area %d px (validation PQ %.3f; at 0.5 and "
        "%d px: %.3f)", best[0], best[1], scores[best], min_area, scores[0.5, min_area],
    )
    return best[0], best[1], {f"{t}/{a}": v for (t, a), v in scores.items()}


class InstancePredictor(Predictor):
    """Instances of one image at a time, with post-processing tuned once on the validation images.

    The minimum area starts from the training masks (`minimum_object_area`). For the U-Net, the config's
    `threshold` sets the marker threshold on the interior probability when it is a number; the default
    ("otsu", meant for binary masks) tunes threshold and minimum area on the validation images instead
    (`tune_postprocessing`). Mask R-CNN gets its anchor sizes back and its score threshold tuned on the
    validation images (`tune_score_threshold`); a number in `threshold` is the U-Net's, a probability of
    a different model, so it does not apply.

    Timed end to end (network and post-processing: the time to an instance image).
    """

    times_itself = True

    def __init__(self, *args):
        super().__init__(*args)
        self.detector = is_detector(self.payload["spec"]["name"])
        data = self.data
        self.object_threshold = float(self.threshold) if not isinstance(self.threshold, str) else None
        if data is None:  # new images without the run's data (an exported package): the defaults
            self.min_area = int(self.payload.get("min_object_area", minimum_object_area(np.zeros(0))))
            self.object_threshold = self.object_threshold or 0.5
            log.info("no training data: minimum object area %d px, threshold %.2f, not tuned", self.min_area,
                     self.object_threshold)
            if self.detector:
                from snakescope.tasks.instance_segmentation.detector import restore_detector

                restore_detector(self.model, self.payload)
            return
        self.min_area = minimum_object_area(training_object_areas(data.arrays_store, data.split["train"]))
        if self.detector or self.object_threshold is None:
            val_items = self.task.load_items(data.arrays_store, data.samples, data.split.get("val", []), self.plan)
            if self.detector:
                from snakescope.tasks.instance_segmentation.detector import (
                    restore_detector,
                    tune_score_threshold,
                )

                restore_detector(self.model, self.payload)
                self.object_threshold, _ = tune_score_threshold(self.model, val_items, self.min_area, self.device)
            else:
                self.object_threshold, self.min_area, _ = tune_postprocessing(
                    self.model, self.plan, val_items, self.min_area, self.device
                )

    def instances(self, image: np.ndarray) -> tuple[np.ndarray, dict[int, float], np.ndarray | None]:
        """(labels, {id: detector score} or {}, U-Net probabilities or None) for one (C, Y, X) image."""
        if self.detector:
            import torch

            from snakescope.tasks.instance_segmentation.detector import maskrcnn_instances

            labels, scores = maskrcnn_instances(self.model, torch.as_tensor(image).to(self.device),
                                                score_threshold=self.object_threshold, min_area=self.min_area)
            return labels, scores, None
        probabilities = unet_probabilities(self.model, self.plan, image, self.device)
        return watershed_instances(probabilities, self.object_threshold, self.min_area), {}, probabilities

    def predict(self, items: list[dict], out: Path) -> list[dict]:
        """``<id>_instances.tif`` (YX uint16, uint32 past 65535 objects) and the U-Net's ``<id>_prob.tif``
        (CYX float32: background, interior, boundary) per item."""
        rows = []
        for item in items:
            labels, scores, probabilities = self.instances(item["image"])
            name = f"{item['id']}_instances.tif"
            write_tiff(labels.astype(np.uint16 if labels.max() < 2**16 else np.uint32), out / name, axes="YX")
            row = {"id": item["id"], "instances": name, "n_objects": int(labels.max()),
                   "method": self.payload["spec"]["name"], "min_area": self.min_area,
                   "threshold": self.object_threshold}
            if probabilities is not None:
                write_tiff(probabilities.astype(np.float32), out / f"{item['id']}_prob.tif", axes="CYX")
                row["prob"] = f"{item['id']}_prob.tif"
            else:
                row["mean_score"] = float(np.mean(list(scores.values()))) if scores else float("nan")
            rows.append(row)
            log.info("%s: %d objects", item["id"], row["n_objects"])
        return rows


class InstanceSegmentation(Segmentation):
    """Segmentation's U-Net training on three classes made from the instances, and instance outputs."""

    name = "instance_segmentation"
    headline_metric = "aji"  # U-Net + watershed by default: strong on dense nuclei
    calibrated = False  # objects are judged by their own scores (uncertainty per object), not per pixel

    def check_targets(self, samples: list, targets: dict, settings: dict) -> list[str]:
        """Lossy masks, and class masks given as instance labels: a value that occurs in several separate
        regions of most masks is a class, and each region would be taken for one object."""
        errors = lossy_mask_errors(samples)
        if (settings.get("layout") or {}).get("mask_foreground"):
            return errors  # any non-zero value is object; convert splits the objects
        spread, values, value_sets = 0, 0, set()
        example = None
        for sample in samples:
            if sample.id not in targets:
                continue
            regions = value_regions(targets[sample.id])
            value_sets.add(tuple(sorted(regions)))
            if len(regions) > 1:  # a binary mask (one value) becomes instances by connectivity
                spread += sum(n >= 3 for n in regions.values())
                values += len(regions)
                example = example or (sample.target, max(regions, key=regions.get), max(regions.values()))
        # Class codes: a value in several regions of most masks, or the same values in every mask that are
        # not object numbers 1..n (0/128/255 masks of cytoplasm and nucleus).
        (only,) = value_sets if len(value_sets) == 1 else (None,)
        coded = only is not None and len(only) > 1 and len(targets) >= 3 and list(only) != list(range(1, len(only) + 1))
        if (values and spread >= values / 2) or coded:
            path, value, n = example
            where = f"value {value} occurs in {n} separate regions, as in most masks here" if not coded else (
                f"every mask holds the same values {list(only)}")
            errors.append(
                f"{path}: {where}: these masks hold classes (e.g. cytoplasm and nucleus), not one id per object, "
                "so every class of a cell would become an object. Give instance label images (0 background, one "
                "id per object), or set layout.mask_foreground: true to take every non-zero pixel as object and "
                "split objects by connectivity; for classes, use task: segmentation."
            )
        return errors

    def prepare_targets(self, targets: dict) -> tuple[dict, dict]:
        # Instance ids are kept as they are (never mapped to class indices); binary masks become instances.
        targets, derived = prepare_instance_targets(targets)
        return targets, {"instances_derived_from_binary": derived}

    def fingerprint(self, settings: dict, samples: list, targets: dict, spatial_dims: int) -> dict:
        return instance_fingerprint(targets)

    def encode_target(self, target: np.ndarray, fingerprint: dict) -> np.ndarray:
        return target  # instance ids as they are, not mapped to class indices

    def training_items(self, items: list[dict]) -> list[dict]:
        return to_class_items(items)  # U-Net + watershed: learn background / interior / boundary

    def trainer(self, cfg, threads: int = 1):
        if is_detector(cfg.model):  # learns from boxes + masks per image
            from snakescope.tasks.instance_segmentation.detector import DetectorTrainer

            return DetectorTrainer(self, cfg, threads)
        return super().trainer(cfg, threads)

    def predictor(self, model, payload, data, threshold, device) -> Predictor:
        return InstancePredictor(self, model, payload, data, threshold, device)

    def uncertainty(self, model, payload, items, data, samples, device, out, threshold):
        """One row per predicted object with its uncertainty; returns (table, summary fields).

        U-Net: MC dropout (`samples` passes, dropout on). An object's `uncertainty` is the mean, inside
        the object, of the foreground uncertainty: the binary entropy (in bits, 0..1) of the MC-mean
        foreground probability p_interior + p_boundary, i.e. how unsure the model is that the pixels are
        object at all. The object's pixels are those of the deterministic prediction (the objects
        `predict` writes). Also per object: `class_entropy`, the mean normalised entropy of the MC-mean
        three-class probabilities (which adds the interior/boundary doubt that decides splits), and
        `foreground_std`, the mean spread of the sampled foreground probability. The foreground
        uncertainty map is written as ``<id>_uncertainty.tif``.

        Mask R-CNN: torchvision's Mask R-CNN has no dropout layer, so MC dropout would need a changed and
        retrained architecture; the object's score is 1 - the detector's confidence score instead
        (column `method` says which).

        With ground truth, each object gets its best IoU with a true object and `matched` (IoU >= 0.5);
        the figure plots uncertainty against that IoU.
        """
        import torch
        from scipy import ndimage as ndi

        from snakescope.engine.inference import sample_dropout

        predictor = InstancePredictor(self, model, payload, data, threshold, device)
        rows, labelled = [], False
        for item in items:
            labels, scores, _ = predictor.instances(item["image"])
            ids = np.arange(1, labels.max() + 1)
            if predictor.detector:
                uncertainty = np.array([1.0 - scores[i] for i in ids])
                entropy = spread = np.full(len(ids), np.nan)
            else:
                image = torch.as_tensor(item["image"][None]).to(device)
                probabilities = sample_dropout(model, image, payload["plan"], samples, self.mc_rows_per_pass,
                                               activation=lambda logits: torch.softmax(logits, dim=1))
                probabilities = probabilities[:, 0].numpy()  # (S, 3, Y, X)
                foreground = 1.0 - probabilities[:, 0]
                mean_foreground = foreground.mean(0)
                foreground_map = normalised_entropy(np.stack([1.0 - mean_foreground, mean_foreground]), axis=0)
                write_tiff(foreground_map.astype(np.float32), out / f"{item['id']}_uncertainty.tif", axes="YX")
                class_map = normalised_entropy(probabilities.mean(0), axis=0)

                def object_means(values, ids=ids, labels=labels):
                    return np.asarray(ndi.mean(values, labels, ids)) if ids.size else np.zeros(0)

                uncertainty, entropy, spread = (object_means(v) for v in (foreground_map, class_map, foreground.std(0)))
            labelled = "label" in item
            best_iou = best_match_iou(item["label"][0], labels) if labelled else np.full(len(ids), np.nan)
            areas = np.bincount(labels.ravel(), minlength=len(ids) + 1)[1:]
            for index, object_id in enumerate(ids):
                rows.append({
                    "id": item["id"],
                    "object": int(object_id),
                    "area": int(areas[index]),
                    "uncertainty": float(uncertainty[index]),
                    "class_entropy": float(entropy[index]),
                    "foreground_std": float(spread[index]),
                    "best_iou": float(best_iou[index]),
                    "matched": bool(best_iou[index] >= 0.5),
                    "method": "detector_score" if predictor.detector else "mc_dropout",
                })
        columns = ["id", "object", "area", "uncertainty", "class_entropy", "foreground_std", "best_iou", "matched",
                   "method"]
        frame = pd.DataFrame(rows, columns=columns)
        summary = {
            "n_objects": len(frame),
            "method": "1 - detector score" if predictor.detector else "MC dropout",
            "mc_samples": 0 if predictor.detector else samples,
        }
        if labelled:  # with ground truth (not on new images)
            _uncertainty_figure(frame, out / "uncertainty_vs_error.png", predictor.detector)
            summary.update(tracks_error(frame["uncertainty"].to_numpy(), frame["matched"].to_numpy(), "objects"))
        return frame, summary

    def evaluate(self, predictions, predict_dir, arrays_store, samples, split, fingerprint, figures):
        return evaluate_instances(predictions, predict_dir, arrays_store, split, figures)

    def output_names(self, payload: dict) -> list[str]:
        return list(UNET_CLASSES)

    def export_settings(self, arrays_store: str, split: dict) -> dict:
        return {"min_object_area": minimum_object_area(training_object_areas(arrays_store, split["train"]))}

    def export_notes(self, payload: dict) -> list[str]:
        return ["The package gives the U-Net's probabilities of background, object interior and object boundary.",
                "snakescope grows instances from them with a seeded watershed (markers: interior probability",
                "above a threshold tuned on the validation images); that step is not part of the package."]


def _uncertainty_figure(frame: pd.DataFrame, path: Path, detector: bool) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.8))
    axis.scatter(frame["uncertainty"], frame["best_iou"], s=5, alpha=0.5)
    axis.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlabel("1 - detector score" if detector else "mean MC-dropout uncertainty inside the object")
    axis.set_ylabel("best IoU with a true object")
    axis.set_title(f"Does uncertainty track error? ({len(frame)} objects)")
    save_figure(figure, path)


TASK = InstanceSegmentation()

__all__ = ["TASK", "UNET_CLASSES", "InstanceSegmentation", "InstancePredictor", "tune_postprocessing"]
