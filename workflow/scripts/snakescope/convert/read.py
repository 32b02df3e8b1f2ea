"""read: every sample's pixels and ground truth, read and checked, and tiles cut from them.

Images become float32 channels-first arrays (snakescope.images); ground truth is read by the task
(snakescope.tasks). A file that cannot be used adds its message to the list of problems instead of
stopping the reading, so all of them are reported at once. An image too large to read whole is cut
into its tiles region by region (`read_tiles`, snakescope.lazy_images).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
from collections import Counter
from collections.abc import MutableMapping

import numpy as np

from snakescope.convert.samples import MULTI_FILE_SEPARATOR, Sample
from snakescope.images import check_mask_shape, resize_image, to_channels_first
from snakescope.io import InputError, file_checksum, is_zarr_group, read_image
from snakescope.lazy_images import LazyImage, open_lazily, reads_lazily
from snakescope.logs import PROGRESS
from snakescope.resources import MEMORY_SHARE, usable_memory_bytes

log = logging.getLogger(__name__)

LARGE_FILE_BYTES = 64 * 2**20  # smaller image files are read whole without checking their size


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


def read_sample(sample: Sample, task, settings: dict, spatial_dims: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """A sample's float32 C+spatial image, its target as the task reads it (None when it has none) and its
    source dtype, resized when the config says so."""
    raw = read_sample_image(sample.image)
    image = to_channels_first(raw, sample.image, spatial_dims)
    target = task.read_target(sample.target, image.shape[1:], settings) if task.dense and sample.target else None
    if settings.get("resize"):
        image = resize_image(image, settings["resize"])
    return image, target, str(raw.dtype)


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
    spatial_dims = _spatial_dims(settings)
    images = {} if images is None else images
    targets = {} if targets is None else targets
    raw_dtypes: Counter = Counter()
    memory = usable_memory_bytes()

    def read_one(sample: Sample) -> None:
        _refuse_if_too_large(sample, task, spatial_dims, memory)
        image, target, raw_dtype = read_sample(sample, task, settings, spatial_dims)
        raw_dtypes[raw_dtype] += 1
        if target is not None:
            targets[sample.id] = target
        images[sample.id] = image

    errors = _read_each(samples, read_one)
    return images, targets, raw_dtypes, errors


def _read_each(samples: list[Sample], read_one) -> list[str]:
    """`read_one` on every sample, with progress every 50 images; returns the InputError messages, so
    that every file's problem is reported at once rather than the first."""
    errors: list[str] = []
    for index, sample in enumerate(samples):
        try:
            read_one(sample)
        except InputError as error:
            errors.append(str(error))
        if (index + 1) % 50 == 0:
            log.info("read %d/%d images", index + 1, len(samples), extra=PROGRESS)
    return errors


def _refuse_if_too_large(sample: Sample, task, spatial_dims: int, memory: int) -> None:
    """Raises InputError, with the fix, for an image that cannot be read whole in `memory` bytes (a
    whole-slide image given without layout.tile_size), rather than letting the job be killed. Files
    under LARGE_FILE_BYTES are not opened for it."""
    path = sample.image
    if MULTI_FILE_SEPARATOR in path or not reads_lazily(path):
        return  # PNG, JPEG: no way to read them in parts anyway
    if not is_zarr_group(path) and os.path.getsize(path) < LARGE_FILE_BYTES:
        return
    image = open_lazily(path, spatial_dims)
    if image is None:
        return
    with image:
        shape = image.shape
    needed = _whole_read_bytes(shape, bool(task.dense and sample.target))
    if needed > memory:
        tiles = "[512, 512]" if spatial_dims == 2 else "[128, 128, 128]"
        raise InputError(
            f"{path}: {'x'.join(map(str, shape[1:]))} pixels ({shape[0]} channel(s)) take about "
            f"{needed / 2**30:.1f} GiB to read whole, more than the {memory / 2**30:.1f} GiB this job may use. "
            f"Cut it into training tiles, read tile by tile: layout: {{tile_size: {tiles}}} (with "
            "test_right_fraction: 0.2 for a test set from its right side); or give the job more memory."
        )


