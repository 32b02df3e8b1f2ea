"""convert: find the user's images and ground truth, check them, and pack them for fast training.

Layouts understood (read-only; nothing in `data_dir` is ever written):

* InstantDL: ``train/image``, ``train/groundtruth``, ``test/image``, ``test/groundtruth``, or a single
  ``image`` + ``groundtruth`` pair (then `split` makes the test set). Masks carry the image's file name;
  classification labels sit in ``groundtruth/groundtruth.csv`` with columns ``filename,label``.
* Any other layout described by the config's ``layout:`` globs and label-CSV columns.

Outputs in ``results/<dataset>/convert/``:

* ``arrays.npz``: per sample ``image/<id>`` float32 CYX (or CZYX) at native intensity, and for
  segmentation ``target/<id>`` int64 YX (ZYX) class indices.
* ``samples.tsv``: one row per sample (id, source paths, label, subset, group, shape).
* ``fingerprint.json``: counts, shapes, dtypes, channels, intensity statistics, class balance and a
  SHA-256 per input file, so a changed input is noticed and the data can be planned for.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from snakescope.io import IMAGE_SUFFIXES, InputError, atomic_path, file_checksum, read_image, write_json

log = logging.getLogger(__name__)

MAX_MASK_VALUES = 64  # more distinct values than this means a lossy (JPEG) or intensity image, not labels
MAX_ERRORS_SHOWN = 20


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


# ---------------------------------------------------------------------------------------------------
# discovery


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def _strip_image_suffix(name: str) -> str:
    """'images/001.bmp' -> '001'; 'cell.1' -> 'cell.1' (only an image extension is removed)."""
    name = Path(name).name
    return Path(name).stem if name.lower().endswith(IMAGE_SUFFIXES) else name


def _glob(data_dir: Path, pattern: str, key: str) -> list[Path]:
    try:
        found = data_dir.glob(pattern)
        return sorted(p for p in found if p.is_file() and not p.name.startswith("."))
    except (ValueError, NotImplementedError) as error:
        raise InputError(
            f"layout.{key} '{pattern}': not a usable glob ({error}). Give a pattern relative to data_dir "
            f"({data_dir}), e.g. 'images/*.tif'."
        ) from error


def _open_csv(csv_path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a label CSV; the separator (',', ';' or tab) is detected."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except UnicodeDecodeError as error:
        raise InputError(
            f"{csv_path}: not UTF-8 text ({error.reason} at byte {error.start}). Save it as 'CSV UTF-8' "
            "(Excel: File > Save As > CSV UTF-8)."
        ) from error
    except OSError as error:
        raise InputError(
            f"{csv_path}: cannot be read ({type(error).__name__}: {error}). Check its permissions."
        ) from error
    first_line = text.splitlines()[0] if text.strip() else ""
    delimiter = max(",;\t", key=first_line.count) if first_line else ","
    rows = [
        row for row in csv.reader(text.splitlines(), delimiter=delimiter) if any(cell.strip() for cell in row)
    ]
    if not rows:
        raise InputError(f"{csv_path}: the label file is empty. Add a header line and one row per image.")
    return [cell.strip() for cell in rows[0]], rows[1:]


def _read_labels_csv(
    csv_path: Path, filename_column: str, label_column: str, filename_format: str, group_column: str | None
) -> dict[str, tuple[str, str]]:
    """Map image stem -> (label, group) from a label CSV."""
    if not csv_path.is_file():
        raise InputError(
            f"{csv_path}: label file not found. Classification needs a CSV with columns "
            f"'{filename_column},{label_column}' and one row per image (set layout.labels_csv for another "
            "location)."
        )
    columns, rows = _open_csv(csv_path)
    wanted = [filename_column, label_column] + ([group_column] if group_column else [])
    for column, key in zip(
        wanted, ("layout.filename_column", "layout.label_column", "group_column"), strict=False
    ):
        if column not in columns:
            raise InputError(
                f"{csv_path}: no column '{column}'; the header has {columns}. Set {key} in the config to one "
                "of these, or rename the column in the file."
            )
    index = {name: columns.index(name) for name in wanted}

    def cell(row: list[str], name: str) -> str:
        position = index[name]
        return row[position].strip() if position < len(row) else ""

    labels: dict[str, tuple[str, str]] = {}
    for line_number, row in enumerate(rows, start=2):
        raw_name, label = cell(row, filename_column), cell(row, label_column)
        if not raw_name:
            continue
        if not label:
            raise InputError(
                f"{csv_path}, line {line_number}: '{raw_name}' has no label. Fill it in or remove the row."
            )
        group = cell(row, group_column) if group_column else ""
        if group_column and not group:
            raise InputError(
                f"{csv_path}, line {line_number}: '{raw_name}' has no value in the group column '{group_column}'. "
                "Every image needs its group (patient, slide, ...) to keep groups within one split."
            )
        if raw_name.lower().endswith(IMAGE_SUFFIXES) or filename_format == "{}":
            stem = _strip_image_suffix(raw_name)
        else:
            value: object = int(raw_name) if raw_name.isdigit() else raw_name
            try:
                stem = _strip_image_suffix(filename_format.format(value))
            except (ValueError, IndexError, KeyError) as error:
                raise InputError(
                    f"{csv_path}, line {line_number}: layout.filename_format '{filename_format}' cannot format "
                    f"'{raw_name}' ({error}). Use a format that fits every value of column '{filename_column}' "
                    "(e.g. '{:03d}' for numbers, '{}' for file names)."
                ) from error
        if stem in labels:
            raise InputError(
                f"{csv_path}, line {line_number}: '{raw_name}' is listed twice. Keep one row per image."
            )
        labels[stem] = (label, group)
    if not labels:
        raise InputError(
            f"{csv_path}: the label file has a header but no rows. Add one row per image: "
            f"{filename_column},{label_column}."
        )
    return labels


def _describe_folder(folder: Path) -> str:
    entries = sorted(
        p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith(".")
    )
    if not entries:
        return "it is empty"
    shown = ", ".join(entries[:8]) + (f", ... ({len(entries)} entries)" if len(entries) > 8 else "")
    return f"it holds {shown}"


def _no_images_message(folder: Path) -> str:
    others = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not others:
        return f"{folder}: the folder is empty. Put your images there ({', '.join(IMAGE_SUFFIXES)})."
    kinds = sorted({p.suffix.lower() or "(no extension)" for p in others})
    return (
        f"{folder}: no image files; it holds {len(others)} file(s) of type {', '.join(kinds[:5])} "
        f"(e.g. {others[0].name}). Supported: {', '.join(IMAGE_SUFFIXES)}; convert your images to TIFF "
        "(e.g. with Fiji or bfconvert)."
    )


def discover_samples(settings: dict) -> list[Sample]:
    """List the samples of one dataset, pairing every image with its mask or label.

    Raises:
        InputError listing every problem found (missing folders, images without masks or labels, labels
        naming missing files, unknown classes), each with the file and the fix.
    """
    data_dir = Path(settings["data_dir"])
    task = settings["task"]
    layout = settings.get("layout") or {}
    if not data_dir.exists():
        parent = next((p for p in data_dir.parents if p.is_dir()), None)
        raise InputError(
            f"{data_dir}: data_dir does not exist (the nearest existing folder is {parent}). Set data_dir in the "
            "config to the folder holding your images; a relative path is resolved from the folder you run "
            "snakemake in."
        )
    if not data_dir.is_dir():
        raise InputError(
            f"{data_dir}: data_dir is a file, not a folder. Set data_dir to the folder holding it."
        )
    if layout.get("targets") or layout.get("channel_key"):
        return mark_test_images(discover_field_samples(settings), data_dir, layout)

    # (subset, images, masks by stem or None when there is no ground-truth folder, label CSV)
    groups: list[tuple[str, list[Path], dict[str, Path] | None, Path]] = []
    if layout.get("images"):
        found = _glob(data_dir, layout["images"], "images")
        images = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            other = f"; it matches {len(found)} non-image file(s) such as {found[0].name}" if found else ""
            raise InputError(
                f"{data_dir}: no image files match layout.images '{layout['images']}'{other}. Check the glob "
                f"(relative to data_dir; supported types: {', '.join(IMAGE_SUFFIXES)})."
            )
        masks: dict[str, Path] | None = None
        if layout.get("masks"):
            masks = {}
            suffix = layout.get("mask_suffix", "")
            for mask in _glob(data_dir, layout["masks"], "masks"):
                if mask.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                stem = (
                    mask.stem[: len(mask.stem) - len(suffix)]
                    if suffix and mask.stem.endswith(suffix)
                    else mask.stem
                )
                masks[stem] = mask
            if not masks:
                raise InputError(
                    f"{data_dir}: no image files match layout.masks '{layout['masks']}'. Check the glob "
                    "(relative to data_dir)."
                )
        elif task != "classification":
            raise InputError(
                f"{data_dir}: task {task} needs a ground-truth image per image, but the config's `layout:` "
                "has `images` and no `masks`. Add layout.masks, a glob matching the masks (e.g. 'masks/*.png')."
            )
        csv_path = (
            data_dir / layout["labels_csv"] if layout.get("labels_csv") else data_dir / "groundtruth.csv"
        )
        groups.append(("", images, masks, csv_path))
    else:
        if (data_dir / "train" / "image").is_dir():
            subsets = [s for s in ("train", "test") if (data_dir / s / "image").is_dir()]
            roots = {s: data_dir / s for s in subsets}
        elif (data_dir / "image").is_dir():
            roots = {"": data_dir}
        else:
            raise InputError(
                f"{data_dir}: no 'image' or 'train/image' folder ({_describe_folder(data_dir)}). Use the "
                "InstantDL layout (train/image, train/groundtruth, test/image, test/groundtruth, or image + "
                "groundtruth) or describe yours with `layout:` in the config (layout.images, layout.masks, "
                "layout.labels_csv)."
            )
        for subset, root in roots.items():
            images = _image_files(root / "image")
            if not images:
                raise InputError(_no_images_message(root / "image"))
            truth = root / "groundtruth"
            suffix = layout.get("mask_suffix", "")
            masks = (
                {
                    (p.stem[: -len(suffix)] if suffix and p.stem.endswith(suffix) else p.stem): p
                    for p in _image_files(truth)
                }
                if truth.is_dir()
                else None
            )
            csv_name = Path(layout["labels_csv"]).name if layout.get("labels_csv") else "groundtruth.csv"
            groups.append((subset, images, masks, truth / csv_name))

    errors: list[str] = []
    samples: list[Sample] = []
    stems_seen: Counter = Counter(p.stem for _, images, _, _ in groups for p in images)
    for subset, images, masks, csv_path in groups:
        folder = images[0].parent
        duplicates = [stem for stem, n in Counter(p.stem for p in images).items() if n > 1]
        if duplicates:
            errors.append(
                f"{folder}: several files share the name(s) {duplicates[:5]} with different "
                "extensions; keep one file per image."
            )
        if task == "classification":
            if subset == "test" and not csv_path.is_file():
                log.warning(
                    "%s: test images have no labels (%s missing); they will be predicted but not evaluated",
                    folder,
                    csv_path,
                )
                samples += [
                    Sample(_sample_id(subset, p.stem, stems_seen), str(p), subset=subset) for p in images
                ]
                continue
            labels = _read_labels_csv(
                csv_path,
                layout.get("filename_column", "filename"),
                layout.get("label_column", "label"),
                layout.get("filename_format", "{}"),
                settings.get("group_column"),
            )
            image_stems = {p.stem for p in images}
            for stem in sorted(set(labels) - image_stems, key=_natural_key):
                errors.append(
                    f"{csv_path}: names '{stem}', but no image with that name exists in {folder}. "
                    "Fix the name in the CSV, add the image, or remove the row."
                )
            for path in images:
                if path.stem not in labels:
                    errors.append(
                        f"{path}: no label for this image in {csv_path}. Add a row for it or move the "
                        "image out of the folder."
                    )
                    continue
                label, group = labels[path.stem]
                samples.append(
                    Sample(
                        _sample_id(subset, path.stem, stems_seen),
                        str(path),
                        label=label,
                        subset=subset,
                        group=group,
                    )
                )
        else:
            if masks is None and subset == "test":
                log.warning(
                    "%s: test images have no ground truth; they will be predicted but not evaluated", folder
                )
                masks = {}
            elif masks is None:
                errors.append(
                    f"{folder.parent / 'groundtruth'}: folder missing. Task {task} needs a mask for every "
                    f"image, with the image's file name, in {folder.parent / 'groundtruth'}."
                )
                masks = {}
            else:
                image_stems = {p.stem for p in images}
                orphans = sorted(set(masks) - image_stems, key=_natural_key)
                hint = _mask_suffix_hint(orphans, image_stems, masks)
                if hint and not set(masks) & image_stems:
                    # Nothing pairs, but every mask name is an image name plus one suffix: one message.
                    errors.append(
                        f"{folder}: none of the {len(masks)} masks has an image of the same name; {hint}"
                    )
                    masks = {}
                else:
                    for stem in orphans:
                        errors.append(
                            f"{masks[stem]}: mask without an image of the same name in {folder}. Rename "
                            f"or remove the mask, or add its image.{' ' + hint if hint else ''}"
                        )
                    for path in images:
                        if path.stem not in masks:
                            errors.append(
                                f"{path}: no mask with the same name among the ground truth "
                                f"({_truth_where(layout, folder)}). Add its mask or move the image out."
                            )
            for path in images:
                target = masks.get(path.stem)
                samples.append(
                    Sample(
                        _sample_id(subset, path.stem, stems_seen),
                        str(path),
                        target=str(target) if target else "",
                        subset=subset,
                    )
                )

    if task == "classification" and settings.get("classes"):
        allowed = [str(c) for c in settings["classes"]]
        for sample in samples:
            if sample.label and sample.label not in allowed:
                errors.append(
                    f"{sample.image}: label '{sample.label}' is not in `classes` {allowed}. "
                    "Add it to `classes` in the config or fix the label in the CSV."
                )
    _raise_if_any(errors)
    return mark_test_images(samples, data_dir, layout)


def _mask_suffix_hint(orphans: list[str], image_stems: set[str], masks: dict[str, Path]) -> str:
    """'set layout.mask_suffix ...' when unpaired mask names are image names plus one common suffix."""
    suffixes: Counter = Counter()
    example = {}
    for stem in orphans:
        for image_stem in image_stems:
            if stem.startswith(image_stem) and len(stem) > len(image_stem):
                suffix = stem[len(image_stem) :]
                suffixes[suffix] += 1
                example.setdefault(suffix, (masks[stem].name, image_stem))
                break
    if not suffixes:
        return ""
    suffix, count = suffixes.most_common(1)[0]
    if count < len(orphans):
        return ""
    mask_name, image_stem = example[suffix]
    return (
        f"the mask names add '{suffix}' to the image names (e.g. {mask_name} for image {image_stem}): set "
        f"layout.mask_suffix: '{suffix}' in the config."
    )


def _truth_where(layout: dict, image_folder: Path) -> str:
    if layout.get("masks"):
        suffix = layout.get("mask_suffix", "")
        return f"layout.masks '{layout['masks']}'" + (f" with mask_suffix '{suffix}'" if suffix else "")
    return str(image_folder.parent / "groundtruth")


def _sample_id(subset: str, stem: str, stems_seen: Counter) -> str:
    # Only prefix when two subsets reuse a file name, so ids stay the user's own names where possible.
    return f"{subset}_{stem}" if subset and stems_seen[stem] > 1 else stem


def _raise_if_any(errors: list[str]) -> None:
    if errors:
        shown = "\n  - ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise InputError(f"{len(errors)} problem(s) in the input data:\n  - {shown}{more}")


# ---------------------------------------------------------------------------------------------------
# pixels


def _tiff_axes(path: str) -> str:
    """The axes tifffile reads from a TIFF's metadata (e.g. 'ZYX', 'CYX', 'YXS'); '' when unknown."""
    if not str(path).lower().endswith((".tif", ".tiff")):
        return ""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return tif.series[0].axes
    except Exception:  # the pixels were read already; metadata is only a hint
        return ""


