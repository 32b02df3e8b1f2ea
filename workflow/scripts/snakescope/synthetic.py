"""A built-in demo dataset: stained white-blood-cell-like crops with masks and classes.

It lets `make run` work on a fresh machine without downloads. Each image imitates a crop from a
Wright-Giemsa stained blood smear, like the white-blood-cell dataset of Zheng et al. (2018, "Fast and
robust segmentation of white blood cell images by self-supervised learning", Micron 107:55-71): one white
cell (purple nucleus inside a paler cytoplasm) in the middle, pink red-blood-cell discs with pale centres
around it, on a pale background.

The four classes differ the way the real cell types do, mostly in shape and texture rather than colour,
so that a small CNN learns them from 64x64 crops in a few CPU epochs while mean colour alone does not
suffice (per-image stain and brightness changes blur the colour differences):

- ``lymphocyte``: small cell; a large, round, dense nucleus fills most of it, leaving a thin blue rim.
- ``neutrophil``: mid-sized cell; 3 to 5 nucleus lobes joined by thin strands; pale lilac, finely
  granular cytoplasm.
- ``monocyte``: large cell; kidney- or bean-shaped, paler, lacy nucleus; grey-blue cytoplasm, sometimes
  with small vacuoles.
- ``eosinophil``: mid-sized cell; two nucleus lobes ("spectacles"); cytoplasm packed with coarse
  orange-red granules.

On disk it uses the InstantDL layout::

    out_dir/image/cell_000.tif              RGB, YXC uint8
    out_dir/groundtruth/cell_000.tif        mask, YX uint8: 0 background, 1 cytoplasm, 2 nucleus
    out_dir/groundtruth/groundtruth.csv     header "filename,label"; label is the class name

Usage: ``python -m snakescope.synthetic OUT_DIR [--n-images N] [--size S] [--seed K]``.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from scipy import ndimage

CELL_CLASSES = ("lymphocyte", "neutrophil", "monocyte", "eosinophil")

MASK_BACKGROUND, MASK_CYTOPLASM, MASK_NUCLEUS = 0, 1, 2

IMAGE_DIR = "image"
GROUNDTRUTH_DIR = "groundtruth"
LABELS_CSV = "groundtruth.csv"

# Cell radius as a fraction of the image side, per class. Real diameters: lymphocyte 7-10 um,
# neutrophil 12-15 um, eosinophil 12-17 um, monocyte 15-20 um; a red cell is about 7.5 um.
_CELL_RADIUS = {
    "lymphocyte": (0.17, 0.22),
    "neutrophil": (0.26, 0.31),
    "monocyte": (0.31, 0.37),
    "eosinophil": (0.27, 0.32),
}
_RED_CELL_RADIUS = (0.15, 0.19)

# Colours are RGB in [0, 1] before the per-image stain change; they were picked by eye from
# Wright-Giemsa smear photographs.
_BACKGROUND_RGB = (0.93, 0.90, 0.88)
_RED_CELL_RGB = (0.90, 0.66, 0.66)
_PLATELET_RGB = (0.55, 0.38, 0.62)
_CYTOPLASM_RGB = {
    "lymphocyte": (0.70, 0.74, 0.90),
    "neutrophil": (0.86, 0.75, 0.85),
    "monocyte": (0.80, 0.78, 0.88),
    "eosinophil": (0.95, 0.66, 0.55),
}
_NUCLEUS_RGB = {
    "lymphocyte": (0.30, 0.18, 0.46),
    "neutrophil": (0.38, 0.22, 0.52),
    "monocyte": (0.50, 0.38, 0.64),
    "eosinophil": (0.40, 0.24, 0.52),
}


def draw_cell(rng: np.random.Generator, size: int, cell_class: str) -> tuple[np.ndarray, np.ndarray]:
    """Draw one blood-smear crop with a single white cell of the given class near its centre.

    Size, position, rotation and outline of the cell, the stain colour and strength, brightness, blur and
    noise all vary from call to call; red cells (and sometimes a platelet) lie in the background.
    Shapes scale with `size`, so any side from about 32 pixels up gives the same kind of picture.

    Args:
        rng: the only source of randomness; the same generator state gives the same image.
        size: side of the square image in pixels.
        cell_class: one of `CELL_CLASSES`.

    Returns:
        image: YXC uint8 RGB, shape (size, size, 3), values 0-255.
        mask: YX uint8, shape (size, size): 0 background (red cells and platelets included),
            1 cytoplasm, 2 nucleus. The nucleus always lies inside the cell.

    Raises:
        ValueError: unknown `cell_class` or `size` under 16.
    """
    if cell_class not in CELL_CLASSES:
        raise ValueError(f"unknown cell class {cell_class!r}; expected one of {', '.join(CELL_CLASSES)}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")

    # A magnification change per image, so that absolute size is only a rough cue between classes.
    scale = size * rng.uniform(0.9, 1.1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    image = _draw_background(rng, size, scale, yy, xx)

    cell_radius = scale * rng.uniform(*_CELL_RADIUS[cell_class])
    centre_y, centre_x = size / 2 + rng.uniform(-0.07, 0.07, size=2) * size
    angle = rng.uniform(0, 2 * np.pi)
    # (u, v): pixel coordinates in the cell's own rotated frame, origin at the cell centre.
    u = (xx - centre_x) * np.cos(angle) + (yy - centre_y) * np.sin(angle)
    v = -(xx - centre_x) * np.sin(angle) + (yy - centre_y) * np.cos(angle)

    cell = _irregular_disc(rng, u, v, cell_radius)
    nucleus = _NUCLEUS_SHAPES[cell_class](rng, u, v, cell_radius)
    # Keep at least a one-pixel rim of cytoplasm: the nucleus sits inside the membrane.
    nucleus &= ndimage.binary_erosion(cell)

    image[cell] = _cytoplasm_colour(rng, cell_class, size, scale, u, v, cell_radius)[cell]
    image[nucleus] = _nucleus_colour(rng, cell_class, size, scale)[nucleus]

    image = _stain_and_optics(rng, image, scale)

    mask = np.zeros((size, size), dtype=np.uint8)
    mask[cell] = MASK_CYTOPLASM
    mask[nucleus] = MASK_NUCLEUS
    return image, mask


def write_demo_dataset(out_dir: str | Path, n_images: int = 120, size: int = 64, seed: int = 0) -> Path:
    """Write the demo dataset in the InstantDL layout (see the module docstring) and return `out_dir`.

    Classes are balanced: they are dealt round-robin over the images, then shuffled with `seed`. Image i
    depends only on `seed` and i, so the same arguments always give the same files.

    The folder appears atomically: everything is written into a hidden temporary sibling
    (``.<name>.tmp-<random>``) that is renamed onto `out_dir` at the end, so a killed run never leaves a
    half dataset at `out_dir` (at most a hidden temporary folder, safe to delete).

    If `out_dir` already holds a complete dataset of `n_images` images of side `size`, it is left alone
    and returned at once; `seed` is not recorded, so a complete folder written with another seed is
    kept as well. An empty `out_dir` is replaced.

    Args:
        out_dir: folder to create; its parent is created if missing.
        n_images: number of images, at least 1.
        size: side of each square image in pixels, at least 16.
        seed: seed of the random generator.

    Returns:
        `out_dir` as a Path.

    Raises:
        FileExistsError: `out_dir` exists, is not empty and is not a complete dataset of this shape; it
            is never overwritten because it may hold someone's data.
    """
    out_dir = Path(out_dir)
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if _is_complete(out_dir, n_images, size):
        return out_dir
    _refuse_foreign_folder(out_dir, n_images, size)

    labels = _balanced_labels(np.random.default_rng(seed), n_images)
    image_rngs = [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(n_images)]
    digits = max(3, len(str(n_images - 1)))
    filenames = [f"cell_{index:0{digits}d}.tif" for index in range(n_images)]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    # os.mkdir, unlike tempfile.mkdtemp (mode 0700), honours the umask, so the renamed dataset gets the
    # same permissions as any other output.
    os.mkdir(tmp_dir)
    try:
        _write_files(tmp_dir, filenames, labels, image_rngs, size)
        _move_into_place(tmp_dir, out_dir, n_images, size)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """Command line: write the demo dataset and print what was written."""
    parser = argparse.ArgumentParser(
        prog="python -m snakescope.synthetic",
        description="Write a synthetic white-blood-cell demo dataset (InstantDL layout: image/, "
        "groundtruth/ with masks and groundtruth.csv).",
    )
    parser.add_argument("out_dir", type=Path, help="folder to create; left alone if already complete")
    parser.add_argument("--n-images", type=int, default=120, help="number of images (default: 120)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)

    already_there = _is_complete(args.out_dir, args.n_images, args.size)
    out_dir = write_demo_dataset(args.out_dir, n_images=args.n_images, size=args.size, seed=args.seed)
    counts = collections.Counter(_read_labels(out_dir).values())
    per_class = ", ".join(f"{counts[name]} {name}" for name in CELL_CLASSES)
    verb = "Kept the complete dataset already in" if already_there else "Wrote"
    print(f"{verb} {out_dir}: {args.n_images} RGB images of {args.size}x{args.size} ({per_class})")
    print(
        f"  images: {out_dir / IMAGE_DIR}/, masks: {out_dir / GROUNDTRUTH_DIR}/, labels: "
        f"{out_dir / GROUNDTRUTH_DIR / LABELS_CSV}"
    )


# --- drawing -------------------------------------------------------------------------------------------


def _draw_background(
    rng: np.random.Generator, size: int, scale: float, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """Pale smear background with a few red cells and maybe a platelet; YXC float32 RGB in [0, 1]."""
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = _jitter(rng, _BACKGROUND_RGB, 0.015)

    red_cell_rgb = _jitter(rng, _RED_CELL_RGB, 0.04)
    for _ in range(rng.integers(2, 7)):
        # Centres may fall outside the crop, giving the cut-off red cells seen at crop borders.
        centre_y, centre_x = rng.uniform(-0.1, 1.1, size=2) * size
        radius = scale * rng.uniform(*_RED_CELL_RADIUS)
        squash = rng.uniform(0.85, 1.0)
        tilt = rng.uniform(0, np.pi)
        du, dv = xx - centre_x, yy - centre_y
        along = du * np.cos(tilt) + dv * np.sin(tilt)
        across = (-du * np.sin(tilt) + dv * np.cos(tilt)) / squash
        relative_distance = np.hypot(along, across) / radius
        disc = relative_distance <= 1
        # A red cell is a biconcave disc: thinner, hence paler, in the middle, darkest near the rim.
        thickness = 1 - 0.6 * np.exp(-((relative_distance / 0.5) ** 2)) + 0.1 * relative_distance
        red_cell = 1 - thickness[..., None] * (1 - red_cell_rgb)
        image[disc] = red_cell[disc]

    if rng.random() < 0.3:
        centre_y, centre_x = rng.uniform(0.05, 0.95, size=2) * size
        platelet = np.hypot(yy - centre_y, xx - centre_x) <= scale * rng.uniform(0.02, 0.035)
        image[platelet] = _PLATELET_RGB
    return image


def _irregular_disc(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Slightly elliptical disc whose edge wobbles a little, like a cell membrane; YX bool."""
    ellipticity = rng.uniform(0.85, 1.0)
    angle = np.arctan2(v, u)
    edge = np.ones_like(u)
    for harmonic in (2, 3, 4, 5):
        edge += rng.uniform(0, 0.035) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
    return np.hypot(u, v / ellipticity) <= radius * edge


