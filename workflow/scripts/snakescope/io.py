"""Reading the user's images and writing our outputs safely.

Images are files (TIFF, PNG, JPEG, BMP) or OME-Zarr folders (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3), whose
full-resolution level is read through their multiscales metadata. Every reader raises `InputError`
naming the file and what to do, so a bad file is reported before any training time is spent. Every
writer writes to a temporary sibling and renames it into place, so a killed job never leaves a
half-written output behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
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
    """Read one image file (or OME-Zarr image folder) as it is stored, without scaling.

    TIFF (multi-page and OME-TIFF included) is read with tifffile; PNG, JPEG and BMP with Pillow; an
    OME-Zarr image (or label image, e.g. ``cells.zarr/labels/nuclei``) as `read_ome_zarr` describes.

    Returns:
        The pixel array in the file's own axes: YX (grayscale), YXC (RGB/RGBA, C last, as Pillow and
        most TIFF writers store colour), or ZYX / CYX / ZCYX for stacks (CZYX for OME-Zarr). dtype as
        stored (uint8, uint16, float32, ...).

    Raises:
        InputError: the file is missing, unreadable, empty, truncated or not an image.
    """
    path = Path(path)
    if path.is_dir():
        if is_zarr_group(path):
            return read_ome_zarr(path)
        raise InputError(
            f"{path}: is a folder, not an image file (nor a Zarr group: no .zattrs, .zgroup or zarr.json in "
            "it). Point the config at image files."
        )
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
    """SHA-256 of a file's bytes, hex; for a Zarr folder, of its files' names and checksums (`zarr_files`)."""
    if Path(path).is_dir():
        folder = Path(path)
        names_and_digests = "".join(
            f"{p.relative_to(folder)}\0{file_checksum(p)}\n" for p in zarr_files(folder)
        )
        return hashlib.sha256(names_and_digests.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# -- OME-Zarr -----------------------------------------------------------------------------------------


def is_zarr_group(path: str | Path) -> bool:
    """Whether `path` is a folder holding Zarr group metadata (.zgroup/.zattrs for v2, zarr.json for v3)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in (".zgroup", ".zattrs", "zarr.json"))