def _whole_read_bytes(shape: tuple[int, ...], with_target: bool) -> int:
    """Bytes an image of C+spatial `shape` takes read whole: per pixel, the image as stored and as float32
    with its finite check (9 bytes a channel) and a mask as stored and as int64 (16 bytes)."""
    return math.prod(shape[1:]) * (9 * shape[0] + (16 if with_target else 0))


def read_tiles(
    samples: list[Sample], task, settings: dict, images: MutableMapping, targets: MutableMapping,
    whole_image_bytes: int | None = None,
) -> tuple[list[Sample], MutableMapping, MutableMapping, Counter, list[str]]:
    """Read every sample cut into the tiles of ``layout.tile_size`` (`tile_regions`): small images whole,
    then cut; an image too large to read whole (a whole-slide image, a large volume: more than
    `whole_image_bytes` read whole, MEMORY_SHARE of the memory this process may use by default) tile by
    tile from its TIFF or OME-Zarr file, with its ground truth, so that memory holds one tile at a time.

    Returns:
        (tile samples, {tile id: image}, {tile id: target}, Counter of source dtypes, problems), the
        mappings being `images` and `targets`.
    """
    layout = settings["layout"]
    spatial_dims = _spatial_dims(settings)
    budget = int(MEMORY_SHARE * usable_memory_bytes()) if whole_image_bytes is None else whole_image_bytes
    tiles: list[Sample] = []
    raw_dtypes: Counter = Counter()

    def read_one(sample: Sample) -> None:
        with _opened_if_large(sample, task, settings, spatial_dims, budget) as large:
            if large is None:
                image, target, raw_dtype = read_sample(sample, task, settings, spatial_dims)
                spatial_shape, cut = image.shape[1:], functools.partial(_cut_in_memory, image, target)
            else:
                raw_dtype, spatial_shape = str(large[0].dtype), large[0].spatial_shape
                cut = functools.partial(_cut_lazily, *large, task, settings)
            regions = tile_regions(sample, spatial_shape, layout["tile_size"], layout.get("test_right_fraction"))
            for done, (tile, region) in enumerate(regions, start=1):
                images[tile.id], tile_target = cut(region)
                if tile_target is not None:
                    targets[tile.id] = tile_target
                if large is not None and (done % 100 == 0 or done == len(regions)):
                    log.info("%s: read %d/%d tiles", sample.id, done, len(regions), extra=PROGRESS)
        raw_dtypes[raw_dtype] += 1
        tiles.extend(tile for tile, _ in regions)

    errors = _read_each(samples, read_one)
    right = layout.get("test_right_fraction")
    if right and not errors and not any(tile.subset == "test" for tile in tiles):
        raise InputError(
            f"layout.test_right_fraction {right}: no tile lies wholly in that share of "
            "the width. Raise it or use smaller tiles."
        )
    log.info("tiled %d image(s) into %d tiles of %s (%d test)", len(samples), len(tiles), list(layout["tile_size"]),
             sum(tile.subset == "test" for tile in tiles))
    return tiles, images, targets, raw_dtypes, errors


def _cut_in_memory(image: np.ndarray, target: np.ndarray | None, region: tuple[slice, ...]):
    """(image tile, target tile or None) of an image read whole: copies, so the whole image can go."""
    return (np.ascontiguousarray(image[(slice(None), *region)]),
            None if target is None else np.ascontiguousarray(target[(..., *region)]))


def _cut_lazily(image: LazyImage, target: LazyImage | None, task, settings: dict, region: tuple[slice, ...]):
    """(image tile, target tile or None) read from their files."""
    return image.read(region), None if target is None else task.read_target_region(target, region, settings)