def _lymphocyte_nucleus(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Large round nucleus filling most of the cell, a little off-centre, sometimes slightly notched."""
    nucleus_radius = radius * rng.uniform(0.74, 0.88)
    offset = radius * rng.uniform(0.0, 0.1)
    nucleus = _irregular_disc(rng, u - offset, v, nucleus_radius)
    if rng.random() < 0.3:
        nucleus &= np.hypot(u - offset - nucleus_radius * 1.15, v) > nucleus_radius * 0.35
    return nucleus


def _neutrophil_nucleus(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """3 to 5 lobes along an arc, each joined to the next by a thin chromatin strand."""
    n_lobes = int(rng.integers(3, 6))
    step = rng.uniform(1.05, 1.3)
    angles = (np.arange(n_lobes) - (n_lobes - 1) / 2) * step + rng.normal(0, 0.08, n_lobes)
    arc_radius = radius * rng.uniform(0.48, 0.56) * rng.uniform(0.9, 1.1, n_lobes)
    centres = np.stack([arc_radius * np.cos(angles), arc_radius * np.sin(angles)], axis=1)
    centres -= centres.mean(axis=0)  # the nucleus as a whole sits in the middle of the cell
    return _lobes_with_strands(rng, u, v, radius, centres, lobe_size=(0.17, 0.22))


def _eosinophil_nucleus(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Two lobes side by side, joined by a thin strand ("spectacles")."""
    half_gap = radius * rng.uniform(0.36, 0.44)
    bend = radius * rng.uniform(-0.15, 0.15, size=2)
    centres = np.array([[bend[0], -half_gap], [bend[1], half_gap]])
    return _lobes_with_strands(rng, u, v, radius, centres, lobe_size=(0.25, 0.31))


def _lobes_with_strands(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    radius: float,
    centres: np.ndarray,
    lobe_size: tuple[float, float],
) -> np.ndarray:
    """Union of oval lobes at `centres` (rows of (u, v)) and thin strands between consecutive ones."""
    nucleus = np.zeros(u.shape, dtype=bool)
    for lobe_u, lobe_v in centres:
        lobe_radius = radius * rng.uniform(*lobe_size)
        lobe_angle = rng.uniform(0, np.pi)
        du, dv = u - lobe_u, v - lobe_v
        along = du * np.cos(lobe_angle) + dv * np.sin(lobe_angle)
        across = -du * np.sin(lobe_angle) + dv * np.cos(lobe_angle)
        nucleus |= np.hypot(along / rng.uniform(1.0, 1.35), across) <= lobe_radius
    # Strands at least a pixel wide, so they survive rasterisation at 64x64.
    strand_half_width = max(0.6, radius * 0.04)
    for start, end in zip(centres[:-1], centres[1:], strict=True):
        nucleus |= _distance_to_segment(u, v, start, end) <= strand_half_width
    return nucleus


def _monocyte_nucleus(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Kidney or bean shape: a large off-centre ellipse with a round bite out of one long side."""
    half_length = radius * rng.uniform(0.66, 0.78)
    half_width = radius * rng.uniform(0.44, 0.54)
    shift = radius * rng.uniform(0.05, 0.15)
    nucleus = (u / half_length) ** 2 + ((v + shift) / half_width) ** 2 <= 1
    bite_radius = half_width * rng.uniform(0.55, 0.85)
    bite_centre = half_width * rng.uniform(0.75, 1.05) - shift
    nucleus &= np.hypot(u - radius * rng.uniform(-0.1, 0.1), v - bite_centre) > bite_radius
    return nucleus


_NUCLEUS_SHAPES = {
    "lymphocyte": _lymphocyte_nucleus,
    "neutrophil": _neutrophil_nucleus,
    "monocyte": _monocyte_nucleus,
    "eosinophil": _eosinophil_nucleus,
}


def _cytoplasm_colour(
    rng: np.random.Generator,
    cell_class: str,
    size: int,
    scale: float,
    u: np.ndarray,
    v: np.ndarray,
    radius: float,
) -> np.ndarray:
    """Cytoplasm colour and texture over the whole frame (the caller keeps the cell); YXC float32."""
    base = _jitter(rng, _CYTOPLASM_RGB[cell_class], 0.03)
    # Granule size follows the image scale: about one pixel at 64x64.
    granule_sigma = scale / 64 * 0.7
    if cell_class == "eosinophil":
        # Coarse, densely packed orange-red granules on a lighter ground.
        granules = _smooth_noise(rng, size, granule_sigma)
        darkness = 0.55 + 0.22 * np.tanh(1.5 * granules)
        colour = 1 - darkness[..., None] * (1 - base) / 0.5
    elif cell_class == "neutrophil":
        # Fine, faint lilac granules.
        darkness = 1 + 0.12 * _smooth_noise(rng, size, granule_sigma)
        colour = 1 - darkness[..., None] * (1 - base)
    elif cell_class == "monocyte":
        # "Ground glass" with a few small vacuoles.
        darkness = 1 + 0.08 * _smooth_noise(rng, size, granule_sigma * 1.5)
        colour = 1 - darkness[..., None] * (1 - base)
        for _ in range(rng.integers(0, 4)):
            vacuole_angle = rng.uniform(0, 2 * np.pi)
            vacuole_distance = radius * rng.uniform(0.6, 0.85)
            vacuole = np.hypot(
                u - vacuole_distance * np.cos(vacuole_angle), v - vacuole_distance * np.sin(vacuole_angle)
            ) <= scale * rng.uniform(0.02, 0.035)
            colour[vacuole] = 0.5 * colour[vacuole] + 0.5
    else:
        # Clear blue rim, paler close to the nucleus (the perinuclear halo).
        halo = np.clip(1 - np.hypot(u, v) / radius, 0, 1)
        darkness = 1.1 - 0.4 * halo
        colour = 1 - darkness[..., None] * (1 - base)
    return np.clip(colour, 0, 1).astype(np.float32)


def _nucleus_colour(rng: np.random.Generator, cell_class: str, size: int, scale: float) -> np.ndarray:
    """Nucleus colour with chromatin texture over the whole frame (the caller keeps the nucleus); YXC."""
    base = _jitter(rng, _NUCLEUS_RGB[cell_class], 0.04)
    # Lymphocytes: dense, clumped chromatin; monocytes: fine, lacy and paler; granulocytes in between.
    clump_sigma, contrast = {
        "lymphocyte": (1.4, 0.10),
        "neutrophil": (1.0, 0.10),
        "monocyte": (0.7, 0.16),
        "eosinophil": (1.0, 0.10),
    }[cell_class]
    darkness = 1 + contrast * _smooth_noise(rng, size, scale / 64 * clump_sigma)
    return np.clip(1 - darkness[..., None] * (1 - base), 0, 1).astype(np.float32)


def _stain_and_optics(rng: np.random.Generator, image: np.ndarray, scale: float) -> np.ndarray:
    """Per-image stain strength and hue, illumination, focus blur and camera noise; float RGB -> uint8.

    Stain changes act on optical density (Beer-Lambert: intensity = exp(-density)), where a stronger or
    differently balanced stain scales the density of each colour channel, as between smears.
    """
    density = -np.log(np.clip(image, 1e-3, 1))
    density *= rng.uniform(0.75, 1.25) * rng.normal(1, 0.06, size=3).clip(0.85, 1.15)
    image = np.exp(-density)
    image *= rng.uniform(0.85, 1.05) * rng.normal(1, 0.015, size=3)

    blur = rng.uniform(0.4, 1.2) * scale / 64
    image = ndimage.gaussian_filter(image, sigma=(blur, blur, 0))

    photons_at_white = rng.uniform(300, 1500)
    image = rng.poisson(np.clip(image, 0, None) * photons_at_white) / photons_at_white
    image += rng.normal(0, rng.uniform(0.003, 0.012), size=image.shape)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation; YX float32."""
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _jitter(rng: np.random.Generator, rgb: tuple[float, float, float], spread: float) -> np.ndarray:
    """`rgb` with independent normal jitter per channel, kept within [0, 1]."""
    return np.clip(np.asarray(rgb, dtype=np.float32) + rng.normal(0, spread, size=3), 0, 1).astype(np.float32)


def _distance_to_segment(u: np.ndarray, v: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance from each pixel (u, v) to the segment from `start` to `end`; YX float."""
    direction = end - start
    length_squared = max(float(direction @ direction), 1e-9)
    t = np.clip(((u - start[0]) * direction[0] + (v - start[1]) * direction[1]) / length_squared, 0, 1)
    return np.hypot(u - start[0] - t * direction[0], v - start[1] - t * direction[1])


# --- dataset on disk -----------------------------------------------------------------------------------


def _balanced_labels(rng: np.random.Generator, n_images: int) -> list[str]:
    """Class names dealt round-robin (counts differ by at most one), then shuffled."""
    labels = [CELL_CLASSES[index % len(CELL_CLASSES)] for index in range(n_images)]
    return [labels[index] for index in rng.permutation(n_images)]


def _write_files(
    folder: Path, filenames: list[str], labels: list[str], image_rngs: list[np.random.Generator], size: int
) -> None:
    import tifffile

    (folder / IMAGE_DIR).mkdir()
    (folder / GROUNDTRUTH_DIR).mkdir()
    for filename, label, rng in zip(filenames, labels, image_rngs, strict=True):
        image, mask = draw_cell(rng, size, label)
        tifffile.imwrite(folder / IMAGE_DIR / filename, image, photometric="rgb")
        tifffile.imwrite(folder / GROUNDTRUTH_DIR / filename, mask, photometric="minisblack")
    with open(folder / GROUNDTRUTH_DIR / LABELS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["filename", "label"])
        writer.writerows(zip(filenames, labels, strict=True))


def _move_into_place(tmp_dir: Path, out_dir: Path, n_images: int, size: int) -> None:
    """Rename the finished `tmp_dir` onto `out_dir`, tolerating a concurrent run that finished first."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    try:
        os.replace(tmp_dir, out_dir)
    except OSError:
        # Another process may have renamed its own copy into place meanwhile; theirs is as good as ours.
        if not _is_complete(out_dir, n_images, size):
            raise


def _read_labels(out_dir: Path) -> dict[str, str]:
    """{filename: label} from the dataset's CSV."""
    with open(out_dir / GROUNDTRUTH_DIR / LABELS_CSV, newline="") as handle:
        return {row["filename"]: row["label"] for row in csv.DictReader(handle)}


def _is_complete(out_dir: Path, n_images: int, size: int) -> bool:
    """Whether `out_dir` holds the CSV, and an image and a mask for each of its `n_images` rows, of side `size`."""
    try:
        labels = _read_labels(out_dir)
    except (OSError, KeyError, csv.Error):
        return False
    if len(labels) != n_images:
        return False
    for filename in labels:
        if not (
            (out_dir / IMAGE_DIR / filename).is_file() and (out_dir / GROUNDTRUTH_DIR / filename).is_file()
        ):
            return False
    import tifffile

    # Reading one image's shape is cheap and catches a dataset written with another --size.
    try:
        with tifffile.TiffFile(out_dir / IMAGE_DIR / next(iter(labels))) as tiff:
            return tiff.pages[0].shape[:2] == (size, size)
    except (OSError, tifffile.TiffFileError):
        return False


def _refuse_foreign_folder(out_dir: Path, n_images: int, size: int) -> None:
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise FileExistsError(
            f"{out_dir} exists but is not a complete demo dataset of {n_images} images of {size}x{size}. "
            "Delete it (or choose another folder) to write a new one; it is not overwritten because it "
            "may hold other data."
        )


if __name__ == "__main__":
    main()
