"""detector: Mask R-CNN for instance segmentation, trained from boxes and masks per image.

torchvision's Mask R-CNN with a ResNet FPN backbone (He et al., ICCV 2017; snakescope.engine.networks
builds it, never downloaded) learns from a list of boxes, labels and masks per image rather than a class
map, so it is trained by a variant of the shared trainer (`DetectorTrainer`) that overrides how the
network is built, what a step's loss is and how an epoch is validated. Each epoch draws random augmented
patches as the U-Net's training does; the instance labels follow every geometric transform with
nearest-neighbour interpolation and become boxes and masks afterwards. Validation runs on fixed tiles of
the validation images (BatchNorm frozen, so validation does not change the running statistics): their
panoptic quality at the default score threshold (`val_pq`) picks the best epoch and decides early
stopping, as the field selects detectors by a validation metric; the detector losses are only weakly tied
to it and are logged as `val_loss`, F1 at IoU 0.5 as `val_f1`. Gradients are clipped to norm 10, since
losses from scratch start large. The score a detection needs to be painted is tuned on the validation
images (`tune_score_threshold`), as the U-Net's marker threshold is.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from snakescope.engine import distributed
from snakescope.engine.models import MODELS
from snakescope.engine.networks import MASKRCNN_SCORE_THRESHOLD, anchor_sizes, set_anchor_sizes
from snakescope.engine.trainer import Trainer
from snakescope.tasks.instance_segmentation.metrics import instance_metrics, panoptic_quality

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SCORE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # tried on the validation images
MASKRCNN_MASK_THRESHOLD = 0.5
MAX_VAL_TILES = 8
GRADIENT_CLIP_NORM = 10.0


def maskrcnn_target(labels: np.ndarray, min_pixels: int = 4) -> dict:
    """Mask R-CNN training target of one (Y, X) instance label image (a crop).

    Objects cut down to fewer than `min_pixels` by the crop are dropped (a sliver at the crop edge is
    not an object to detect). Boxes are xyxy with exclusive upper corners, so a one-pixel object has a
    box of positive size, which torchvision requires.

    Returns:
        {"boxes": (N, 4) float32, "labels": (N,) int64 ones, "masks": (N, Y, X) uint8}.
    """
    import torch

    labels = np.asarray(labels)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    ids = ids[counts >= min_pixels]
    if ids.size == 0:
        return {
            "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros((0, *labels.shape), dtype=torch.uint8),
        }
    masks = labels[None] == ids[:, None, None]
    boxes = []
    for mask in masks:
        rows, columns = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        boxes.append([columns[0], rows[0], columns[-1] + 1, rows[-1] + 1])
    return {
        "boxes": torch.as_tensor(boxes, dtype=torch.float32),
        "labels": torch.ones(len(ids), dtype=torch.int64),
        "masks": torch.as_tensor(masks, dtype=torch.uint8),
    }


def maskrcnn_instances(
    model,
    image: torch.Tensor,
    score_threshold: float = MASKRCNN_SCORE_THRESHOLD,
    mask_threshold: float = MASKRCNN_MASK_THRESHOLD,
    min_area: int = 4,
) -> tuple[np.ndarray, dict[int, float]]:
    """Instance labels of one image from Mask R-CNN, at the image's native scale.

    torchvision pastes every detection's mask into a full-size (N, Y, X) float array, which for a
    thousand detections on a megapixel image is gigabytes; here the 28 x 28 mask of each detection is
    resized into its own box only. Detections are painted from the highest score down, each on pixels
    no better detection took, so the output has no overlaps; ids 1, 2, ... follow that order.

    Args:
        image: (C, Y, X) float tensor, normalised as in training, on the model's device.

    Returns:
        (YX int32 labels, {object id: detection score}).
    """
    import torch
    from torch.nn import functional as F  # noqa: N812

    model.eval()
    model.roi_heads.score_thresh = score_threshold  # boxes below it never reach the mask head
    height, width = image.shape[-2:]
    model.transform.min_size = (int(min(height, width)),)
    model.transform.max_size = int(max(height, width))
    # Proposals in proportion to the area (one per 250 px, 2,000 for a megapixel image, at least 200): a
    # small validation tile needs fewer than a whole image, and the box head runs on every proposal.
    model.rpn._post_nms_top_n["testing"] = int(min(2000, max(200, height * width // 250)))
    with torch.no_grad():
        images, _ = model.transform([image])
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    detection = detections[0]
    scale_y = height / images.image_sizes[0][0]
    scale_x = width / images.image_sizes[0][1]
    labels = np.zeros((height, width), np.int32)
    scores: dict[int, float] = {}
    order = torch.argsort(detection["scores"], descending=True)
    for index in order.tolist():
        score = float(detection["scores"][index])
        if score < score_threshold:
            break
        x1, y1, x2, y2 = (
            detection["boxes"][index].cpu() * torch.tensor([scale_x, scale_y, scale_x, scale_y])
        ).tolist()
        left, top = max(0, int(math.floor(x1))), max(0, int(math.floor(y1)))
        right, bottom = min(width, int(math.ceil(x2))), min(height, int(math.ceil(y2)))
        if right - left < 1 or bottom - top < 1:
            continue
        mask = (
            F.interpolate(
                detection["masks"][index][None].float(),
                size=(bottom - top, right - left),
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            .cpu()
            .numpy()
            > mask_threshold
        )
        region = labels[top:bottom, left:right]
        free = mask & (region == 0)
        if free.sum() < min_area:
            continue
        object_id = len(scores) + 1
        region[free] = object_id
        scores[object_id] = score
    return labels, scores


def load_maskrcnn_weights(model, path: str) -> None:
    """Local weights into a Mask R-CNN: a whole detector (e.g. torchvision's COCO file, class-specific
    layers skipped by shape) or, when no layer name fits, a ResNet classifier into the backbone."""
    from snakescope.engine.networks import load_pretrained

    loaded, _ = load_pretrained(model, path)
    if not loaded:
        loaded, _ = load_pretrained(model.backbone.body, path)
    if not loaded:
        raise ValueError(
            f"{path}: no tensor fits this Mask R-CNN or its ResNet backbone; check the file and the model "
            f"(maskrcnn is ResNet-50, maskrcnn_resnet18 ResNet-18)."
        )


def _batchnorm_eval(model) -> None:
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _tiles(item: dict, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping (image, labels) tiles of `size` covering an item (the last row/column shifted in)."""
    image, labels = item["image"], item["label"][0]
    height, width = labels.shape
    tops = sorted({min(t, max(0, height - size)) for t in range(0, height, size)})
    lefts = sorted({min(x, max(0, width - size)) for x in range(0, width, size)})
    return [
        (image[:, t : t + size, x : x + size], labels[t : t + size, x : x + size])
        for t in tops
        for x in lefts
    ]


