"""samples: one image and its ground truth as found on disk, and what every layout shares.

A `Sample` names files; nothing is read here. The layouts (snakescope.convert.discover,
snakescope.convert.fields) find them, snakescope.convert.read reads them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from snakescope.io import IMAGE_SUFFIXES, InputError

MULTI_FILE_SEPARATOR = ";"  # Sample.image of a field stored as several files: the paths in channel order


@dataclass
class Sample:
    """One image and its ground truth, as found on disk."""

    id: str
    image: str
    target: str = ""
    label: str = ""
    subset: str = ""  # "train" / "test" when the user split the data; "" when `split` decides
    group: str = ""
    region: str = ""  # the tile's slices of the source image, e.g. "y0:256,x512:768"; "" = whole


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder` (hidden files left out), sorted; [] when it is no folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return existing_files(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def glob_files(data_dir: Path, pattern: str, key: str) -> list[Path]:
    try:
        found = [p for p in data_dir.glob(pattern) if not p.name.startswith(".")]
    except (ValueError, NotImplementedError) as error:
        raise InputError(
            f"layout.{key} '{pattern}': not a usable glob ({error}). Give a pattern relative to data_dir "
            f"({data_dir}), e.g. 'images/*.tif'."
        ) from error
    return existing_files(found)


def existing_files(paths) -> list[Path]:
    """The files among `paths`, sorted; a broken symbolic link among them is an error, not a file to skip.

    Raises:
        InputError naming every broken link and where it points.
    """
    paths = list(paths)
    broken = sorted(p for p in paths if p.is_symlink() and not p.exists())
    if broken:
        shown = "\n  - ".join(f"{p} -> {os.readlink(p)}" for p in broken[:20])
        raise InputError(
            f"{len(broken)} broken symbolic link(s) among the input files (the files they point to do not "
            f"exist):\n  - {shown}\nRestore the files they point to (a moved or unmounted folder?) or remove "
            "the links."
        )
    return sorted(p for p in paths if p.is_file())


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "field"


def mark_test_images(samples: list[Sample], data_dir: Path, layout: dict) -> list[Sample]:
    """Put every sample with a file matching `layout.test_images` in the test set (subset "test")."""
    pattern = layout.get("test_images")
    if not pattern:
        return samples
    chosen = {str(p) for p in glob_files(Path(data_dir), pattern, "test_images")}
    hits = 0
    for sample in samples:
        if any(path in chosen for path in sample.image.split(MULTI_FILE_SEPARATOR)):
            sample.subset = "test"
            hits += 1
    if not hits:
        raise InputError(
            f"{data_dir}: layout.test_images '{pattern}' matches none of the images. Check the glob."
        )
    if hits == len(samples):
        raise InputError(
            f"{data_dir}: layout.test_images '{pattern}' matches every image; nothing is left to train."
        )
    return samples
