"""Reading the user's images and writing our outputs safely.

Every reader raises `InputError` naming the file and what to do, so a bad file is reported before any
training time is spent. Every writer writes to a temporary sibling and renames it into place, so a
killed job never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


class UserError(ValueError):
    """A mistake in what the user gave (data or configuration), not in snakescope: its message, which names
    the file or key and the fix, is all the user is shown (snakescope.logs)."""


class InputError(UserError):
    """The user's data cannot be used as given; the message names the file and the fix."""


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as it is stored, without scaling.

    TIFF (multi-page and OME-TIFF included) is read with tifffile; PNG, JPEG and BMP with Pillow.

    Returns:
        The pixel array in the file's own axes: YX (grayscale), YXC (RGB/RGBA, C last, as Pillow and
        most TIFF writers store colour), or ZYX / CYX / ZCYX for stacks. dtype as stored (uint8,
        uint16, float32, ...).

    Raises:
        InputError: the file is missing, unreadable, empty, truncated or not an image.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file. Point the config at image files.")
    if not path.is_file():
        raise InputError(
            f"{path}: file not found. Check the path in your config (relative paths are resolved from the "
            "folder you run snakemake in) and the folder contents."
        )
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(
            f"{path}: unsupported file type '{suffix}'. Supported: {', '.join(IMAGE_SUFFIXES)}. "
            "Convert the file (e.g. with Fiji: File > Save As > Tiff) or remove it."
        )
    header = _read_header(path)
    if not header:
        raise InputError(f"{path}: the file is empty (0 bytes). Copy it again from the source, or remove it.")
    actual = _format_from_header(header)
    named_tiff = suffix in (".tif", ".tiff")
    if actual is not None and (actual == "TIFF") != named_tiff:
        raise InputError(
            f"{path}: the name ends in '{suffix}' but the content is {actual}. Rename the file to the "
            "extension of its content, or save it again in the format its name says."
        )
    try:
        if suffix in (".tif", ".tiff"):
            array = _read_tiff(path)
        else:
            from PIL import Image

            # Pillow refuses images over 179 megapixels as "decompression bombs", a guard for web servers
            # against hostile files; a whole-slide PNG of the user's own is not one.
            Image.MAX_IMAGE_PIXELS = None
            with Image.open(path) as image:
                image.load()
                array = np.asarray(image)
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


_MAGIC = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
)

# tifffile logs these (and carries on, returning fewer pages or one page) when a file is cut short.
_TIFF_CORRUPTION_LOGS = (
    "invalid page offset",
    "invalid offset to page",
    "invalid next page",
    "corrupted tag list",
    "corrupted file",
    "failed to reshape",
)


def _read_header(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(16)
    except PermissionError as error:
        raise InputError(
            f"{path}: permission denied; this user cannot read the file. Make it readable "
            f"(chmod a+r '{path}') or copy it to a folder you own."
        ) from error
    except OSError as error:
        raise InputError(
            f"{path}: cannot be opened ({type(error).__name__}: {error}). Check that the disk or network "
            "share holding it is mounted, or copy the file to a local folder."
        ) from error


def _format_from_header(header: bytes) -> str | None:
    for magic, name in _MAGIC:
        if header.startswith(magic):
            return name
    return None


class _RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_tiff(path: Path) -> np.ndarray:
    """tifffile.imread, but a file tifffile reports as cut short is an error, not a smaller array."""
    import tifffile

    tiff_logger = logging.getLogger("tifffile")
    handler = _RecordingHandler()
    tiff_logger.addHandler(handler)
    try:
        array = tifffile.imread(path)
    finally:
        tiff_logger.removeHandler(handler)
    damage = [m for m in handler.messages if any(key in m for key in _TIFF_CORRUPTION_LOGS)]
    if damage:
        raise InputError(
            f"{path}: the TIFF is truncated or corrupt (tifffile: {damage[0]}); reading it would give only "
            f"part of the image (shape {array.shape}). Copy it again from the microscope export, or remove it."
        )
    return array


def natural_key(text: str) -> list:
    """Sort key that orders "img2" before "img10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def read_samples(samples_tsv: str | Path):
    """The samples table `convert` writes (one row per sample: id, files, label, subset, ...) as a pandas
    DataFrame; ids and labels stay text ("007" is not 7)."""
    import pandas as pd

    return pd.read_csv(samples_tsv, sep="\t", dtype={"id": str, "label": str}, keep_default_na=False)


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
    If the block raises, neither the temporary file nor a new `final_path` is left behind.
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
        # mkstemp creates the file readable by its owner only; give the output the permissions any
        # other new file gets (the umask), so that a group sharing results/ can read it.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, final_path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _read_umask() -> int:
    mask = os.umask(0o022)  # os.umask can only be read by setting it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_json(data: object, path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")


def read_json(path: str | Path) -> dict:
    """Read a JSON file; a missing or malformed file is an `InputError` naming it."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError as error:
        raise InputError(
            f"{path}: file not found. Re-run the rule that writes it, or fix the path."
        ) from error
    except json.JSONDecodeError as error:
        raise InputError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}). "
            "Fix the file by hand or delete it so that the workflow writes it again."
        ) from error


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
        # Channels are measurements, not RGB colour: without this tifffile stores a 3- or 4-channel
        # array as an RGB(A) picture.
        photometric = "rgb" if axes and axes.endswith("S") else "minisblack"
        tifffile.imwrite(tmp, array, compression="zlib", metadata=metadata, photometric=photometric)


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
