"""tiled: images too large for memory (whole-slide images, large volumes), predicted block by block.

`apply` sends here an image whose whole-image prediction would not fit the memory the job may use
(`fits_whole`). The image is read lazily (snakescope.lazy_images.LazyImage: a TIFF or an OME-Zarr
image; PNG and JPEG cannot be read in parts and are predicted whole), in
blocks of about `BLOCK_SIDE` pixels with a margin of at least a training patch on every side. Each block
goes through the sliding window `predict` uses, placed as on the whole image; its margin is cut off, so
each output pixel is the whole image's (`predict_blocks`), and the result is written chunk by chunk to
an OME-Zarr image (which napari opens). Memory is a block's, whatever the size of the image.

Per-image normalisation (percentile, minmax, zscore) takes its statistics from an evenly strided sample
of at most `SAMPLED_VALUES` pixels per channel, read block by block before predicting. Two-class masks
are thresholded with Otsu's method on a histogram of the foreground probability (`HISTOGRAM_BINS` bins
over 0..1) gathered while predicting, then written in a second pass over the stored probabilities.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from snakescope.engine.inference import window_step
from snakescope.engine.transforms import normalisation_statistics, normalise
from snakescope.io import atomic_path
from snakescope.lazy_images import BLOCK_SIDE, LazyImage, blocks
from snakescope.logs import PROGRESS
from snakescope.resources import usable_memory_bytes
from snakescope.store import CHUNK_SIDE, create_image, zarr_group_atomically
from snakescope.uncertainty_measures import normalised_entropy

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 1024
# An image predicted whole is most of what an apply job holds (the rest: about 1.1 GiB of Python, PyTorch
# and MONAI), so it may take half of the job's memory, not the quarter a dataset may (MEMORY_SHARE).
WHOLE_IMAGE_SHARE = 0.5


def fits_whole(shape: tuple[int, ...], out_channels: int, mc_samples: int = 1, rows_per_pass: int = 1,
               memory_budget: int | None = None) -> bool:
    """Whether a C+spatial image can be predicted whole, with its MC-dropout samples, within
    WHOLE_IMAGE_SHARE of the memory this process may use (or `memory_budget` bytes). Per pixel, in
    float32: the image; the network's outputs with the sliding window's blending buffers and the
    probabilities (three output maps); the samples kept (`mc_samples` output maps); and a sampling pass
    over `rows_per_pass` copies of the image with their outputs and buffers. (A 4,096² RGB image with three classes, 20 samples and
    16 rows a pass: 864 bytes a pixel, 14.5 GB; measured 14.3 GiB peak.)"""
    budget = WHOLE_IMAGE_SHARE * usable_memory_bytes() if memory_budget is None else memory_budget
    channels, classes = shape[0], out_channels
    per_pixel = channels + 3 * classes + mc_samples * classes + rows_per_pass * (channels + 2 * classes)
    return math.prod(shape[1:]) * per_pixel * 4 <= budget


def block_side(target: int, step: int, chunk: int) -> int:
    """A block side near `target` that is a multiple of the window `step` (so that a block's windows are
    the whole image's) and, where that stays near `target`, of the output `chunk` (whole-chunk writes)."""
    aligned = math.lcm(step, chunk)
    return aligned * (target // aligned) if aligned <= target else step * max(1, target // step)


def predict_blocks(image: LazyImage, plan: dict, outputs_of: Callable[[np.ndarray], np.ndarray],
                   label: str) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """(output region, outputs) for every block of `image`: `outputs_of` (a normalised C+spatial block to
    K+spatial outputs) on the block with its margin, the margin cut off. Logs progress as "<label> i/n".

    Blocks and margins are multiples of the sliding window's step and the margin is at least a patch, so
    the windows that cover a block's inner pixels are the windows that cover them in the whole image:
    block by block gives the whole image's outputs (up to rounding), even for networks that normalise
    each window by its own statistics (instance norm)."""
    statistics = None
    if plan["normalisation"] in ("percentile", "minmax", "zscore"):
        statistics = normalisation_statistics(image.sample(), plan)
    steps = window_step(plan["patch_size"])
    margin = [math.ceil(p / step) * step for p, step in zip(plan["patch_size"], steps, strict=True)]
    side = [block_side(BLOCK_SIDE[image.spatial_dims], step, CHUNK_SIDE[image.spatial_dims]) for step in steps]
    tiles = blocks(image.spatial_shape, side, margin)
    for done, block in enumerate(tiles, start=1):
        outputs = outputs_of(normalise(image.read(block.read), plan, statistics))
        yield block.write, outputs[(slice(None), *block.inner)]
        if done % 10 == 0 or done == len(tiles):
            log.info("%s: %d/%d blocks", label, done, len(tiles), extra=PROGRESS)


def predict_large_segmentation(image: LazyImage, plan: dict, classes: int,
                               probabilities_of: Callable[[np.ndarray], np.ndarray], sample_id: str,
                               threshold: str | float, predictions_dir: Path,
                               uncertainty_dir: Path) -> tuple[dict, dict]:
    """Class probabilities, mask and one-pass entropy of a large image, block by block.

    Writes ``<id>.ome.zarr`` (the foreground probability, or every class's for more than two, with the
    class mask as its label image ``labels/mask``), the mask again as a tiled BigTIFF ``<id>_mask.tif``
    (the name a whole image's mask has; Fiji and QuPath open it), and ``<id>_uncertainty.ome.zarr``
    (the normalised entropy of the probabilities: one pass, no MC dropout); returns the predictions.csv
    row and the uncertainty.csv row (mean entropy)."""
    from skimage.filters import threshold_otsu

    d = image.spatial_dims
    shape = image.spatial_shape
    histogram = np.zeros(HISTOGRAM_BINS, np.int64)
    entropy_sum = 0.0
    name = f"{sample_id}.ome.zarr"
    with zarr_group_atomically(predictions_dir / name) as root, \
            zarr_group_atomically(uncertainty_dir / f"{sample_id}_uncertainty.ome.zarr") as uncertainty_root:
        probability = create_image(root, "", shape if classes == 2 else (classes, *shape), np.float32, d)
        labels = root.create_group("labels")
        labels.attrs["ome"] = {"version": "0.5", "labels": ["mask"]}
        mask = create_image(labels, "mask", shape, np.uint8, d, label=True)
        entropy = create_image(uncertainty_root, "", shape, np.float32, d)
        for region, probabilities in predict_blocks(image, plan, probabilities_of, f"{sample_id}: predicted"):
            block_entropy = normalised_entropy(probabilities, axis=0).astype(np.float32)
            entropy[region] = block_entropy
            entropy_sum += float(block_entropy.sum(dtype=np.float64))
            if classes == 2:
                probability[region] = probabilities[1]
                histogram += np.histogram(probabilities[1], bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]
            else:
                probability[(slice(None), *region)] = probabilities
                mask[region] = probabilities.argmax(0).astype(np.uint8)
        cut = float("nan")
        if classes == 2:
            # Otsu's cut is a bin's upper edge: the whole bin is background, as the pixels at the cut are
            # for `otsu_threshold` (mask = probability > cut).
            upper_edges = np.arange(1, HISTOGRAM_BINS + 1) / HISTOGRAM_BINS
            if threshold != "otsu":
                cut = float(threshold)
            else:  # as `otsu_threshold`: 0.5 for a constant map
                cut = float(threshold_otsu(hist=(histogram, upper_edges))) if np.count_nonzero(histogram) > 1 else 0.5
            for block in blocks(shape, [BLOCK_SIDE[d]] * d, 0):
                mask[block.write] = (np.asarray(probability[block.write]) > cut).astype(np.uint8)
        write_tiled_tiff(mask, predictions_dir / f"{sample_id}_mask.tif")
    prediction_row = {"id": sample_id, "prob": name, "mask": f"{sample_id}_mask.tif", "threshold": cut}
    uncertainty_row = {"id": sample_id, "uncertainty": entropy_sum / math.prod(shape),
                       "map": f"{sample_id}_uncertainty.ome.zarr"}
    return prediction_row, uncertainty_row


def write_tiled_tiff(array, path: Path) -> None:
    """A (Z)YX array (e.g. a Zarr array) as a tiled, compressed BigTIFF, one tile in memory at a time,
    written beside `path` and renamed onto it."""
    import tifffile

    side = CHUNK_SIDE[2]
    *planes, height, width = array.shape
    tiles = (np.asarray(array[(*plane, slice(y, y + side), slice(x, x + side))])
             for plane in itertools.product(*(range(n) for n in planes))
             for y in range(0, height, side) for x in range(0, width, side))
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, tiles, shape=tuple(array.shape), dtype=array.dtype, tile=(side, side), bigtiff=True,
                         compression="zlib", metadata={"axes": "YX" if not planes else "ZYX"})


def predict_large_regression(image: LazyImage, plan: dict, channels: int,
                             values_of: Callable[[np.ndarray], np.ndarray], sample_id: str,
                             predictions_dir: Path) -> dict:
    """The predicted target of a large image, block by block, as ``<id>.ome.zarr`` (C+spatial float32,
    target units); returns its predictions.csv row."""
    d = image.spatial_dims
    name = f"{sample_id}.ome.zarr"
    shape = image.spatial_shape if channels == 1 else (channels, *image.spatial_shape)
    with zarr_group_atomically(predictions_dir / name) as root:
        prediction = create_image(root, "", shape, np.float32, d)
        for region, values in predict_blocks(image, plan, values_of, f"{sample_id}: predicted"):
            prediction[region if channels == 1 else (slice(None), *region)] = values[0] if channels == 1 else values
    return {"id": sample_id, "prediction": name}
