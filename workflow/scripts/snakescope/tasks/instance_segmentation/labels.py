"""labels: instance label images: made from binary masks, turned into the U-Net's three classes, and
grown back into instances from the U-Net's probabilities by a seeded watershed.

The U-Net + watershed method is the family that led the 2018 Data Science Bowl (Caicedo et al., Nat.
Methods 2019): the U-Net learns background, object interior and object boundary (the 1-pixel inner rim
of every object, so touching objects are kept apart by two boundary pixels); instances are grown by a
watershed from markers (connected components of high interior probability) inside the predicted
foreground.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping

import numpy as np

from snakescope.images import object_areas
from snakescope.io import InputError
from snakescope.store import open_store

log = logging.getLogger(__name__)

UNET_CLASSES = ("background", "interior", "boundary")
SMOOTHING_SIGMA = 1.0  # pixels; Gaussian smoothing of the U-Net's maps before the watershed
MIN_MARKER_AREA = 4  # pixels; smaller interior specks do not seed an object


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


def masks_are_binary(masks: Iterable[np.ndarray]) -> bool:
    """True when every mask holds at most one non-zero value (binary masks, not instance labels).

    Decided over the whole dataset rather than per image: a single image with one object looks the
    same either way, while a dataset of instance masks in which no image has two objects is rare.
    """
    return all(len(np.unique(m[m != 0])) <= 1 for m in masks)


def prepare_instance_targets(targets: MutableMapping[str, np.ndarray]) -> tuple[MutableMapping[str, np.ndarray], bool]:
    """Instance label images for `convert`: as given, or derived from binary masks (replaced in
    `targets`, one at a time, so that a mapping held on disk stays there).

    Returns:
        (`targets`, now {id: YX int64 labels}; whether they were derived from binary masks).

    Raises:
        InputError when no mask holds any object.
    """
    if targets and not any(t.any() for t in targets.values()):
        raise InputError(
            f"all {len(targets)} masks are empty (only background, 0); there are no objects to "
            "learn. Check the ground-truth folder and layout.masks."
        )
    derived = bool(targets) and masks_are_binary(targets.values())
    if derived:
        log.info("the masks are binary: deriving instances (connected components + distance watershed)")
        for key in list(targets):
            targets[key] = binary_to_instances(targets[key]).astype(np.int64)
    return targets, derived


def instance_fingerprint(targets: dict[str, np.ndarray]) -> dict:
    """Object statistics for the fingerprint: objects per image and object areas (pixels).

    `num_classes` is 3: the classes the U-Net method learns (UNET_CLASSES), made from the instances.
    """
    per_image = [len(object_areas(t)) for t in targets.values()]
    areas = np.concatenate([object_areas(t) for t in targets.values()] or [np.zeros(0)])
    foreground = sum(int((t > 0).sum()) for t in targets.values())
    total = sum(t.size for t in targets.values())
    return {
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


def training_object_areas(arrays_store: str, ids: list[str]) -> np.ndarray:
    with open_store(arrays_store) as arrays:
        return np.concatenate(
            [object_areas(arrays[f"target/{i}"]) for i in ids if f"target/{i}" in arrays] or [np.zeros(0)]
        )


def minimum_object_area(areas: np.ndarray) -> int:
    """Objects smaller than a tenth of the median training object are taken for noise."""
    return max(4, int(round(0.1 * float(np.median(areas))))) if areas.size else 4


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