class DetectorTrainer(Trainer):
    """The shared training loop for Mask R-CNN: same outputs and resume behaviour, detector hooks."""

    monitor = "val_pq"
    higher_is_better = True
    channels_last = False
    # From scratch, the first steps' losses are in the tens and Adam's full step can throw the detector off
    # (a CI run of 40 steps learnt nothing); torchvision's detection recipes warm up for the same reason.
    warmup_steps = 10

    def build_network(self):
        from snakescope.engine.models import ModelSpec, build_model

        fingerprint, cfg = self.fingerprint, self.cfg
        if fingerprint["spatial_dims"] != 2:
            raise ValueError("maskrcnn segments 2D images only; use the unet model for 3D instance segmentation.")
        self.patch = int(self.plan["patch_size"][0])
        self.sizes = anchor_sizes(fingerprint.get("median_object_area"))
        spec = ModelSpec(cfg.model, cfg.task, fingerprint["channels"], 2, 2, cfg.dropout)  # background, object
        model = set_anchor_sizes(build_model(spec), self.sizes)
        # training patches pass the internal resize unscaled; prediction sets the image's own sides
        model.transform.min_size, model.transform.max_size = (self.patch,), self.patch
        if cfg.pretrained_weights:
            load_maskrcnn_weights(model, cfg.pretrained_weights)
        return spec, model

    def prepare_items(self, items: list[dict]) -> list[dict]:
        return items  # the detector learns from the instance labels themselves

    def step_loss(self, batch: dict):
        device = self.device
        images = [image.to(device) for image in batch["image"]]
        targets = [
            {k: v.to(device) for k, v in maskrcnn_target(label[0].cpu().numpy()).items()}
            for label in batch["label"]
        ]
        return sum(self.train_model(images, targets).values()), len(images)

    def clip_gradients(self) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRADIENT_CLIP_NORM)

    def validate(self) -> dict:
        """Summed detector losses, F1 at IoU 0.5 and panoptic quality on the validation tiles."""
        import torch

        model, device = self.model, self.device
        if not hasattr(self, "val_tiles"):
            tiles = [tile for item in self.val_items for tile in _tiles(item, self.patch)]
            # At most MAX_VAL_TILES, spread evenly: validation runs every epoch and a detector is slow on the CPU.
            self.val_tiles = [tiles[i] for i in np.unique(np.linspace(0, len(tiles) - 1, MAX_VAL_TILES).astype(int))]
        losses, scores = [], []
        for image, labels in self.val_tiles[self.group.rank::self.group.world]:
            tensor = torch.as_tensor(np.ascontiguousarray(image)).to(device)
            target = {k: v.to(device) for k, v in maskrcnn_target(labels).items()}
            model.train()
            _batchnorm_eval(model)
            with torch.no_grad():
                model.transform.min_size = (int(min(labels.shape)),)
                model.transform.max_size = int(max(labels.shape))
                losses.append(sum(model([tensor], [target]).values()).item())
            predicted, _ = maskrcnn_instances(model, tensor)
            scores.append(instance_metrics(labels, predicted))
        model.train()
        sums = [float(np.sum(losses)), float(np.sum([m["f1_50"] for m in scores])),
                float(np.sum([m["pq"] for m in scores])), len(losses)]
        loss, f1, pq, n = distributed.sum_over_processes(sums, self.group)
        return {"val_loss": loss / n, "val_f1": f1 / n, "val_pq": pq / n}

    def payload_extras(self) -> dict:
        return {"maskrcnn": {"anchor_sizes": list(self.sizes), "patch_size": self.patch}}

    def card_sections(self) -> dict:
        return {
            "model": {**self.spec.to_dict(), "architecture": MODELS[self.cfg.model].description,
                      "anchor_sizes": list(self.sizes)},
            "input": {"axes": "CYX", "dtype": "float32", "channels": self.spec.in_channels,
                      "normalisation": self.plan["normalisation"], "size": "any (predicted at native scale)"},
            "output": {"kind": "instance labels", "score_threshold": "tuned on the validation images"},
        }


