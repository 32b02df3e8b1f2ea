"""read: every sample's pixels and ground truth, read and checked, and tiles cut from them.

Images become float32 channels-first arrays (snakescope.images); ground truth is read by the task
(snakescope.tasks). A file that cannot be used adds its message to the list of problems instead of
stopping the reading, so all of them are reported at once.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, MutableMapping

import numpy as np

from snakescope.convert.samples import MULTI_FILE_SEPARATOR, Sample
from snakescope.images import resize_image, to_channels_first
from snakescope.io import InputError, file_checksum, read_image
from snakescope.logs import PROGRESS

log = logging.getLogger(__name__)


def read_sample_image(spec: str) -> np.ndarray:
    """Read a sample's pixels: one file as `read_image` does, or several single-plane files (joined by
    MULTI_FILE_SEPARATOR, in channel order) stacked into CYX."""
    if MULTI_FILE_SEPARATOR not in spec:
        return read_image(spec)
    planes = [read_image(path) for path in spec.split(MULTI_FILE_SEPARATOR)]
    shapes = {plane.shape for plane in planes}
    if len(shapes) > 1 or planes[0].ndim != 2:
        raise InputError(
            f"{spec.split(MULTI_FILE_SEPARATOR)[0]} and the other files of its field: shapes "
            f"{sorted(shapes)}; every channel file of a field must be one YX plane of the same size."
        )
    return np.stack(planes)


_CHECKSUMS: dict[str, str] = {}


def sample_checksum(spec: str) -> str:
    """SHA-256 of a sample's file (or of its files' checksums, for a multi-file field); cached, since
    the tiles of one image share its files."""
    if spec not in _CHECKSUMS:
        paths = spec.split(MULTI_FILE_SEPARATOR)
        digests = [file_checksum(p) for p in paths]
        _CHECKSUMS[spec] = (
            digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
        )
    return _CHECKSUMS[spec]


def read_dataset(
    samples: list[Sample], task, settings: dict, images: MutableMapping | None = None,
    targets: MutableMapping | None = None,
) -> tuple[MutableMapping, MutableMapping, Counter, list[str]]:
    """Read every sample's image (and target, through the task), resized when the config says so.

    Args:
        images, targets: where to put them (e.g. snakescope.store.SpilledArrays); new dicts by default.
    Returns:
        ({id: float32 C+spatial image}, {id: target as the task reads it}, Counter of source dtypes,
         messages of the files that could not be used).
    """
    spatial_dims = 3 if len(settings.get("patch_size") or [0, 0]) == 3 else 2
    errors: list[str] = []
    images = {} if images is None else images
    targets = {} if targets is None else targets
    raw_dtypes: Counter = Counter()
    for index, sample in enumerate(samples):
        try:
            raw = read_sample_image(sample.image)
            raw_dtypes[str(raw.dtype)] += 1
            image = to_channels_first(raw, sample.image, spatial_dims)
            if task.dense and sample.target:
                targets[sample.id] = task.read_target(sample.target, image.shape[1:], settings)
            if settings.get("resize"):
                image = resize_image(image, settings["resize"])
            images[sample.id] = image
        except InputError as error:
            errors.append(str(error))
        if (index + 1) % 50 == 0:
            log.info("read %d/%d images", index + 1, len(samples), extra=PROGRESS)
    return images, targets, raw_dtypes, errors


def tile_samples(
    samples: list[Sample],
    images: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    tile_size: list[int],
    test_right_fraction: float | None,
    new_mapping: Callable[[], MutableMapping] = dict,
) -> tuple[list, MutableMapping, MutableMapping]:
    """Cut every image (C+spatial) and its target (spatial, or C+spatial) into non-overlapping tiles.

    Args:
        tile_size: [Y, X] or [Z, Y, X]; on volumes a two-value size tiles Y and X and keeps all of Z.
            Tiles start at the origin; a remainder narrower than a tile is dropped (logged).
        test_right_fraction: tiles lying wholly in this rightmost share of an image's width form the
            test set, a spatial split that keeps test pixels out of training (None: `split` decides).
        new_mapping: makes the mappings the tiles go to (dict by default).
    Returns:
        (tile samples, tile images, tile targets); ids ``<id>_y<Y0>_x<X0>`` (``_z<Z0>`` first in 3D),
        `region` the slices, `group` the source image.
    """
    out_samples, out_images, out_targets = [], new_mapping(), new_mapping()
    for sample in samples:
        image = images[sample.id]
        target = targets.get(sample.id)  # read once: the mappings may be on disk
        spatial = image.shape[1:]
        size = list(tile_size)
        if len(size) < len(spatial):
            size = list(spatial[: len(spatial) - len(size)]) + size
        if len(size) != len(spatial) or any(t > s for t, s in zip(size, spatial, strict=True)):
            raise InputError(
                f"{sample.image}: layout.tile_size {tile_size} does not fit the image's spatial shape "
                f"{tuple(spatial)}. Give one size per spatial axis, each at most the image's."
            )
        counts = [s // t for s, t in zip(spatial, size, strict=True)]
        dropped = [s - c * t for s, c, t in zip(spatial, counts, size, strict=True)]
        if any(dropped):
            log.info("%s: tiles of %s leave %s pixel(s) per axis unused", sample.id, size, dropped)
        names = "zyx"[-len(spatial) :]
        width = counts[-1] * size[-1]  # the tiled width; a dropped remainder does not count
        for corner in np.ndindex(*counts):
            starts = [c * t for c, t in zip(corner, size, strict=True)]
            slices = tuple(slice(a, a + t) for a, t in zip(starts, size, strict=True))
            tiled = [f"{n}{a}" for n, a, c in zip(names, starts, counts, strict=True) if c > 1 or n != "z"]
            tile_id = f"{sample.id}_{'_'.join(tiled)}"
            subset = sample.subset
            if test_right_fraction and starts[-1] >= width * (1 - test_right_fraction) - 1e-9:
                subset = "test"
            region = ",".join(f"{n}{a}:{a + t}" for n, a, t in zip(names, starts, size, strict=True))
            out_samples.append(
                Sample(
                    tile_id,
                    sample.image,
                    target=sample.target,
                    label=sample.label,
                    subset=subset,
                    group=sample.group or sample.id,
                    region=region,
                )
            )
            out_images[tile_id] = np.ascontiguousarray(image[(slice(None), *slices)])
            if target is not None:
                out_targets[tile_id] = np.ascontiguousarray(target[(..., *slices)])
    if test_right_fraction and not any(s.subset == "test" for s in out_samples):
        raise InputError(
            f"layout.test_right_fraction {test_right_fraction}: no tile lies wholly in that share of "
            "the width. Raise it or use smaller tiles."
        )
    log.info(
        "tiled %d image(s) into %d tiles of %s (%d test)",
        len(samples),
        len(out_samples),
        list(tile_size),
        sum(s.subset == "test" for s in out_samples),
    )
    return out_samples, out_images, out_targets
