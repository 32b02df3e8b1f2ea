"""instances: 2D instance segmentation, from ground truth to metrics.

Two methods, chosen by the `models:` entry of the config:

* ``unet`` (or any other dense network of snakescope.models): U-Net + seeded watershed, the family
  of methods that led the 2018 Data Science Bowl (Caicedo et al., Nat. Methods 2019). The U-Net
  learns three classes made from the instance labels: background, object interior and object
  boundary (the 1-pixel inner rim of every object, so touching objects are kept apart by two boundary
  pixels). Instances are then grown by a watershed from markers (connected components of high
  interior probability) inside the predicted foreground; the marker threshold and the minimum object
  area are tuned on the validation images (`tune_postprocessing`).
* ``maskrcnn``: torchvision's Mask R-CNN with a ResNet-50 FPN backbone (He et al., ICCV 2017), trained
  from scratch or from local weights, never downloaded; ``maskrcnn_resnet18`` is the same detector on a
  ResNet-18 FPN, 31 M parameters instead of 44 M, for small data trained from scratch (on a CPU a step
  costs about the same: the heads dominate, see MASKRCNN_ROIS_PER_IMAGE). It has its own training step
  here (`fit_maskrcnn`), because it learns from a list of boxes, labels and masks per image rather
  than a class map. The score a detection needs to be painted is tuned on the validation images
  (`tune_score_threshold`), as the U-Net's marker threshold is.

Both write one instance label image per test image (YX, uint16 or uint32, 0 = background, one id per
object). Metrics follow the field: object-level precision / recall / F1 and average precision
(AP = TP / (TP + FP + FN), the DSB 2018 definition) at IoU 0.5 and averaged over IoU 0.5:0.05:0.95,
the aggregated Jaccard index (AJI, Kumar et al., IEEE TMI 2017), panoptic quality (PQ, Kirillov et
al., CVPR 2019) and the mean IoU of matched objects. Overlaps come from scikit-image's
contingency table, one-to-one matching from SciPy's linear_sum_assignment. The trivial baseline is the
connected components of an Otsu threshold of the image.

Uncertainty is scored per object (`instance_uncertainty`): for the U-Net, the mean MC-dropout
foreground uncertainty inside the object; for Mask R-CNN, which has no dropout layer, 1 - the
detector's score.

This module imports torch only inside the functions that need it, so `convert` and `evaluate` (whose
env has no PyTorch) can use the ground-truth, post-processing and metric functions.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

UNET_CLASSES = ("background", "interior", "boundary")
IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2).tolist())  # 0.5, 0.55, ..., 0.95
MASKRCNN_BACKBONES = {"maskrcnn": "resnet50", "maskrcnn_resnet18": "resnet18"}  # model name -> ResNet
MASKRCNN_SCORE_THRESHOLD = 0.5  # painting threshold without validation images to tune it on
# Proposals sampled per training image for the box and mask heads (torchvision: 512). The heads' cost
# grows with it and dominates a step on the CPU (bench/maskrcnn_step.py: 4.3 s at 256, 2.6 at 128, 1.7 at
# 64 for ResNet-18, hardly more for ResNet-50); 128 still gives the mask head up to 32 objects per image.
MASKRCNN_ROIS_PER_IMAGE = 128
SCORE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # tried on the validation images
MASKRCNN_MASK_THRESHOLD = 0.5
MASKRCNN_MAX_DETECTIONS = 1000  # CPM-15 tiles hold up to ~350 nuclei; torchvision's default (100) is too few
MAX_VAL_TILES = 8
INTERIOR_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # U-Net marker thresholds tried on the validation images
SMOOTHING_SIGMA = 1.0  # pixels; Gaussian smoothing of the U-Net's maps before the watershed
MIN_MARKER_AREA = 4  # pixels; smaller interior specks do not seed an object


# ---------------------------------------------------------------------------------------------------
# ground truth


def binary_to_instances(mask: np.ndarray, h: float = 2.0) -> np.ndarray:
    """Split a binary mask into instances: connected components, then a seeded watershed on the
    distance transform to separate touching objects.

    The seeds are the h-maxima of the distance transform: a component is split only where it narrows
    by more than `h` pixels between two centres (a neck), so an elongated object with a flat ridge stays
    whole, where plain local maxima would cut it in several pieces.

    Args:
        mask: YX, any dtype; non-zero is foreground.
        h: minimal depth, in pixels, of the neck between two objects.

    Returns:
        YX int32 labels, 0 background, 1..N objects.
    """
    from scipy import ndimage as ndi
    from skimage.measure import label
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    foreground = np.asarray(mask) > 0
    components = label(foreground, connectivity=1)
    if components.max() == 0:
        return components.astype(np.int32)
    distance = ndi.distance_transform_edt(foreground)
    markers = label(h_maxima(distance, h) & foreground)
    labels = watershed(-distance, markers, mask=foreground)
    return _label_leftovers(labels, foreground)


def _label_leftovers(labels: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Give every foreground component that no seed reached its own id (small or thin objects)."""
    from skimage.measure import label

    leftovers = label(foreground & (labels == 0), connectivity=1)
    labels = labels.astype(np.int32)
    if leftovers.max():
        labels[leftovers > 0] = leftovers[leftovers > 0] + labels.max()
    return labels


