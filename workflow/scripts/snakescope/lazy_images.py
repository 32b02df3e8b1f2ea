"""lazy_images: images too large for memory (whole-slide images, large volumes), read region by region.

`LazyImage` reads a TIFF (tiled or striped, through tifffile's Zarr interface) or an OME-Zarr image one
region at a time, as float32 C+spatial arrays (or as stored, `read_stored`); PNG and JPEG cannot be read
in parts. `apply` predicts such an image block by block (snakescope.engine.tiled) and `convert` cuts
one into training tiles without holding it whole (snakescope.convert.read). `blocks` is the grid both
walk, in blocks of about `BLOCK_SIDE` pixels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snakescope.io import InputError, is_zarr_group, ome_zarr_level0
from snakescope.store import CHUNK_SIDE

BLOCK_SIDE = {2: 8 * CHUNK_SIDE[2], 3: 3 * CHUNK_SIDE[3]}  # targets; tiled.block_side aligns them to window and chunks
SAMPLED_VALUES = 10_000_000
LAZY_SUFFIXES = (".tif", ".tiff")  # and OME-Zarr folders
_CHANNEL_LETTERS = "CS"  # tifffile names RGB samples S


def reads_lazily(path: str | Path) -> bool:
    """Whether `path` can be read region by region (a TIFF or an OME-Zarr folder)."""
    return str(path).lower().endswith(LAZY_SUFFIXES) or is_zarr_group(path)


def open_lazily(path: str | Path, spatial_dims: int) -> LazyImage | None:
    """`path` opened as a `LazyImage` (to be closed by the caller), or None when it cannot be read in parts:
    not a TIFF or OME-Zarr image, or axes `LazyImage` cannot place, which the whole-image reader then
    reports with its fix."""
    if not reads_lazily(path):
        return None
    try:
        return LazyImage(path, spatial_dims)
    except InputError:
        return None


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
        unnamed = [i for i, (letter, size) in enumerate(zip(letters, self._array.shape, strict=True))
                   if letter in "QI" and size > 1]
        if spatial_dims == 3 and "Z" not in letters and len(unnamed) == 1:
            # pages without axis metadata (a volume saved as a plain multi-page TIFF): the planes, as the
            # whole-image reader takes them (snakescope.images.to_channels_first)
            letters = letters[: unnamed[0]] + "Z" + letters[unnamed[0] + 1 :]
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

    @property
    def dtype(self) -> np.dtype:
        """The pixels' type as stored."""
        return np.dtype(self._array.dtype)

    def read_stored(self, region: tuple[slice, ...]) -> np.ndarray:
        """The pixels of a spatial `region` (one slice per spatial axis), C+spatial in their stored type.

        Raises:
            InputError naming the region when its pixels cannot be read.
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
        pixels = np.transpose(pixels, self._transpose)
        return pixels if self._has_channels else pixels[None]

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """The pixels of a spatial `region` (one slice per spatial axis), float32 C+spatial.

        Raises:
            InputError naming the region when its pixels cannot be read or hold NaN or infinity.
        """
        pixels = self.read_stored(region).astype(np.float32)
        if not np.isfinite(pixels).all():
            raise InputError(
                f"{self.path}: NaN or infinite values among the pixels {_describe(region)}. Replace them (e.g. "
                "with 0; Fiji: Process > Math > Remove NaNs) or leave the image out."
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