def zarr_files(folder: str | Path) -> list[Path]:
    """The files (metadata and chunks) of an OME-Zarr image, sorted; an image's ``labels/`` group is left
    out, since its label images are ground truth of their own (`Sample.target`)."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] != "labels")


def _ome_metadata(group) -> dict:
    attributes = group.attrs.asdict()
    return attributes.get("ome", attributes)  # NGFF 0.5 nests its metadata under "ome"; 0.4 does not


def _open_zarr_group(path: Path):
    import zarr

    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as error:  # zarr raises many types for a damaged store
        raise InputError(
            f"{path}: cannot be opened as a Zarr group ({type(error).__name__}: {error}). Check that the "
            "folder was copied completely (its .zattrs/.zgroup or zarr.json files included)."
        ) from error


def _axis_letters(path: Path, axes: list) -> str:
    """NGFF axes as letters, e.g. 'TCZYX'. Spatial axes are named by position: the last two are Y and X."""
    letters = []
    for axis in axes:
        name = str(axis.get("name", "") if isinstance(axis, dict) else axis).lower()
        kind = axis.get("type", "") if isinstance(axis, dict) else ""
        if kind == "time" or (not kind and name == "t"):
            letters.append("T")
        elif kind == "channel" or (not kind and name == "c"):
            letters.append("C")
        elif kind == "space" or (not kind and name in ("z", "y", "x")):
            letters.append("S")
        else:
            raise InputError(
                f"{path}: axis '{name}' (type '{kind}') is neither time, channel nor space. snakescope reads "
                "images with axes among t, c, z, y, x; write the image with those axes."
            )
    spatial = letters.count("S")
    if spatial not in (2, 3):
        raise InputError(
            f"{path}: {spatial} spatial axes in the multiscales metadata; an image needs 2 (YX) or 3 (ZYX)."
        )
    named = iter("ZYX"[3 - spatial :])
    return "".join(next(named) if letter == "S" else letter for letter in letters)


def ome_zarr_level0(path: Path):
    """The full-resolution array of an OME-Zarr image (a zarr Array, not yet read) and its axes as stored."""
    group = _open_zarr_group(path)
    multiscales = _ome_metadata(group).get("multiscales")
    if not multiscales:
        raise InputError(
            f"{path}: a Zarr group without OME-NGFF 'multiscales' metadata, so not an OME-Zarr image. Write "
            "it as OME-Zarr (e.g. bioformats2raw, or napari's ome-zarr writer) or save the image as TIFF."
        )
    try:
        level0 = multiscales[0]["datasets"][0]["path"]
        array = group[level0]
    except (KeyError, IndexError, TypeError) as error:
        raise InputError(
            f"{path}: multiscales[0].datasets[0].path does not name an array of the group ({error!r}). "
            "The OME-Zarr metadata is damaged: write the image again."
        ) from error
    # NGFF 0.1/0.2 had no `axes`: every image was 5D TCZYX.
    axes = multiscales[0].get("axes") or (list("tczyx") if array.ndim == 5 else [])
    letters = _axis_letters(path, axes)
    if len(letters) != array.ndim:
        raise InputError(
            f"{path}: the metadata names {len(letters)} axes ({letters}) but level 0 ({level0}) has "
            f"{array.ndim} (shape {array.shape}). The OME-Zarr metadata is damaged: write the image again."
        )
    return array, letters


def _kept_axes(path: Path, shape: tuple[int, ...], letters: str) -> list[int]:
    """Indices of the axes `read_ome_zarr` keeps, in its output order (C, Z, Y, X)."""
    if "T" in letters and shape[letters.index("T")] > 1:
        raise InputError(
            f"{path}: a time series of {shape[letters.index('T')]} time points (axes {letters}, shape {shape}). "
            "snakescope reads one time point per image: write each time point as its own OME-Zarr image."
        )
    kept = [i for i, letter in enumerate(letters) if letter in "YX" or (letter in "CZ" and shape[i] > 1)]
    return sorted(kept, key=lambda i: "CZYX".index(letters[i]))


def ome_zarr_axes(path: str | Path) -> str:
    """Axes of the array `read_image` returns for an OME-Zarr image ('YX', 'CYX', 'ZYX', 'CZYX'); '' when
    `path` is not a Zarr group. Reads metadata only."""
    path = Path(path)
    if not is_zarr_group(path):
        return ""
    array, letters = ome_zarr_level0(path)
    return "".join(letters[i] for i in _kept_axes(path, array.shape, letters))


def read_ome_zarr(path: str | Path) -> np.ndarray:
    """Read the full-resolution level of an OME-Zarr image or label image (NGFF 0.4 or 0.5).

    The level is `multiscales[0].datasets[0].path`; its `axes` metadata orders the result. Singleton t, c
    and z axes are dropped, as tifffile drops them from a TIFF; a time series is an error.

    Returns:
        The pixels as stored (dtype unchanged, no scaling) in the axes YX, CYX, ZYX or CZYX (C first).

    Raises:
        InputError: no multiscales metadata, damaged metadata or chunks, several time points, axes other
        than t, c, z, y, x.
    """
    path = Path(path)
    array, letters = ome_zarr_level0(path)
    kept = _kept_axes(path, array.shape, letters)
    try:
        pixels = np.asarray(array[...])
    except Exception as error:  # a missing chunk reads as fill value; a damaged one raises
        raise InputError(
            f"{path}: the pixels of level 0 cannot be read ({type(error).__name__}: {error}). A chunk file is "
            "probably damaged: copy the OME-Zarr again from its source."
        ) from error
    dropped = tuple(i for i in range(pixels.ndim) if i not in kept)
    pixels = np.squeeze(pixels, axis=dropped) if dropped else pixels
    remaining = [i for i in range(array.ndim) if i in kept]  # kept axes in stored order
    pixels = np.transpose(pixels, [remaining.index(i) for i in kept])
    if pixels.size == 0:
        raise InputError(f"{path}: the image has no pixels (shape {array.shape}). Re-export or remove it.")
    return pixels


def ome_zarr_label_names(path: str | Path) -> list[str]:
    """Names of the label images of an OME-Zarr image (``<image>/labels/<name>``), as its ``labels/``
    group lists them; [] when it has none."""
    labels = Path(path) / "labels"
    if not is_zarr_group(labels):
        return []
    names = _ome_metadata(_open_zarr_group(labels)).get("labels")
    if names is None:  # the list is required by NGFF, but some writers omit it: the label groups on disk
        return sorted(p.name for p in labels.iterdir() if is_zarr_group(p))
    return [str(name) for name in names]


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
            os.chmod(tmp_path, 0o666 & ~UMASK)
        os.replace(tmp_path, final_path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(final_path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside `final_path`; rename it onto `final_path` (replacing any folder there)
    only if the block succeeds, else remove it."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes it private; results/ may be shared by a group
        if final_path.exists():
            shutil.rmtree(final_path)
        os.replace(tmp, final_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_umask() -> int:
    mask = os.umask(0o022)  # os.umask can only be read by setting it; done once, at import
    os.umask(mask)
    return mask


UMASK = _read_umask()


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