def to_channels_first(array: np.ndarray, path: str, spatial_dims: int = 2) -> np.ndarray:
    """Bring an image read by `read_image` to float32 C + spatial axes (CYX for 2D, CZYX for 3D).

    Colour images stored channels-last (YXC, RGB or RGBA) are moved to CYX; a constant alpha channel is
    dropped (it carries no information and would change the channel count between files).

    Raises:
        InputError when the dimensionality does not fit the task (e.g. a Z-stack given to a 2D task) or
        the pixels contain NaN or infinity.
    """
    colour_last = False
    if spatial_dims == 2:
        axes = _tiff_axes(path) if array.ndim >= 3 else ""
        stacked = [
            (axis, size) for axis, size in zip(axes, array.shape, strict=False) if axis in "ZTQI" and size > 1
        ]
        if array.ndim == 3 and stacked and stacked[0][0] in "ZT":
            axis, size = stacked[0]
            kind = "Z-stack" if axis == "Z" else "time series"
            raise InputError(
                f"{path}: a {kind} of {size} planes (shape {array.shape}, axes {axes}) given to a 2D task. "
                "Save one plane (or a projection) per file, or for 3D data give patch_size three values "
                "(e.g. [32, 128, 128])."
            )
        if array.ndim == 2:
            out = array[None]
        elif array.ndim == 3 and array.shape[-1] in (2, 3, 4) and array.shape[0] > 4:
            out = np.moveaxis(array, -1, 0)
            colour_last = True
        elif array.ndim == 3 and array.shape[0] <= 16 < min(array.shape[1:]):
            out = array
        else:
            raise InputError(
                f"{path}: shape {array.shape} is not a 2D image (expected YX, YXC with 2-4 colours, or CYX "
                "with at most 16 channels); it looks like a Z-stack or time series. Save one plane per file, "
                "or for 3D data give patch_size three values (e.g. [32, 128, 128])."
            )
    else:
        if array.ndim == 3:
            out = array[None]
        elif array.ndim == 4:
            out = array if array.shape[0] <= 16 else np.moveaxis(array, 1, 0)
        else:
            raise InputError(
                f"{path}: shape {array.shape} is not a 3D volume (expected ZYX or CZYX) but the task is 3D "
                "(patch_size has three values). Give 2D images a two-value patch_size, or save the planes of "
                "each volume in one multi-page TIFF."
            )
    if colour_last and out.shape[0] in (2, 4) and np.ptp(out[-1]) == 0:
        out = out[:-1]  # constant alpha
    out = out.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        bad = int((~finite).sum())
        raise InputError(
            f"{path}: {bad} of {out.size} pixel values are NaN or infinite. Replace them (e.g. with 0; Fiji: "
            "Process > Math > Remove NaNs) or remove the image before training."
        )
    return out


