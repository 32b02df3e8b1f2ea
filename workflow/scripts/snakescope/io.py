"""Reading the user's images and writing our outputs safely.

Every reader raises `InputError` naming the file and what to do, so a bad file is reported before any
training time is spent. Every writer writes to a temporary sibling and renames it into place, so a
killed job never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


class InputError(ValueError):
    """The user's data cannot be used as given; the message names the file and the fix."""


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as it is stored, without scaling.

    TIFF (multi-page and OME-TIFF included) is read with tifffile; PNG, JPEG and BMP with Pillow.

    Returns:
        The pixel array in the file's own axes: YX (grayscale), YXC (RGB/RGBA, C last, as Pillow and
        most TIFF writers store colour), or ZYX / CYX / ZCYX for stacks. dtype as stored (uint8,
        uint16, float32, ...).

    Raises:
        InputError: the file is missing, empty, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found. Check the path in your config and the folder contents.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes). Re-export or remove it.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        elif suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(path) as image:
                image.load()
                array = np.asarray(image)
        else:
            raise InputError(
                f"{path}: unsupported file type '{suffix}'. Supported: {', '.join(IMAGE_SUFFIXES)}."
            )
    except InputError:
        raise
    except Exception as error:  # tifffile and Pillow raise many types for broken files
        raise InputError(
            f"{path}: cannot be read as an image ({type(error).__name__}: {error}). The file is probably "
            "truncated or corrupt: copy it again from the microscope export, or remove it from the folder."
        ) from error
    if array.size == 0:
        raise InputError(f"{path}: the image has no pixels (shape {array.shape}). Re-export or remove it.")
    return array


def file_checksum(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final_path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; rename it onto `final_path` only if the block succeeds.

    The temporary name keeps the final suffix so that libraries choosing a format by suffix still work.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final_path.stem}.", suffix=f".tmp{final_path.suffix}", dir=final_path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        os.replace(tmp_path, final_path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(data: object, path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")


def read_json(path: str | Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_tiff(array: np.ndarray, path: str | Path, axes: str | None = None) -> None:
    """Write `array` as a (compressed) TIFF atomically; `axes` (e.g. "YX", "CYX") goes into the metadata."""
    import tifffile

    with atomic_path(path) as tmp:
        metadata = {"axes": axes} if axes else None
        tifffile.imwrite(tmp, array, compression="zlib", metadata=metadata)


def write_table(frame, path: str | Path) -> None:
    """Write a pandas DataFrame as TSV (or CSV when the suffix is .csv), atomically."""
    sep = "," if str(path).endswith(".csv") else "\t"
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep=sep, index=False)


def save_figure(figure, path: str | Path, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(figure)
