"""store: the converted dataset on disk, chunked and compressed, as OME-Zarr (NGFF 0.5, Zarr v3).

``convert`` writes one store per dataset (``results/<dataset>/convert/arrays.zarr``) and every later rule
reads it. Layout, so that napari (with its OME-Zarr plugin) and Fiji open any sample with its mask:

    arrays.zarr/zarr.json                        root attributes: {"snakescope": {"ids": [...], "targets": [...]}}
    arrays.zarr/images/<n>/0                     sample n's image, C(Z)YX, the smallest lossless dtype
    arrays.zarr/images/<n>/labels/target/0       its integer ground truth (class map or instance ids)
    arrays.zarr/targets/<n>/0                    or its float ground truth (regression), (C)(Z)YX

Images keep the pixels' own type: an image whose values are whole numbers in the range of uint8,
uint16 or int16 is stored in that type (uint8 and uint16 sources come back in theirs), anything else
as float32; masks in the smallest integer type that holds their values. Chunks are at most 256² pixels
(64³ voxels in 3D) with every channel, compressed with Zstandard (Zarr's default), so a reader that
wants a patch reads a few chunks rather than the image.

`open_store` gives the arrays back exactly as ``convert`` computed them in memory (float32 images,
targets in the dtype they had), whatever their stored type, so that readers do not depend on the
storage. The store is written beside its final name and renamed onto it when complete: a killed
``convert`` leaves no half-written store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snakescope.io import InputError, atomic_directory

CHUNK_SIDE = {2: 256, 3: 64}  # per spatial axis: 256 KiB of uint8 pixels per channel either way
_IMAGE_TYPES = (np.uint8, np.uint16, np.int16)  # tried in order before float32
_ATTRIBUTES = "snakescope"


def storage_dtype(image: np.ndarray) -> np.dtype:
    """The smallest dtype that holds every value of `image` exactly: uint8, uint16 or int16 for whole
    numbers in their range, else float32 (integers as they are, for masks)."""
    if image.size == 0:
        return np.dtype(np.float32 if image.dtype.kind == "f" else np.uint8)
    low, high = image.min(), image.max()
    if image.dtype.kind in "iub":
        if low >= 0:
            return np.min_scalar_type(int(high))
        # a signed type: min_scalar_type of a positive maximum is unsigned, of its negation signed
        return np.result_type(np.min_scalar_type(int(low)), np.min_scalar_type(-int(high) - 1))
    if np.isfinite(low) and np.isfinite(high) and np.array_equal(image, np.round(image)):
        for dtype in _IMAGE_TYPES:
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return np.dtype(dtype)
    return np.dtype(np.float32)


def _chunks(shape: tuple[int, ...], spatial_dims: int) -> tuple[int, ...]:
    side = CHUNK_SIDE[spatial_dims]
    leading = len(shape) - spatial_dims
    return tuple(shape[:leading]) + tuple(min(n, side) for n in shape[leading:])


def _axes(ndim: int, spatial_dims: int) -> list[dict]:
    spatial = [{"name": n, "type": "space", "unit": "pixel"} for n in "zyx"[3 - spatial_dims :]]
    return [{"name": "c", "type": "channel"}] * (ndim - spatial_dims) + spatial


def _write_array(group, name: str, array: np.ndarray, spatial_dims: int):
    """`array` as the Zarr array `name` of `group`, chunked, in its storage dtype, with the dtype it has in
    memory recorded so that `_read_array` gives the same array back."""
    stored = group.create_array(
        name, shape=array.shape, dtype=storage_dtype(array),
        chunks=_chunks(array.shape, spatial_dims) if array.ndim else (), overwrite=True,
    )
    stored[...] = array
    stored.attrs[_ATTRIBUTES] = {"dtype": array.dtype.str}


def _read_array(stored) -> np.ndarray:
    """A Zarr array written by `_write_array`, in the dtype it had in memory."""
    return np.asarray(stored[...]).astype(stored.attrs[_ATTRIBUTES]["dtype"], copy=False)


def _write_image(group, name: str, array: np.ndarray, spatial_dims: int, label: bool = False):
    """An NGFF 0.5 single-level image `name` in `group` holding `array` (`_write_array`)."""
    image = _image_group(group, name, array.ndim, spatial_dims, label)
    _write_array(image, "0", array, spatial_dims)
    return image


def create_image(group, name: str, shape: tuple[int, ...], dtype, spatial_dims: int, label: bool = False):
    """An empty NGFF 0.5 single-level image `name` in `group` (`group` itself for ""); returns its array,
    to be written region by region (chunks of `CHUNK_SIDE`)."""
    image = _image_group(group, name, len(shape), spatial_dims, label)
    return image.create_array("0", shape=shape, dtype=dtype, chunks=_chunks(shape, spatial_dims), overwrite=True)


def _image_group(group, name: str, ndim: int, spatial_dims: int, label: bool):
    image = group.create_group(name) if name else group  # "": the group itself is the image
    metadata = {
        "version": "0.5",
        "multiscales": [
            {
                "name": name or "image",
                "axes": _axes(ndim, spatial_dims),
                "datasets": [
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * ndim}]}
                ],
            }
        ],
    }
    if label:
        metadata["image-label"] = {"version": "0.5"}
    image.attrs["ome"] = metadata
    return image


@dataclass(frozen=True)
class StoredImage:
    """An image array already written by a `StoreWriter` (its folder on disk and its shape): added to
    another store by linking its files rather than writing it again (convert's gather step)."""

    path: Path
    shape: tuple[int, ...]


class StoreWriter:
    """Adds samples one at a time to a store being written (`write_store`)."""

    def __init__(self, root):
        self.root = root
        self.ids: list[str] = []
        self.target_arrays: list[str | None] = []  # where each sample's target is, so readers need not look
        self.images = root.create_group("images")
        self.targets = root.create_group("targets")

    def add(self, sample_id: str, image: np.ndarray | StoredImage, target: np.ndarray | None = None) -> None:
        """Store `image` (C+spatial; a `StoredImage` is linked, not rewritten) and, for dense tasks, its
        `target`: integer masks as its label image, float targets under ``targets/``."""
        name = str(len(self.ids))
        spatial_dims = len(image.shape) - 1
        if isinstance(image, StoredImage):
            group = _image_group(self.images, name, len(image.shape), spatial_dims, label=False)
            _link_tree(image.path, Path(str(self.root.store.root)) / group.path / "0")
        else:
            group = _write_image(self.images, name, image, spatial_dims)
        if target is not None:
            target = np.asarray(target)
            target_dims = min(spatial_dims, target.ndim)
            if target.dtype.kind in "iub":
                labels = group.create_group("labels")
                labels.attrs["ome"] = {"version": "0.5", "labels": ["target"]}
                _write_image(labels, "target", target, target_dims, label=True)
                location = f"images/{name}/labels/target/0"
            else:
                _write_image(self.targets, name, target, target_dims)
                location = f"targets/{name}/0"
        self.ids.append(sample_id)
        self.target_arrays.append(location if target is not None else None)


def _link_tree(source: Path, destination: Path) -> None:
    """`source`'s files at `destination` as hard links (no copy, no space), copied where the two are on
    different file systems. Safe because nothing writes a store's chunks after `convert`."""

    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=link_or_copy)