def read_mask(path: str, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Read a label mask as integers with the image's spatial shape (YX or ZYX).

    A colour mask whose channels agree (as some tools save them) is reduced to one channel.
    """
    array = read_image(path)
    if array.ndim == len(spatial_shape) + 1 and array.shape[-1] in (2, 3, 4):
        colours = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if not (colours == colours[..., :1]).all():
            raise InputError(
                f"{path}: a colour mask whose channels differ (shape {array.shape}). Masks must hold one "
                "class index (or one object id) per pixel: save it as a single-channel label image (8- or "
                "16-bit grey PNG/TIFF), not a colour-coded picture."
            )
        array = array[..., 0]
    if array.shape != tuple(spatial_shape):
        raise InputError(
            f"{path}: mask shape {array.shape} differs from its image's {tuple(spatial_shape)}. "
            "The mask must have the same height and width (and depth) as the image: check that it belongs "
            "to this image and was not resized or cropped."
        )
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InputError(f"{path}: the mask has NaN or infinite values. Masks must hold integer labels.")
        if not np.all(array == np.round(array)):
            raise InputError(
                f"{path}: the mask has fractional values (e.g. {array[array != np.round(array)].flat[0]}). "
                "Masks must hold integer labels; for continuous targets use task: regression."
            )
    return array.astype(np.int64)


def _read_regression_target(path: str, spatial_shape: tuple[int, ...], spatial_dims: int) -> np.ndarray:
    """A regression target: float32 with the image's spatial shape (YX/ZYX, or CYX/CZYX when multichannel)."""
    target = to_channels_first(read_image(path), path, spatial_dims)
    if target.shape[1:] != tuple(spatial_shape):
        raise InputError(
            f"{path}: target shape {target.shape[1:]} differs from its image's {tuple(spatial_shape)}. "
            "The target must have the same height and width (and depth) as the image."
        )
    return target[0] if target.shape[0] == 1 else target


def resize_image(image: np.ndarray, size: list[int] | tuple[int, ...], is_mask: bool = False) -> np.ndarray:
    """Resize the spatial axes of CYX/YX (or CZYX/ZYX) arrays; masks with nearest neighbour."""
    from skimage.transform import resize

    size = tuple(size)
    if is_mask:
        return resize(image, size, order=0, preserve_range=True, anti_aliasing=False).astype(image.dtype)
    channels = image.shape[0]
    return resize(image, (channels, *size), order=1, preserve_range=True, anti_aliasing=True).astype(
        np.float32
    )


# ---------------------------------------------------------------------------------------------------
# the rule


def convert_dataset(
    settings: dict, arrays_out: str | Path, samples_out: str | Path, fingerprint_out: str | Path
) -> dict:
    """Check and pack one dataset; returns the fingerprint.

    Everything is read and checked before anything is written, and every problem found is reported at
    once, so a user fixes the data in one pass rather than one file per run.
    """
    import pandas as pd

    task = settings["task"]
    spatial_dims = 3 if len(settings.get("patch_size") or [0, 0]) == 3 else 2
    samples = discover_samples(settings)
    log.info("found %d images in %s", len(samples), settings["data_dir"])

    errors: list[str] = []
    images: dict[str, np.ndarray] = {}
    targets: dict[str, np.ndarray] = {}
    raw_dtypes: Counter = Counter()
    for index, sample in enumerate(samples):
        try:
            raw = read_sample_image(sample.image)
            raw_dtypes[str(raw.dtype)] += 1
            image = to_channels_first(raw, sample.image, spatial_dims)
            if task == "regression" and sample.target:
                target = _read_regression_target(sample.target, image.shape[1:], spatial_dims)
                if settings.get("resize"):
                    channels_first = target if target.ndim > spatial_dims else target[None]
                    target = resize_image(channels_first, settings["resize"])
                    target = target[0] if target.shape[0] == 1 else target
                targets[sample.id] = target
            elif task != "classification" and sample.target:
                mask = read_mask(sample.target, image.shape[1:])
                if (settings.get("layout") or {}).get("mask_foreground"):
                    mask = (mask > 0).astype(np.int64)
                if settings.get("resize"):
                    mask = resize_image(mask, settings["resize"], is_mask=True)
                targets[sample.id] = mask
            if settings.get("resize"):
                image = resize_image(image, settings["resize"])
            images[sample.id] = image
        except InputError as error:
            errors.append(str(error))
        if (index + 1) % 50 == 0:
            log.info("read %d/%d images", index + 1, len(samples))
    layout = settings.get("layout") or {}
    if layout.get("tile_size") and not errors:
        samples, images, targets = tile_samples(
            samples, images, targets, layout["tile_size"], layout.get("test_right_fraction")
        )
    channel_counts = Counter(img.shape[0] for img in images.values())
    if len(channel_counts) > 1:
        majority = channel_counts.most_common(1)[0][0]
        for sample in samples:
            if sample.id in images and images[sample.id].shape[0] != majority:
                errors.append(
                    f"{sample.image}: {images[sample.id].shape[0]} channel(s) where most images have "
                    f"{majority}. Save all images with the same channels."
                )
    _raise_if_any(errors)
    if task == "instance_segmentation":
        # Instance ids are kept as they are (never mapped to class indices); binary masks become instances.
        from snakescope.instances import instance_fingerprint, prepare_instance_targets

        targets, derived_instances = prepare_instance_targets(targets)

    fingerprint = _fingerprint(settings, samples, images, targets, raw_dtypes)
    if task == "instance_segmentation":
        fingerprint.update(instance_fingerprint(targets, derived_instances))
    if task == "regression":
        fingerprint["target_data_range"] = regression_data_range(samples)
    if "mask_values" in fingerprint:
        # Stored mask values (e.g. 0/128/255) -> class indices 0, 1, 2 in sorted order.
        mask_values = np.asarray(fingerprint["mask_values"], dtype=np.int64)
        targets = {k: np.searchsorted(mask_values, v).astype(np.int64) for k, v in targets.items()}

    label_index = {c: i for i, c in enumerate(fingerprint.get("classes", []))}
    table = pd.DataFrame([asdict(s) for s in samples])
    table["label_index"] = [label_index.get(s.label, -1) for s in samples]
    table["shape"] = ["x".join(map(str, images[s.id].shape)) for s in samples]

    with atomic_path(arrays_out) as tmp:
        np.savez(
            tmp,
            **{f"image/{k}": v for k, v in images.items()},
            **{f"target/{k}": v for k, v in targets.items()},
        )
    with atomic_path(samples_out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    write_json(fingerprint, fingerprint_out)
    return fingerprint


def _fingerprint(settings, samples, images, targets, raw_dtypes) -> dict:
    task = settings["task"]
    shapes = np.array([img.shape for img in images.values()])
    n_channels = int(shapes[0, 0])
    # Intensity statistics from a bounded random subset of pixels per image: exact enough for
    # normalisation and planning, and constant memory whatever the dataset size.
    rng = np.random.default_rng(0)
    per_channel = []
    for c in range(n_channels):
        values = np.concatenate(
            [
                rng.choice(img[c].ravel(), size=min(img[c].size, 10_000), replace=False)
                for img in images.values()
            ]
        )
        per_channel.append(
            {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "percentiles": {
                    str(q): float(v)
                    for q, v in zip(
                        (0.5, 1, 50, 99, 99.5), np.percentile(values, (0.5, 1, 50, 99, 99.5)), strict=True
                    )
                },
            }
        )
    fingerprint = {
        "dataset": settings["name"],
        "task": task,
        "data_dir": settings["data_dir"],
        "n_images": len(samples),
        "n_by_subset": dict(Counter(s.subset or "unsplit" for s in samples)),
        "spatial_dims": int(shapes.shape[1] - 1),
        "channels": n_channels,
        "source_dtypes": dict(raw_dtypes),
        "shape_min": shapes[:, 1:].min(axis=0).tolist(),
        "shape_median": np.median(shapes[:, 1:], axis=0).tolist(),
        "shape_max": shapes[:, 1:].max(axis=0).tolist(),
        "resized_to": settings.get("resize"),
        "intensity": per_channel,
        # How much the mean brightness varies between images (std / mean of per-image means): the
        # planner adds brightness and contrast augmentations when it is large.
        "brightness_spread": _brightness_spread(images),
        "checksums": {s.id: sample_checksum(s.image) for s in samples},
    }
    if task == "classification":
        present = sorted({s.label for s in samples if s.label}, key=_natural_key)
        classes = [str(c) for c in settings["classes"]] if settings.get("classes") else present
        fingerprint["classes"] = classes
        fingerprint["class_counts"] = {c: sum(s.label == c for s in samples) for c in classes}
    else:
        fingerprint["checksums"].update(
            {f"{s.id}:target": sample_checksum(s.target) for s in samples if s.target}
        )
        if task == "regression":
            spatial = fingerprint["spatial_dims"]
            target_channels = {t.shape[0] if t.ndim > spatial else 1 for t in targets.values()}
            if len(target_channels) > 1:
                raise InputError(
                    f"{settings['data_dir']}: the regression targets have different channel counts "
                    f"{sorted(target_channels)}. Save every target with the same channels."
                )
            fingerprint["target_channels"] = target_channels.pop() if target_channels else 1
        if task == "segmentation":  # instance_segmentation: see snakescope.instances.instance_fingerprint
            counts: Counter = Counter()
            for mask in targets.values():
                values, n = np.unique(mask, return_counts=True)
                counts.update(dict(zip(values.tolist(), n.tolist(), strict=True)))
            values = sorted(counts)
            if task == "segmentation":
                if len(values) > MAX_MASK_VALUES:
                    raise InputError(
                        f"{settings['data_dir']}: the masks hold {len(values)} distinct values; a semantic "
                        "segmentation mask holds one value per class. Save masks as lossless PNG/TIFF label "
                        "images (not JPEG), or use task: instance_segmentation for one id per object."
                    )
                if settings.get("num_classes") and len(values) > settings["num_classes"]:
                    raise InputError(
                        f"{settings['data_dir']}: the masks hold {len(values)} distinct values {values[:10]} but "
                        f"num_classes is {settings['num_classes']}. Raise num_classes or fix the masks."
                    )
                if len(values) < 2:
                    raise InputError(
                        f"{settings['data_dir']}: every mask holds only the value {values}; "
                        "there is nothing to learn. Check the ground-truth folder."
                    )
            num_classes = settings.get("num_classes")
            if task == "segmentation" and num_classes and all(0 <= v < num_classes for v in values):
                # The masks hold class indices already: keep them, even when a class is absent
                # (0/2 with num_classes 3 must not become 0/1).
                values = list(range(num_classes))
            fingerprint["mask_values"] = values
            fingerprint["num_classes"] = max(num_classes or 0, len(values))
            total = sum(counts.values())
            fingerprint["class_fraction"] = {str(v): counts[v] / total for v in values}
            fingerprint["median_object_area"] = _median_object_area(targets.values(), background=values[0])
    return fingerprint


def _brightness_spread(images: dict[str, np.ndarray]) -> float:
    means = np.array([float(img.mean()) for img in images.values()])
    return float(means.std() / abs(means.mean())) if means.size and means.mean() else 0.0


def _median_object_area(masks, background) -> float:
    """Median size (pixels or voxels) of the connected foreground regions: the typical object size."""
    from scipy import ndimage

    from snakescope.instances import object_areas

    areas = np.concatenate([object_areas(ndimage.label(mask != background)[0]) for mask in masks] or [np.zeros(0)])
    return float(np.median(areas)) if areas.size else 0.0


def list_input_files(settings: dict) -> list[str]:
    """Every image and CSV file under `data_dir`: the inputs whose change should re-run `convert`."""
    data_dir = Path(settings["data_dir"])
    if not data_dir.is_dir():
        return []
    suffixes = IMAGE_SUFFIXES + (".csv",)
    return sorted(str(p) for p in data_dir.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


# ---------------------------------------------------------------------------------------------------
# Layouts beyond one-image-one-mask (regression and 3D datasets): ground truth paired by folder, one
# field of view spread over several files named by key-value lists, a fixed test set, and tiles of a
# large image with a spatial train/test split. Configured by the `layout:` keys targets, pair_by,
# test_images, channel_key, slice_key, field_keys, input_channels, target_channel, tile_size,
# test_right_fraction and mask_foreground (described in the schema).

MULTI_FILE_SEPARATOR = ";"  # Sample.image of a field stored as several files: the paths in channel order


def parse_key_values(name: str) -> dict[str, str]:
    """Parse a file stem written as a comma-separated key-value list.

    ``"lab-X,condition-K_0_8,acquisition_date,z_depth-3,channel-PHASE_CONTRAST"`` ->
    ``{"lab": "X", "condition": "K_0_8", "z_depth": "3", "channel": "PHASE_CONTRAST"}``: each item is
    split at its first "-"; items without one (bare words such as "acquisition_date") are skipped.
    """
    pairs = {}
    for token in name.split(","):
        key, sep, value = token.partition("-")
        if sep and key:
            pairs[key.strip()] = value.strip()
    return pairs


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "field"


def discover_field_samples(settings: dict) -> list[Sample]:
    """Samples of a layout with `layout.targets` (truth paired by folder or stem) or `layout.channel_key`
    (one field of view = several files named by key-value lists). See the schema's `layout` keys.

    Raises:
        InputError listing every problem found (unpaired images, missing channels, duplicate targets).
    """
    data_dir = Path(settings["data_dir"])
    layout = settings.get("layout") or {}
    if not layout.get("images"):
        raise InputError(
            f"{data_dir}: layout.targets / layout.channel_key need layout.images, a glob matching the input "
            "files (e.g. 'raw/*/*.png')."
        )
    files = [p for p in _glob(data_dir, layout["images"], "images") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError(
            f"{data_dir}: no image files match layout.images '{layout['images']}'. Check the glob."
        )
    if layout.get("channel_key"):
        samples = _discover_key_value_fields(files, layout, settings["task"])
    else:
        samples = _discover_paired_targets(data_dir, files, layout)
    return samples


def _discover_paired_targets(data_dir: Path, images: list[Path], layout: dict) -> list[Sample]:
    pair_by = layout.get("pair_by", "stem")
    targets = [p for p in _glob(data_dir, layout["targets"], "targets") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not targets:
        raise InputError(
            f"{data_dir}: no image files match layout.targets '{layout['targets']}'. Check the glob."
        )
    errors: list[str] = []
    by_key: dict[str, Path] = {}
    suffix = layout.get("mask_suffix", "")
    for target in targets:
        if pair_by == "folder":
            key = target.parent.name
        else:
            key = (
                target.stem[: len(target.stem) - len(suffix)]
                if suffix and target.stem.endswith(suffix)
                else target.stem
            )
        if key in by_key:
            errors.append(
                f"{target}: a second target for '{key}' (the first is {by_key[key]}). With pair_by "
                f"'{pair_by}' each {'folder' if pair_by == 'folder' else 'image name'} has one target."
            )
        by_key[key] = target
    stems = Counter(p.stem for p in images)
    samples = []
    for image in images:
        key = image.parent.name if pair_by == "folder" else image.stem
        if key not in by_key:
            where = f"a folder named '{key}'" if pair_by == "folder" else f"the name '{key}{suffix}'"
            errors.append(
                f"{image}: no target in {where} among layout.targets '{layout['targets']}'. Add it or "
                "narrow layout.images."
            )
            continue
        sample_id = image.stem if stems[image.stem] == 1 else f"{image.parent.name}_{image.stem}"
        # Images sharing one target (frames of one field) form a group, so no field spans two splits.
        group = image.parent.name if pair_by == "folder" else ""
        samples.append(Sample(_safe_id(sample_id), str(image), target=str(by_key[key]), group=group))
    unused = sorted(set(by_key) - {(p.parent.name if pair_by == "folder" else p.stem) for p in images})
    if unused:
        log.info(
            "%d target(s) have no image among layout.images and are not used: %s", len(unused), unused[:10]
        )
    _raise_if_any(errors)
    return samples


def _discover_key_value_fields(files: list[Path], layout: dict, task: str) -> list[Sample]:
    channel_key = layout["channel_key"]
    slice_key = layout.get("slice_key")
    inputs = layout.get("input_channels") or []
    target_channel = layout.get("target_channel")
    errors: list[str] = []
    if not inputs:
        raise InputError(
            "layout.channel_key needs layout.input_channels, the channel values that form the input "
            "(e.g. [PHASE_CONTRAST])."
        )
    if task != "classification" and not target_channel:
        raise InputError(
            "layout.channel_key needs layout.target_channel, the channel value of the ground truth "
            "(e.g. DAPI_CONFOCAL)."
        )
    parsed = {path: parse_key_values(path.stem) for path in files}
    for path, pairs in parsed.items():
        if channel_key not in pairs:
            errors.append(
                f"{path}: no '{channel_key}-<value>' item in the file name (found keys "
                f"{sorted(pairs)}). Check layout.channel_key or narrow layout.images."
            )
    _raise_if_any(errors)
    field_keys = layout.get("field_keys")
    if not field_keys:
        # Keys every file has, except the channel and slice keys: what is common to one field of view.
        shared = set.intersection(*(set(p) for p in parsed.values())) - {channel_key, slice_key}
        field_keys = [k for k in next(iter(parsed.values())) if k in shared]
    fields: dict[tuple, list[Path]] = {}
    for path, pairs in parsed.items():
        missing = [k for k in field_keys if k not in pairs]
        if missing:
            errors.append(f"{path}: no value for the field key(s) {missing} in the file name.")
            continue
        fields.setdefault(tuple(pairs[k] for k in field_keys), []).append(path)
    _raise_if_any(errors)
    varying = [i for i in range(len(field_keys)) if len({key[i] for key in fields}) > 1]
    samples = []
    for key, paths in sorted(fields.items()):
        shown = [key[i] for i in varying] or (list(key) if layout.get("field_keys") else ["field"])
        name = _safe_id("_".join(shown))
        input_paths = []
        for channel in inputs:
            members = [p for p in paths if parsed[p][channel_key] == channel]
            if not members:
                errors.append(f"field {name} ({paths[0].parent}): no file with {channel_key}-{channel}.")
            order = (
                (lambda p: _natural_key(parsed[p].get(slice_key, "")))
                if slice_key
                else (lambda p: _natural_key(p.name))
            )
            input_paths += sorted(members, key=order)
        truth = [p for p in paths if parsed[p][channel_key] == target_channel] if target_channel else []
        if target_channel and len(truth) != 1:
            errors.append(
                f"field {name} ({paths[0].parent}): {len(truth)} files with {channel_key}-{target_channel}; "
                "exactly one target per field is needed."
            )
            continue
        if any(MULTI_FILE_SEPARATOR in str(p) for p in input_paths):
            errors.append(f"field {name}: a file name contains '{MULTI_FILE_SEPARATOR}'; rename the files.")
            continue
        samples.append(
            Sample(
                name,
                MULTI_FILE_SEPARATOR.join(str(p) for p in input_paths),
                target=str(truth[0]) if truth else "",
                group=name,
            )
        )
        log.info(
            "field %s: %d input file(s) (%s), target %s",
            name,
            len(input_paths),
            ", ".join(inputs),
            truth[0].name if truth else "-",
        )
    _raise_if_any(errors)
    return samples


def mark_test_images(samples: list[Sample], data_dir: Path, layout: dict) -> list[Sample]:
    """Put every sample with a file matching `layout.test_images` in the test set (subset "test")."""
    pattern = layout.get("test_images")
    if not pattern:
        return samples
    chosen = {str(p) for p in _glob(Path(data_dir), pattern, "test_images")}
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


def tile_samples(
    samples: list[Sample],
    images: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    tile_size: list[int],
    test_right_fraction: float | None,
) -> tuple[list, dict, dict]:
    """Cut every image (C+spatial) and its target (spatial, or C+spatial) into non-overlapping tiles.

    Args:
        tile_size: [Y, X] or [Z, Y, X]; on volumes a two-value size tiles Y and X and keeps all of Z.
            Tiles start at the origin; a remainder narrower than a tile is dropped (logged).
        test_right_fraction: tiles lying wholly in this rightmost share of an image's width form the
            test set, a spatial split that keeps test pixels out of training (None: `split` decides).
    Returns:
        (tile samples, tile images, tile targets); ids ``<id>_y<Y0>_x<X0>`` (``_z<Z0>`` first in 3D),
        `region` the slices, `group` the source image.
    """
    out_samples, out_images, out_targets = [], {}, {}
    for sample in samples:
        image = images[sample.id]
        spatial = image.shape[1:]
        size = list(tile_size)
        if len(size) < len(spatial):
            size = list(spatial[: len(spatial) - len(size)]) + size
        if len(size) != len(spatial) or any(t > s for t, s in zip(size, spatial, strict=True)):
            raise InputError(
                f"{sample.image}: layout.tile_size {tile_size} does not fit the image's spatial shape "
                f"{tuple(spatial)}. Give one size per spatial axis, each at most the image's."
            )
        counts = [s // t for s, t in zip(spatial, size, strict=True)]
        dropped = [s - c * t for s, c, t in zip(spatial, counts, size, strict=True)]
        if any(dropped):
            log.info("%s: tiles of %s leave %s pixel(s) per axis unused", sample.id, size, dropped)
        names = "zyx"[-len(spatial) :]
        width = counts[-1] * size[-1]  # the tiled width; a dropped remainder does not count
        for corner in np.ndindex(*counts):
            starts = [c * t for c, t in zip(corner, size, strict=True)]
            slices = tuple(slice(a, a + t) for a, t in zip(starts, size, strict=True))
            tiled = [f"{n}{a}" for n, a, c in zip(names, starts, counts, strict=True) if c > 1 or n != "z"]
            tile_id = f"{sample.id}_{'_'.join(tiled)}"
            subset = sample.subset
            if test_right_fraction and starts[-1] >= width * (1 - test_right_fraction) - 1e-9:
                subset = "test"
            region = ",".join(f"{n}{a}:{a + t}" for n, a, t in zip(names, starts, size, strict=True))
            out_samples.append(
                Sample(
                    tile_id,
                    sample.image,
                    target=sample.target,
                    label=sample.label,
                    subset=subset,
                    group=sample.group or sample.id,
                    region=region,
                )
            )
            out_images[tile_id] = np.ascontiguousarray(image[(slice(None), *slices)])
            if sample.id in targets:
                out_targets[tile_id] = np.ascontiguousarray(targets[sample.id][(..., *slices)])
    if test_right_fraction and not any(s.subset == "test" for s in out_samples):
        raise InputError(
            f"layout.test_right_fraction {test_right_fraction}: no tile lies wholly in that share of "
            "the width. Raise it or use smaller tiles."
        )
    log.info(
        "tiled %d image(s) into %d tiles of %s (%d test)",
        len(samples),
        len(out_samples),
        list(tile_size),
        sum(s.subset == "test" for s in out_samples),
    )
    return out_samples, out_images, out_targets


def regression_data_range(samples: list[Sample]) -> float:
    """The intensity range PSNR and SSIM are computed over: the target files' integer dtype range
    (255 for 8-bit, 65535 for 16-bit: the convention of scikit-image), else the targets' observed range."""
    ranges = []
    for path in sorted({s.target for s in samples if s.target}):
        target = read_image(path)
        if target.dtype.kind in "ui":
            ranges.append(float(np.iinfo(target.dtype).max - min(np.iinfo(target.dtype).min, 0)))
        else:
            ranges.append(float(np.ptp(target)))
    return max(ranges) if ranges else 1.0