def masks_are_binary(masks: list[np.ndarray]) -> bool:
    """True when every mask holds at most one non-zero value (binary masks, not instance labels).

    Decided over the whole dataset rather than per image: a single image with one object looks the
    same either way, while a dataset of instance masks in which no image has two objects is rare.
    """
    return all(len(np.unique(m[m != 0])) <= 1 for m in masks)


def prepare_instance_targets(targets: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """Instance label images for `convert`: as given, or derived from binary masks.

    Returns:
        ({id: YX int64 labels}, whether they were derived from binary masks).

    Raises:
        InputError when no mask holds any object.
    """
    from snakescope.io import InputError

    if targets and not any(t.any() for t in targets.values()):
        raise InputError(
            f"all {len(targets)} masks are empty (only background, 0); there are no objects to "
            "learn. Check the ground-truth folder and layout.masks."
        )
    derived = bool(targets) and masks_are_binary(list(targets.values()))
    if derived:
        log.info("the masks are binary: deriving instances (connected components + distance watershed)")
        targets = {k: binary_to_instances(v).astype(np.int64) for k, v in targets.items()}
    return targets, derived


def object_areas(labels: np.ndarray) -> np.ndarray:
    """Pixel areas of the objects of a label image (ids need not be consecutive)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel())
    return counts[1:][counts[1:] > 0]


def instance_fingerprint(targets: dict[str, np.ndarray], derived_from_binary: bool) -> dict:
    """Object statistics for the fingerprint: objects per image and object areas (pixels).

    `num_classes` is 3: the classes the U-Net method learns (UNET_CLASSES), made from the instances.
    """
    per_image = [len(object_areas(t)) for t in targets.values()]
    areas = np.concatenate([object_areas(t) for t in targets.values()] or [np.zeros(0)])
    foreground = sum(int((t > 0).sum()) for t in targets.values())
    total = sum(t.size for t in targets.values())
    return {
        "instances_derived_from_binary": derived_from_binary,
        "n_objects": int(areas.size),
        "objects_per_image": {
            "median": float(np.median(per_image)) if per_image else 0.0,
            "min": int(min(per_image, default=0)),
            "max": int(max(per_image, default=0)),
        },
        "median_object_area": float(np.median(areas)) if areas.size else 0.0,
        "object_area_percentiles": (
            {
                str(q): float(v)
                for q, v in zip((1, 5, 95, 99), np.percentile(areas, (1, 5, 95, 99)), strict=True)
            }
            if areas.size
            else {}
        ),
        "foreground_fraction": foreground / max(total, 1),
        "num_classes": len(UNET_CLASSES),
        "unet_classes": list(UNET_CLASSES),
    }


def instances_to_classes(labels: np.ndarray) -> np.ndarray:
    """Background (0) / interior (1) / boundary (2) classes of an instance label image, same shape.

    The boundary is every object's 1-pixel inner rim (skimage find_boundaries, mode "inner"), so two
    touching objects are separated by boundary pixels and their interiors never touch.
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    classes = (labels > 0).astype(np.int64)
    classes[find_boundaries(labels, mode="inner") & (labels > 0)] = 2
    return classes


def to_class_items(items: list[dict]) -> list[dict]:
    """Replace each item's instance "label" (1, Y, X) by its three-class map (1, Y, X), for the U-Net."""
    return [
        {**item, "label": instances_to_classes(item["label"][0])[None]} if "label" in item else item
        for item in items
    ]


def training_object_areas(arrays_npz: str, ids: list[str]) -> np.ndarray:
    with np.load(arrays_npz) as arrays:
        return np.concatenate(
            [object_areas(arrays[f"target/{i}"]) for i in ids if f"target/{i}" in arrays] or [np.zeros(0)]
        )


def minimum_object_area(areas: np.ndarray) -> int:
    """Objects smaller than a tenth of the median training object are taken for noise."""
    return max(4, int(round(0.1 * float(np.median(areas))))) if areas.size else 4


# ---------------------------------------------------------------------------------------------------
# U-Net + watershed


def watershed_instances(
    probabilities: np.ndarray,
    interior_threshold: float = 0.5,
    min_area: int = 4,
    sigma: float = SMOOTHING_SIGMA,
) -> np.ndarray:
    """Instances from the U-Net's background / interior / boundary probabilities.

    The maps are first smoothed (Gaussian, `sigma` pixels) so that single-pixel speckle neither seeds
    an object nor cuts one. Foreground is where background is not the most likely class
    (p_background < 0.5); markers are the connected components of p_interior > `interior_threshold`
    of at least MIN_MARKER_AREA pixels; a watershed on 1 - p_interior grows them over the foreground.
    Foreground components without a marker become objects of their own, and objects smaller than
    `min_area` pixels are removed.

    Args:
        probabilities: (3, Y, X) float softmax output, classes in UNET_CLASSES order.

    Returns:
        YX int32 labels, 0 background, 1..N objects.
    """
    from scipy import ndimage as ndi
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential, watershed

    if probabilities.ndim != 3 or probabilities.shape[0] != len(UNET_CLASSES):
        raise ValueError(f"expected (3, Y, X) probabilities {UNET_CLASSES}, got shape {probabilities.shape}")
    if sigma:
        probabilities = ndi.gaussian_filter(probabilities, (0, sigma, sigma))
    interior = probabilities[1]
    foreground = probabilities[0] < 0.5
    markers = remove_small(
        label((interior > interior_threshold) & foreground, connectivity=1), MIN_MARKER_AREA
    )
    labels = watershed(1.0 - interior, markers, mask=foreground)
    labels = remove_small(_label_leftovers(labels, foreground), min_area)
    return relabel_sequential(labels)[0].astype(np.int32)


def remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Set objects of fewer than `min_area` pixels to background (a copy; ids otherwise kept)."""
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    return np.where(small[labels], 0, labels)


# ---------------------------------------------------------------------------------------------------
# Mask R-CNN


def anchor_sizes(median_area: float | None) -> tuple[int, ...]:
    """Anchor sizes for the five FPN levels, starting at about half the typical object diameter.

    torchvision's defaults (32..512 px) suit COCO objects; nuclei of 10-25 px need smaller anchors, or
    the RPN finds no positive anchors for them at all.
    """
    if not median_area:
        return (32, 64, 128, 256, 512)
    smallest = int(2 ** max(2, round(math.log2(math.sqrt(median_area))) - 1))
    return tuple(smallest * 2**k for k in range(5))


def is_detector(model_name: str) -> bool:
    """Whether the model is a Mask R-CNN (trained, predicted and scored by this module's own steps)."""
    return model_name in MASKRCNN_BACKBONES


def build_maskrcnn(
    in_channels: int,
    num_classes: int = 2,
    sizes: tuple[int, ...] | None = None,
    image_size: int = 256,
    backbone: str = "resnet50",
) -> torch.nn.Module:
    """torchvision Mask R-CNN on a ResNet FPN backbone, freshly initialised (no download).

    The backbone is built as torchvision's maskrcnn_resnet50_fpn builds it without weights (trainable
    BatchNorm, all layers trainable), so a ResNet-50 detector keeps the state-dict names of torchvision's
    COCO file and loads it.

    Args:
        in_channels: image channels; the first convolution is rebuilt when it is not 3.
        num_classes: background + object classes (2: background, object).
        sizes: anchor size per FPN level (see `anchor_sizes`).
        image_size: min_size = max_size of the internal resize; training crops of this size pass
            unscaled. Prediction sets both to the image's own sides so it is never rescaled.
        backbone: a torchvision ResNet name (resnet18, resnet50, ...).

    Input: list of (C, Y, X) float tensors normalised to about 0..1 (the model subtracts 0.5 and
    divides by 0.25). Output in eval mode: per image a dict of boxes (N, 4) xyxy, labels, scores,
    masks (N, 1, Y, X) probabilities.
    """
    from torch import nn
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    model = MaskRCNN(
        resnet_fpn_backbone(backbone_name=backbone, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5),
        num_classes=num_classes,
        min_size=image_size,
        max_size=image_size,
        image_mean=[0.5] * in_channels,
        image_std=[0.25] * in_channels,
        box_detections_per_img=MASKRCNN_MAX_DETECTIONS,
        rpn_pre_nms_top_n_test=3000,
        rpn_post_nms_top_n_test=2000,
        box_batch_size_per_image=MASKRCNN_ROIS_PER_IMAGE,
        # Boxes below the painting threshold are dropped before the mask head runs on them: an untrained
        # detector otherwise sends a thousand boxes per image through the mask head.
        box_score_thresh=MASKRCNN_SCORE_THRESHOLD,
    )
    sizes = tuple(sizes or anchor_sizes(None))
    model.rpn.anchor_generator = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
    if in_channels != 3:
        conv = model.backbone.body.conv1
        model.backbone.body.conv1 = nn.Conv2d(
            in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False
        )
    return model


def configure_maskrcnn(model, payload: dict):
    """Apply the anchor sizes saved with a trained Mask R-CNN (they are not part of its state dict)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(payload.get("maskrcnn", {}).get("anchor_sizes") or anchor_sizes(None))
    model.rpn.anchor_generator = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
    return model


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
    from snakescope.models import load_pretrained

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


def fit_maskrcnn(
    arrays_npz: str,
    samples_tsv: str,
    split_json: str,
    plan_json: str,
    fingerprint_json: str,
    cfg,
    model_out: str,
    history_out: str,
    card_out: str,
    work_dir: str | None = None,
    threads: int = 1,
) -> dict:
    """Train Mask R-CNN on random patches; same outputs and resume behaviour as snakescope.train.fit.

    Each epoch draws random augmented patches (`patch_size`) as the U-Net's training does
    (snakescope.data.TrainBatches, patches per image from snakescope.train.patches_per_image); the
    instance labels follow every geometric transform with nearest-neighbour interpolation and are turned
    into boxes and masks afterwards. Validation runs on fixed tiles of the validation images (BatchNorm
    frozen, so validation does not change the running statistics): their panoptic quality at the default
    score threshold (`val_pq`) picks the best epoch and decides early stopping, as the field selects
    detectors by a validation metric; the detector losses are only weakly tied to it and are logged as
    `val_loss`, F1 at IoU 0.5 as `val_f1`. Adam with the
    configured learning rate; gradients clipped to norm 10, since losses from scratch start large.
    """
    import torch

    from snakescope import __version__
    from snakescope.data import TrainBatches, load_items, read_samples
    from snakescope.io import atomic_path, read_json, write_json, write_table
    from snakescope.models import ModelSpec
    from snakescope.runtime import seed_everything, select_device
    from snakescope.train import _config_hash, finish_epoch, patches_per_image, resume_run

    torch.set_num_threads(max(1, threads))
    device = select_device(cfg.device)
    seed_everything(cfg.seed, device)
    plan, fingerprint, split = read_json(plan_json), read_json(fingerprint_json), read_json(split_json)
    samples = read_samples(samples_tsv)
    work_dir = Path(work_dir or Path(model_out).parent)
    if fingerprint["spatial_dims"] != 2:
        raise ValueError("maskrcnn segments 2D images only; use the unet model for 3D instance segmentation.")

    patch = int(plan["patch_size"][0])
    sizes = anchor_sizes(fingerprint.get("median_object_area"))
    spec = ModelSpec(cfg.model, cfg.task, fingerprint["channels"], 2, 2, cfg.dropout)
    backbone = MASKRCNN_BACKBONES[cfg.model]
    model = build_maskrcnn(spec.in_channels, 2, sizes, patch, backbone)
    if cfg.pretrained_weights:
        load_maskrcnn_weights(model, cfg.pretrained_weights)
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)

    train_items = load_items(arrays_npz, samples, split["train"], plan)
    val_items = load_items(arrays_npz, samples, split["val"], plan)
    val_tiles = [tile for item in val_items for tile in _tiles(item, patch)]
    # At most MAX_VAL_TILES, spread evenly: validation runs every epoch and a detector is slow on the CPU.
    val_tiles = [
        val_tiles[i] for i in np.unique(np.linspace(0, len(val_tiles) - 1, MAX_VAL_TILES).astype(int))
    ]
    loader_generator = torch.Generator()
    loader = TrainBatches(
        train_items * patches_per_image(train_items, plan),
        plan,
        cfg.batch_size,
        device,
        threads=threads,
        generator=loader_generator,
    )

    run_hash = _config_hash(cfg, split, plan)
    state, best_state = resume_run(work_dir, run_hash, model, optimizer)
    log.info(
        "training %s on %s: %d train images (%d patches of %d px per epoch), %d val tiles, "
        "anchors %s, %d parameters",
        cfg.model,
        device,
        len(train_items),
        loader.n,
        patch,
        len(val_tiles),
        sizes,
        sum(p.numel() for p in model.parameters()),
    )

    while state["epoch"] < cfg.epochs and state["stale_epochs"] < cfg.patience:
        epoch = state["epoch"] + 1
        epoch_seed = cfg.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)
        loader_generator.manual_seed(epoch_seed)
        started = time.perf_counter()
        model.train()
        total, n_images = 0.0, 0
        for batch_index, batch in enumerate(loader):
            if cfg.max_batches_per_epoch and batch_index >= cfg.max_batches_per_epoch:
                break
            images = [image.to(device) for image in batch["image"]]
            targets = [
                {k: v.to(device) for k, v in maskrcnn_target(label[0].cpu().numpy()).items()}
                for label in batch["label"]
            ]
            loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            total += loss.detach().item() * len(images)
            n_images += len(images)
        val_loss, val_f1, val_pq = _validate_maskrcnn(model, val_tiles, device)
        seconds = time.perf_counter() - started
        row = {
            "epoch": epoch,
            "train_loss": total / max(n_images, 1),
            "val_loss": val_loss,
            "val_f1": val_f1,
            "val_pq": val_pq,
            "seconds": seconds,
            "images_per_second": n_images / max(seconds, 1e-9),
        }
        best_state = finish_epoch(work_dir, run_hash, model, optimizer, state, row, "val_pq", higher_is_better=True) or best_state
        log.info(
            "epoch %d/%d train_loss %.4f val_loss %.4f val_f1 %.4f val_pq %.4f (%.1fs)%s",
            epoch,
            cfg.epochs,
            row["train_loss"],
            val_loss,
            val_f1,
            val_pq,
            seconds,
            " *best*" if row["improved"] else "",
        )

    payload = {
        "model": best_state if best_state is not None else model.state_dict(),
        "spec": spec.to_dict(),
        "plan": plan,
        "classes": [],
        "mask_values": [],
        "best_epoch": state["best_epoch"],
        "maskrcnn": {"anchor_sizes": list(sizes), "patch_size": patch, "backbone": backbone},
    }
    with atomic_path(model_out) as tmp:
        torch.save(payload, tmp)
    write_table(pd.DataFrame(state["history"]), history_out)
    card = {
        "model": {
            **spec.to_dict(),
            "architecture": f"torchvision Mask R-CNN, {backbone} FPN",
            "anchor_sizes": list(sizes),
        },
        "input": {
            "axes": "CYX",
            "dtype": "float32",
            "channels": spec.in_channels,
            "normalisation": plan["normalisation"],
            "size": "any (predicted at native scale)",
        },
        "output": {"kind": "instance labels", "score_threshold": "tuned on the validation images"},
        "training": {
            "seed": cfg.seed,
            "epochs_run": state["epoch"],
            "best_epoch": state["best_epoch"],
            "best_val_pq": state.get("best_val_pq"),
            "early_stopped": state["stale_epochs"] >= cfg.patience,
            "train_seconds": float(sum(r["seconds"] for r in state["history"])),
            "seconds_per_epoch": float(np.mean([r["seconds"] for r in state["history"]] or [0])),
            "settings": cfg.__dict__,
            "device": str(device),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        },
        "versions": {"snakescope": __version__, "torch": torch.__version__},
        "dataset": {"name": fingerprint["dataset"], "n_train": len(train_items), "n_val": len(val_items)},
    }
    write_json(card, card_out)
    return card


def _validate_maskrcnn(model, tiles: list[tuple[np.ndarray, np.ndarray]], device) -> tuple[float, float, float]:
    """(summed detector losses, F1 at IoU 0.5, panoptic quality) on the validation tiles, BatchNorm frozen."""
    import torch

    losses, scores = [], []
    for image, labels in tiles:
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
    return float(np.mean(losses)), *(float(np.mean([m[key] for m in scores])) for key in ("f1_50", "pq"))


# ---------------------------------------------------------------------------------------------------
# predict and uncertainty (called by snakescope.predict / snakescope.uncertainty after loading)


def unet_probabilities(model, plan: dict, image: np.ndarray, device) -> np.ndarray:
    """(3, Y, X) softmax of the U-Net (sliding window) for one (C, Y, X) normalised image."""
    import torch

    from snakescope.train import predict_logits

    model.eval()
    with torch.no_grad():
        logits = predict_logits(model, torch.as_tensor(image)[None].to(device), plan)
    return torch.softmax(logits.float(), 1)[0].cpu().numpy()


def _instances_of(
    model, payload: dict, image: np.ndarray, threshold: float, min_area: int, device
) -> tuple[np.ndarray, dict[int, float], np.ndarray | None]:
    """(labels, {id: detector score} or {}, U-Net probabilities or None) for one (C, Y, X) image;
    `threshold` is the U-Net's marker threshold or the detector's score threshold."""
    import torch

    if is_detector(payload["spec"]["name"]):
        labels, scores = maskrcnn_instances(
            model, torch.as_tensor(image).to(device), score_threshold=threshold, min_area=min_area
        )
        return labels, scores, None
    probabilities = unet_probabilities(model, payload["plan"], image, device)
    return watershed_instances(probabilities, threshold, min_area), {}, probabilities


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
            scores[threshold, area] = float(
                np.mean(
                    [
                        panoptic_quality(truth, relabel_sequential(remove_small(labels, area))[0])
                        for labels, truth in grown
                    ]
                )
            )
    best = max(scores, key=lambda key: (scores[key], -abs(key[0] - 0.5), -key[1]))
    log.info(
        "post-processing: interior threshold %.2f, minimum area %d px (validation PQ %.3f; at 0.5 and "
        "%d px: %.3f)",
        best[0],
        best[1],
        scores[best],
        min_area,
        scores[0.5, min_area],
    )
    return best[0], best[1], {f"{t}/{a}": v for (t, a), v in scores.items()}


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


def _prepare(
    model, payload: dict, arrays_npz: str, samples, split: dict, threshold: str | float, device
) -> tuple[int, float]:
    """Set up a loaded model for instances: (minimum object area, U-Net marker or detector score threshold).

    The minimum area starts from the training masks (`minimum_object_area`). For the U-Net, the
    config's `threshold` sets the marker threshold on the interior probability when it is a number; the
    default ("otsu", meant for binary masks) tunes threshold and minimum area on the validation images
    instead (`tune_postprocessing`). Mask R-CNN gets its anchor sizes back and its score threshold
    tuned on the validation images (`tune_score_threshold`); a number in `threshold` is the U-Net's, a
    probability of a different model, so it does not apply.
    """
    from snakescope.data import load_items

    min_area = minimum_object_area(training_object_areas(arrays_npz, split["train"]))
    detector = is_detector(payload["spec"]["name"])
    if not detector and not isinstance(threshold, str):
        return min_area, float(threshold)
    val_items = load_items(arrays_npz, samples, split.get("val", []), payload["plan"])
    if detector:
        configure_maskrcnn(model, payload)
        score_threshold, _ = tune_score_threshold(model, val_items, min_area, device)
        return min_area, score_threshold
    threshold, min_area, _ = tune_postprocessing(model, payload["plan"], val_items, min_area, device)
    return min_area, threshold


def predict_instances(
    model,
    payload: dict,
    arrays_npz: str,
    samples_tsv: str,
    split_json: str,
    out_dir: str,
    threshold: str | float,
    device,
) -> pd.DataFrame:
    """Write ``<id>_instances.tif`` (YX uint16, uint32 past 65535 objects) per test image, the U-Net's
    ``<id>_prob.tif`` (CYX float32: background, interior, boundary), ``predictions.csv`` and
    ``timing.json``.

    timing.json has the fields of snakescope.timing, measured here on the prediction pass itself and
    end to end (network and post-processing: the time to an instance image), at batch size 1; the
    first image carries the warm-up, which the median mostly hides.
    """
    from snakescope.data import load_items, read_samples
    from snakescope.io import read_json, write_json, write_table, write_tiff
    from snakescope.timing import hardware, peak_memory, software_versions

    split = read_json(split_json)
    samples = read_samples(samples_tsv)
    min_area, object_threshold = _prepare(model, payload, arrays_npz, samples, split, threshold, device)
    items = load_items(arrays_npz, samples, split["test"] + split.get("unlabelled_test", []), payload["plan"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = samples.set_index("id")["image"]
    rows, seconds = [], []
    for item in items:
        started = time.perf_counter()
        labels, scores, probabilities = _instances_of(
            model, payload, item["image"], object_threshold, min_area, device
        )
        seconds.append(time.perf_counter() - started)
        name = f"{item['id']}_instances.tif"
        write_tiff(labels.astype(np.uint16 if labels.max() < 2**16 else np.uint32), out / name, axes="YX")
        row = {
            "id": item["id"],
            "filename": Path(files[item["id"]]).name,
            "instances": name,
            "n_objects": int(labels.max()),
            "method": payload["spec"]["name"],
            "min_area": min_area,
            "threshold": object_threshold,
        }
        if probabilities is not None:
            write_tiff(probabilities.astype(np.float32), out / f"{item['id']}_prob.tif", axes="CYX")
            row["prob"] = f"{item['id']}_prob.tif"
        else:
            row["mean_score"] = float(np.mean(list(scores.values()))) if scores else float("nan")
        rows.append(row)
        log.info("%s: %d objects in %.1f s", item["id"], row["n_objects"], seconds[-1])
    table = pd.DataFrame(rows)
    write_table(table, out / "predictions.csv")
    median = float(np.median(seconds)) if seconds else float("nan")
    write_json(
        {
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            "seconds_per_image_batch1": median,
            "seconds_per_image_batched": median,
            "timing_batch_size": 1,
            "timed_images": len(seconds),
            "includes_postprocessing": True,
            **peak_memory(device),
            "hardware": hardware(device),
            "versions": software_versions(),
        },
        out / "timing.json",
    )
    return table


def instance_uncertainty(
    model,
    payload: dict,
    items: list[dict],
    arrays_npz: str,
    table: pd.DataFrame,
    split: dict,
    threshold: str | float,
    samples: int,
    device,
    out: Path,
) -> tuple[pd.DataFrame, dict]:
    """One row per predicted object with its uncertainty; returns (table, summary fields).

    U-Net: MC dropout (`samples` passes, dropout on). An object's `uncertainty` is the mean, inside the
    object, of the foreground uncertainty: the binary entropy (in bits, 0..1) of the MC-mean foreground
    probability p_interior + p_boundary, i.e. how unsure the model is that the pixels are object at
    all. The object's pixels are those of the deterministic prediction (the objects `predict` writes).
    Also per object: `class_entropy`, the mean normalised entropy of the MC-mean three-class
    probabilities (which adds the interior/boundary doubt that decides splits), and `foreground_std`,
    the mean spread of the sampled foreground probability. The foreground uncertainty map is written
    as ``<id>_uncertainty.tif``.

    Mask R-CNN: torchvision's Mask R-CNN has no dropout layer, so MC dropout would need a changed and
    retrained architecture; the object's score is 1 - the detector's confidence score instead (column
    `method` says which).

    With ground truth, each object gets its best IoU with a true object and `matched` (IoU >= 0.5);
    the figure plots uncertainty against that IoU.
    """
    import torch
    from scipy import ndimage as ndi

    from snakescope.io import write_tiff
    from snakescope.uncertainty import mc_segment, normalised_entropy

    is_maskrcnn = is_detector(payload["spec"]["name"])
    min_area, object_threshold = _prepare(model, payload, arrays_npz, table, split, threshold, device)
    rows = []
    for item in items:
        labels, scores, _ = _instances_of(model, payload, item["image"], object_threshold, min_area, device)
        ids = np.arange(1, labels.max() + 1)
        if is_maskrcnn:
            uncertainty = np.array([1.0 - scores[i] for i in ids])
            entropy = spread = np.full(len(ids), np.nan)
        else:
            image = torch.as_tensor(item["image"][None]).to(device)
            probabilities = mc_segment(model, image, payload["plan"], samples).numpy()  # (S, 3, Y, X)
            foreground = 1.0 - probabilities[:, 0]
            mean_foreground = foreground.mean(0)
            foreground_map = normalised_entropy(np.stack([1.0 - mean_foreground, mean_foreground]), axis=0)
            write_tiff(foreground_map.astype(np.float32), out / f"{item['id']}_uncertainty.tif", axes="YX")
            class_map = normalised_entropy(probabilities.mean(0), axis=0)

            def object_means(values, ids=ids, labels=labels):
                return np.asarray(ndi.mean(values, labels, ids)) if ids.size else np.zeros(0)

            uncertainty, entropy, spread = (
                object_means(v) for v in (foreground_map, class_map, foreground.std(0))
            )
        best_iou = best_match_iou(item["label"][0], labels) if "label" in item else np.full(len(ids), np.nan)
        areas = np.bincount(labels.ravel(), minlength=len(ids) + 1)[1:]
        for index, object_id in enumerate(ids):
            rows.append(
                {
                    "id": item["id"],
                    "object": int(object_id),
                    "area": int(areas[index]),
                    "uncertainty": float(uncertainty[index]),
                    "class_entropy": float(entropy[index]),
                    "foreground_std": float(spread[index]),
                    "best_iou": float(best_iou[index]),
                    "matched": bool(best_iou[index] >= 0.5),
                    "method": "detector_score" if is_maskrcnn else "mc_dropout",
                }
            )
    frame = pd.DataFrame(
        rows,
        columns=[
            "id",
            "object",
            "area",
            "uncertainty",
            "class_entropy",
            "foreground_std",
            "best_iou",
            "matched",
            "method",
        ],
    )
    _uncertainty_figure(frame, out / "uncertainty_vs_error.png", is_maskrcnn)
    summary = {
        "n_objects": len(frame),
        "method": "1 - detector score" if is_maskrcnn else "MC dropout",
        "mc_samples": 0 if is_maskrcnn else samples,
    }
    return frame, summary


def _uncertainty_figure(frame: pd.DataFrame, path: Path, is_maskrcnn: bool) -> None:
    import matplotlib.pyplot as plt

    from snakescope.io import save_figure

    figure, axis = plt.subplots(figsize=(5, 3.8))
    axis.scatter(frame["uncertainty"], frame["best_iou"], s=5, alpha=0.5)
    axis.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlabel("1 - detector score" if is_maskrcnn else "mean MC-dropout uncertainty inside the object")
    axis.set_ylabel("best IoU with a true object")
    axis.set_title(f"Does uncertainty track error? ({len(frame)} objects)")
    save_figure(figure, path)


# ---------------------------------------------------------------------------------------------------
# metrics


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


# ---------------------------------------------------------------------------------------------------
# baseline and evaluation


def grey(image: np.ndarray) -> np.ndarray:
    """(C, Y, X) -> (Y, X) float: the mean of the channels."""
    return np.asarray(image, dtype=np.float32).mean(0)


def objects_are_bright(images: list[np.ndarray], targets: list[np.ndarray]) -> bool:
    """Whether objects are brighter than background in the training images (grey = channel mean).

    Fluorescent nuclei are bright on dark; haematoxylin-stained nuclei in H&E are dark on light.
    """
    inside = np.concatenate([grey(i)[t > 0] for i, t in zip(images, targets, strict=True)])
    outside = np.concatenate([grey(i)[t == 0] for i, t in zip(images, targets, strict=True)])
    return bool(inside.mean() > outside.mean())


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
    predictions: pd.DataFrame, predict_dir: Path, arrays_npz: str, split: dict, figures: Path
) -> tuple[dict, pd.DataFrame]:
    """Per-image metrics (model and Otsu baseline), their means, and figures: overlays, AP vs IoU, boxplot."""
    import tifffile

    rows, examples, curves, baseline_curves = [], [], [], []
    with np.load(arrays_npz) as arrays:
        train_ids = [i for i in split["train"] if f"target/{i}" in arrays]
        bright = objects_are_bright(
            [arrays[f"image/{i}"] for i in train_ids], [arrays[f"target/{i}"] for i in train_ids]
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

    from snakescope.io import save_figure
    from snakescope.plots import displayable

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