@contextlib.contextmanager
def write_store(path: str | Path) -> Iterator[StoreWriter]:
    """Write a store at `path` through the yielded `StoreWriter`; it appears at `path` only when the block
    completes, replacing any store there."""
    with zarr_group_atomically(path) as root:
        writer = StoreWriter(root)
        yield writer
        root.attrs[_ATTRIBUTES] = {"ids": writer.ids, "targets": writer.target_arrays}


@contextlib.contextmanager
def zarr_group_atomically(path: str | Path):
    """A new Zarr v3 group written beside `path` and renamed onto it (replacing any there) when the block
    completes; removed if it raises."""
    import zarr

    with atomic_directory(path) as tmp:
        yield zarr.open_group(str(tmp), mode="w", zarr_format=3)


class Store:
    """A converted dataset opened for reading: ``store["image/<id>"]`` and ``store["target/<id>"]`` give
    the arrays as ``convert`` made them (images float32), read from disk on each access."""

    def __init__(self, path: str | Path):
        import zarr

        self.path = Path(path)
        try:
            self.root = zarr.open_group(str(self.path), mode="r")
            contents = self.root.attrs[_ATTRIBUTES]
            ids, targets = contents["ids"], contents["targets"]
        except Exception as error:  # zarr raises many types for a missing or damaged store
            raise InputError(
                f"{self.path}: not a complete snakescope store ({type(error).__name__}: {error}). Delete it "
                "and run the convert rule again."
            ) from error
        self.locations: dict[str, str] = {}  # "image/<id>", "target/<id>" -> the array's path in the store
        for n, (sample_id, target) in enumerate(zip(ids, targets, strict=True)):
            self.locations[f"image/{sample_id}"] = f"images/{n}/0"
            if target:
                self.locations[f"target/{sample_id}"] = target

    def _array(self, key: str):
        if key not in self.locations:
            raise KeyError(f"{key} is not in {self.path}")
        return self.root[self.locations[key]]

    def __contains__(self, key: str) -> bool:
        return key in self.locations

    def __getitem__(self, key: str) -> np.ndarray:
        return _read_array(self._array(key))

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of ``store[key]``, from the metadata alone."""
        return tuple(self._array(key).shape)

    def keys(self) -> list[str]:
        return list(self.locations)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        return None


class StoredArrays(Sequence):
    """``transform(store[key])`` for each of `keys`, read when indexed: a list of a split's arrays for
    code that goes through them one at a time, without holding them all."""

    def __init__(self, store: Store, keys: list[str], transform: Callable[[np.ndarray], np.ndarray] | None = None):
        self.store, self.keys, self.transform = store, list(keys), transform

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return StoredArrays(self.store, self.keys[index], self.transform)
        array = self.store[self.keys[index]]
        return self.transform(array) if self.transform else array


def open_store(path: str | Path) -> Store:
    """Open the store `convert` wrote at `path` for reading (usable in a ``with`` block, like np.load)."""
    return Store(path)


class SpilledArrays(MutableMapping):
    """A dict of arrays that keeps them in memory up to `memory_budget` bytes and on disk beyond (a scratch
    Zarr group: compressed, in the smallest lossless dtype, given back in their own).

    ``convert`` reads and checks the whole dataset before it writes anything; through this mapping a
    dataset larger than memory is held with one image at a time in memory, while a small one stays as
    fast as a dict. Each access to a spilled array reads it from disk.
    """

    def __init__(self, folder: str | Path, memory_budget: int = 0):
        self.folder, self.memory_budget = Path(folder), memory_budget
        self.entries: dict[str, np.ndarray | str] = {}  # an array in memory, or its name on disk
        self.held = 0  # bytes in memory
        self._names_used = 0
        self._root = None

    def __setitem__(self, key: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        previous = self.entries.get(key)
        freed = previous.nbytes if isinstance(previous, np.ndarray) else 0
        if self.held - freed + array.nbytes <= self.memory_budget:
            if isinstance(previous, str):
                del self._group()[previous]
            self.entries[key] = array  # a replaced key keeps its place, as in a dict
            self.held += array.nbytes - freed
            return
        self.held -= freed
        if isinstance(previous, str):
            name = previous
        else:
            self._names_used += 1
            name = str(self._names_used)
        _write_array(self._group(), name, array, spatial_dims=min(array.ndim, 3 if array.ndim == 4 else 2))
        self.entries[key] = name

    def __getitem__(self, key: str) -> np.ndarray:
        entry = self.entries[key]
        if isinstance(entry, np.ndarray):
            return entry
        return _read_array(self._group()[entry])

    def __delitem__(self, key: str) -> None:
        entry = self.entries.pop(key)
        if isinstance(entry, np.ndarray):
            self.held -= entry.nbytes
        else:
            del self._group()[entry]

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def in_memory(self) -> list[str]:
        """The keys whose arrays are held in memory."""
        return [key for key, entry in self.entries.items() if isinstance(entry, np.ndarray)]

    def _group(self):
        if self._root is None:
            import zarr

            self._root = zarr.open_group(str(self.folder), mode="w", zarr_format=3)
        return self._root
