"""tiled: images too large for memory (whole-slide images, large volumes), predicted block by block.

`apply` sends here an image whose whole-image prediction would not fit the memory the job may use
(`fits_whole`). The image is read lazily (`LazyImage`: a tiled or striped TIFF through tifffile's Zarr
interface, or an OME-Zarr image; PNG and JPEG cannot be read in parts and are predicted whole), in
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snakescope.engine.inference import window_step
from snakescope.engine.transforms import normalisation_statistics, normalise
from snakescope.io import InputError, atomic_path, is_zarr_group, ome_zarr_level0
from snakescope.logs import PROGRESS
from snakescope.resources import usable_memory_bytes
from snakescope.store import CHUNK_SIDE, create_image, zarr_group_atomically
from snakescope.uncertainty_measures import normalised_entropy

log = logging.getLogger(__name__)

BLOCK_SIDE = {2: 8 * CHUNK_SIDE[2], 3: 3 * CHUNK_SIDE[3]}  # targets; `block_side` aligns them to window and chunks
SAMPLED_VALUES = 10_000_000
HISTOGRAM_BINS = 1024
# An image predicted whole is most of what an apply job holds (the rest: about 1.1 GiB of Python, PyTorch
# and MONAI), so it may take half of the job's memory, not the quarter a dataset may (MEMORY_SHARE).
WHOLE_IMAGE_SHARE = 0.5
_CHANNEL_LETTERS = "CS"  # tifffile names RGB samples S


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


LAZY_SUFFIXES = (".tif", ".tiff")  # and OME-Zarr folders


class LazyImage:
    """A C+spatial float32 view of a TIFF or OME-Zarr image, read region by region (see the module doc)."""

    def __init__(self, path: str | Path, spatial_dims: int):
        self.path = Path(path)
        self.spatial_dims = spatial_dims
        self._store = None
        self._array, letters = self._open()
        try:
            self._place_axes(letters)
        except InputError:
            self.close()
            raise

    def _place_axes(self, letters: str) -> None:
        """Which stored axes are the channels and the spatial axes; singleton others are dropped."""
        spatial_dims = self.spatial_dims
        spatial = "YX" if spatial_dims == 2 else "ZYX"
        kept = []
        for letter, size in zip(letters, self._array.shape, strict=True):
            if letter in spatial or (letter in _CHANNEL_LETTERS and size > 1):
                kept.append(letter)
            elif size > 1:
                raise InputError(
                    f"{self.path}: {size} planes along its {letter} axis (axes {letters}, shape "
                    f"{tuple(self._array.shape)}) given to a {spatial_dims}D model. Give one "
                    f"{'plane' if spatial_dims == 2 else 'volume'} per file."
                )
        missing = [axis for axis in spatial if axis not in kept]
        if missing:
            raise InputError(
                f"{self.path}: axes {letters} (shape {tuple(self._array.shape)}) lack {''.join(missing)} for a "
                f"{spatial_dims}D model; give {'YX images' if spatial_dims == 2 else 'ZYX volumes'}."
            )
        self._stored_order = kept  # kept axes in stored order
        order = sorted(kept, key=lambda letter: 0 if letter in _CHANNEL_LETTERS else 1 + spatial.index(letter))
        self._transpose = [kept.index(letter) for letter in order]
        self._has_channels = order[0] in _CHANNEL_LETTERS
        sizes = dict(zip(letters, self._array.shape, strict=True))
        self.spatial_shape = tuple(sizes[axis] for axis in spatial)
        channels = sizes[order[0]] if self._has_channels else 1
        self.shape = (channels, *self.spatial_shape)
        self._letters = letters

    def _open(self):
        """(array with numpy-style lazy indexing, its axis letters)."""
        if is_zarr_group(self.path):
            return ome_zarr_level0(self.path)
        import tifffile
        import zarr

        try:
            with tifffile.TiffFile(self.path) as tif:
                axes = tif.series[0].axes
            self._store = tifffile.imread(self.path, aszarr=True, level=0)  # holds the file open until `close`
            return zarr.open(self._store, mode="r"), axes
        except Exception as error:  # tifffile raises many types for a damaged file
            raise InputError(
                f"{self.path}: cannot be read as a TIFF ({type(error).__name__}: {error}). Copy the file again "
                "from its source, or re-save it (Fiji: File > Save As > Tiff)."
            ) from error

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> LazyImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """The pixels of a spatial `region` (one slice per spatial axis), float32 C+spatial.

        Raises:
            InputError naming the region when its pixels cannot be read or hold NaN or infinity.
        """
        spatial = dict(zip("YX" if self.spatial_dims == 2 else "ZYX", region, strict=True))
        index = tuple(spatial.get(letter, slice(None)) if letter in self._stored_order else 0
                      for letter in self._letters)
        try:
            pixels = np.asarray(self._array[index])
        except Exception as error:  # a damaged chunk or tile
            raise InputError(
                f"{self.path}: the pixels {_describe(region)} cannot be read ({type(error).__name__}: {error}). "
                "A tile or chunk is probably damaged: copy the image again from its source."
            ) from error
        pixels = np.transpose(pixels, self._transpose).astype(np.float32)
        pixels = pixels if self._has_channels else pixels[None]
        if not np.isfinite(pixels).all():
            raise InputError(
                f"{self.path}: NaN or infinite values among the pixels {_describe(region)}. Replace them (e.g. "
                "with 0; Fiji: Process > Math > Remove NaNs) before applying the model."
            )
        return pixels

    def sample(self, max_values: int = SAMPLED_VALUES) -> np.ndarray:
        """(C, N) pixels on a regular grid over the whole image, N at most about `max_values`."""
        step = max(1, math.ceil((math.prod(self.spatial_shape) / max_values) ** (1 / self.spatial_dims)))
        parts = [pixels.reshape(len(pixels), -1) for _, pixels in self._every(step)]
        return np.concatenate(parts, axis=1)

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """The image subsampled to at most `max_side` pixels a side (C+spatial), for figures."""
        step = max(1, math.ceil(max(self.spatial_shape) / max_side))
        thumbnail = np.zeros((self.shape[0], *(math.ceil(n / step) for n in self.spatial_shape)), np.float32)
        for region, pixels in self._every(step):
            at = tuple(slice(math.ceil(r.start / step), math.ceil(r.stop / step)) for r in region)
            thumbnail[(slice(None), *at)] = pixels
        return thumbnail

    def _every(self, step: int) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
        """(block region, every `step`-th pixel of it along each axis, on one grid over the whole image),
        block by block: copies, so that no block stays in memory behind a view."""
        for block in blocks(self.spatial_shape, [BLOCK_SIDE[self.spatial_dims]] * self.spatial_dims, 0):
            grid = tuple(slice((-region.start) % step, None, step) for region in block.write)
            yield block.write, self.read(block.write)[(slice(None), *grid)].copy()


def _describe(region: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{r.start}:{r.stop}" for r in region) + "]"


@dataclass(frozen=True)
class Block:
    """One block of an image: `read` the region read (margin included, clipped to the image), `inner`
    the part kept, relative to `read`, and `write` where that part goes in the output."""

    read: tuple[slice, ...]
    inner: tuple[slice, ...]
    write: tuple[slice, ...]


def blocks(shape: tuple[int, ...], side: list[int], margin: int | list[int]) -> list[Block]:
    """The blocks that tile a spatial `shape` (each output pixel in exactly one `write`), row-major."""
    margins = [margin] * len(shape) if isinstance(margin, int) else margin
    result = []
    for corner in itertools.product(*(range(0, n, s) for n, s in zip(shape, side, strict=True))):
        write = tuple(slice(c, min(c + s, n)) for c, s, n in zip(corner, side, shape, strict=True))
        read = tuple(slice(max(0, w.start - m), min(n, w.stop + m)) for w, m, n in zip(write, margins, shape, strict=True))
        inner = tuple(slice(w.start - r.start, w.stop - r.start) for w, r in zip(write, read, strict=True))
        result.append(Block(read, inner, write))
    return result


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