def restore_detector(model, payload: dict):
    """Give a loaded Mask R-CNN the anchor sizes it was trained with (not part of its state dict)."""
    return set_anchor_sizes(model, payload.get("maskrcnn", {}).get("anchor_sizes"))


def tune_score_threshold(model, val_items: list[dict], min_area: int, device) -> tuple[float, dict[str, float]]:
    """The detector score threshold (of SCORE_THRESHOLDS) with the best mean panoptic quality on the
    validation images, the counterpart of the U-Net's `tune_postprocessing`. `maskrcnn_instances` paints
    detections from the best score down and numbers them in that order, so the instances at a threshold
    are those painted at the lowest one, cut at the number of objects scoring at least the threshold:
    one detection pass per image serves every threshold.

    Returns:
        (threshold, {"threshold": mean validation PQ}); (MASKRCNN_SCORE_THRESHOLD, {}) without labelled
        validation images.
    """
    import torch

    lowest = min(SCORE_THRESHOLDS)
    painted = [
        (*maskrcnn_instances(model, torch.as_tensor(item["image"]).to(device), lowest, min_area=min_area),
         item["label"][0])
        for item in val_items
        if "label" in item
    ]
    if not painted:
        return MASKRCNN_SCORE_THRESHOLD, {}
    scores = {}
    for threshold in SCORE_THRESHOLDS:
        quality = []
        for labels, object_scores, truth in painted:
            kept = sum(score >= threshold for score in object_scores.values())  # ids 1..kept
            quality.append(panoptic_quality(truth, np.where(labels > kept, 0, labels)))
        scores[threshold] = float(np.mean(quality))
    best = max(scores, key=lambda t: (scores[t], -abs(t - MASKRCNN_SCORE_THRESHOLD)))
    log.info(
        "detector score threshold %.2f (validation PQ %.3f; at %.2f: %.3f)",
        best,
        scores[best],
        MASKRCNN_SCORE_THRESHOLD,
        scores[MASKRCNN_SCORE_THRESHOLD],
    )
    return best, {str(t): v for t, v in scores.items()}