def _spatial_dims(settings: dict) -> int:
    return 3 if len(settings.get("patch_size") or [0, 0]) == 3 else 2


@contextlib.contextmanager
def _opened_if_large(sample: Sample, task, settings: dict, spatial_dims: int, budget: int):
    """(image, target or None) opened lazily when the sample is too large to read whole within `budget`
    bytes (`_whole_read_bytes`) and its files can be read in parts; None otherwise (read whole)."""
    target_path = sample.target if task.dense and sample.target else None
    readable = (not settings.get("resize") and MULTI_FILE_SEPARATOR not in sample.image
                and (target_path is None or reads_lazily(target_path)))
    image = open_lazily(sample.image, spatial_dims) if readable else None
    if image is None:
        yield None
        return
    with image:
        if _whole_read_bytes(image.shape, target_path is not None) <= budget:
            yield None
            return
        log.info("%s: %s pixels, read tile by tile", sample.id, "x".join(map(str, image.spatial_shape)))
        if target_path is None:
            yield image, None
            return
        with LazyImage(target_path, spatial_dims) as target:
            check_mask_shape(target_path, target.spatial_shape, image.spatial_shape, what="ground truth")
            yield image, target


def tile_regions(
    sample: Sample, spatial_shape: tuple[int, ...], tile_size: list[int], test_right_fraction: float | None,
) -> list[tuple[Sample, tuple[slice, ...]]]:
    """The non-overlapping tiles of a sample's image of `spatial_shape`: (tile sample, spatial region).

    Args:
        tile_size: [Y, X] or [Z, Y, X]; on volumes a two-value size tiles Y and X and keeps all of Z.
            Tiles start at the origin; a remainder narrower than a tile is dropped (logged).
        test_right_fraction: tiles lying wholly in this rightmost share of the image's width form the
            test set, a spatial split that keeps test pixels out of training (None: `split` decides).
    Returns:
        tiles with ids ``<id>_y<Y0>_x<X0>`` (``_z<Z0>`` first in 3D), `region` the slices, `group` the
        source image.
    Raises:
        InputError when the tiles do not fit the image.
    """
    spatial = tuple(spatial_shape)
    size = list(tile_size)
    if len(size) < len(spatial):
        size = list(spatial[: len(spatial) - len(size)]) + size
    if len(size) != len(spatial) or any(t > s for t, s in zip(size, spatial, strict=True)):
        raise InputError(
            f"{sample.image}: layout.tile_size {tile_size} does not fit the image's spatial shape "
            f"{spatial}. Give one size per spatial axis, each at most the image's."
        )
    counts = [s // t for s, t in zip(spatial, size, strict=True)]
    dropped = [s - c * t for s, c, t in zip(spatial, counts, size, strict=True)]
    if any(dropped):
        log.info("%s: tiles of %s leave %s pixel(s) per axis unused", sample.id, size, dropped)
    names = "zyx"[-len(spatial) :]
    width = counts[-1] * size[-1]  # the tiled width; a dropped remainder does not count
    regions = []
    for corner in np.ndindex(*counts):
        starts = [c * t for c, t in zip(corner, size, strict=True)]
        slices = tuple(slice(a, a + t) for a, t in zip(starts, size, strict=True))
        tiled = [f"{n}{a}" for n, a, c in zip(names, starts, counts, strict=True) if c > 1 or n != "z"]
        subset = sample.subset
        if test_right_fraction and starts[-1] >= width * (1 - test_right_fraction) - 1e-9:
            subset = "test"
        region = ",".join(f"{n}{a}:{a + t}" for n, a, t in zip(names, starts, size, strict=True))
        tile = Sample(f"{sample.id}_{'_'.join(tiled)}", sample.image, target=sample.target, label=sample.label,
                      subset=subset, group=sample.group or sample.id, region=region)
        regions.append((tile, slices))
    return regions
