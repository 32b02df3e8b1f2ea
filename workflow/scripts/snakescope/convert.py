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


# ---------------------------------------------------------------------------------------------------
# discovery


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def _read_labels_csv(
    csv_path: Path, filename_column: str, label_column: str, filename_format: str, group_column: str | None
) -> dict[str, tuple[str, str]]:
    """Map image stem -> (label, group) from a label CSV."""
    if not csv_path.is_file():
        raise InputError(
            f"{csv_path}: label file not found. Classification needs a CSV with columns "
            f"'{filename_column},{label_column}' (set layout.labels_csv for another location)."
        )
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        for column in (filename_column, label_column) + ((group_column,) if group_column else ()):
            if column not in columns:
                raise InputError(
                    f"{csv_path}: no column '{column}'; the columns are {columns}. Set layout.filename_column / "
                    "layout.label_column / group_column in the config to the right names."
                )
        labels: dict[str, tuple[str, str]] = {}
        for line_number, row in enumerate(reader, start=2):
            raw_name = (row[filename_column] or "").strip()
            label = (row[label_column] or "").strip()
            if not raw_name:
                continue
            if not label:
                raise InputError(f"{csv_path}, line {line_number}: '{raw_name}' has no label. Fill it in or remove the row.")
            value: object = int(raw_name) if raw_name.isdigit() else raw_name
            stem = Path(filename_format.format(value)).stem if filename_format != "{}" else Path(raw_name).stem
            if raw_name.lower().endswith(IMAGE_SUFFIXES):
                stem = Path(raw_name).stem
            if stem in labels:
                raise InputError(f"{csv_path}, line {line_number}: '{raw_name}' is listed twice. Keep one row per image.")
            labels[stem] = (label, (row[group_column] or "").strip() if group_column else "")
    if not labels:
        raise InputError(f"{csv_path}: the label file has no rows. Add one row per image: filename,label.")
    return labels


def discover_samples(settings: dict) -> list[Sample]:
    """List the samples of one dataset, pairing every image with its mask or label.

    Raises:
        InputError listing every problem found (missing folders, images without masks or labels, labels
        naming missing files, unknown classes), each with the file and the fix.
    """
    data_dir = Path(settings["data_dir"])
    task = settings["task"]
    layout = settings.get("layout") or {}
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: data_dir is not a folder. Set data_dir in the config to your image folder.")

    groups: list[tuple[str, list[Path], dict[str, Path], Path]] = []  # (subset, images, masks by stem, csv)
    if layout.get("images"):
        images = sorted(p for p in data_dir.glob(layout["images"]) if p.suffix.lower() in IMAGE_SUFFIXES)
        masks = {}
        if layout.get("masks"):
            suffix = layout.get("mask_suffix", "")
            for mask in data_dir.glob(layout["masks"]):
                stem = mask.stem[: len(mask.stem) - len(suffix)] if suffix and mask.stem.endswith(suffix) else mask.stem
                masks[stem] = mask
        csv_path = data_dir / layout["labels_csv"] if layout.get("labels_csv") else data_dir / "groundtruth.csv"
        if not images:
            raise InputError(f"{data_dir}: no image files match layout.images '{layout['images']}'. Check the glob.")
        groups.append(("", images, masks, csv_path))
    else:
        if (data_dir / "train" / "image").is_dir():
            subsets = [s for s in ("train", "test") if (data_dir / s / "image").is_dir()]
            roots = {s: data_dir / s for s in subsets}
        elif (data_dir / "image").is_dir():
            roots = {"": data_dir}
        else:
            raise InputError(
                f"{data_dir}: no 'image' or 'train/image' folder. Use the InstantDL layout (train/image, "
                "train/groundtruth, test/image, test/groundtruth, or image + groundtruth) or describe yours "
                "with `layout:` in the config."
            )
        for subset, root in roots.items():
            images = _image_files(root / "image")
            if not images:
                raise InputError(f"{root / 'image'}: the folder is empty. Put your images there.")
            truth = root / "groundtruth"
            masks = {p.stem: p for p in _image_files(truth)} if truth.is_dir() else {}
            csv_name = Path(layout["labels_csv"]).name if layout.get("labels_csv") else "groundtruth.csv"
            groups.append((subset, images, masks, truth / csv_name))

    errors: list[str] = []
    samples: list[Sample] = []
    stems_seen: Counter = Counter(p.stem for _, images, _, _ in groups for p in images)
    for subset, images, masks, csv_path in groups:
        duplicates = [stem for stem, n in Counter(p.stem for p in images).items() if n > 1]
        if duplicates:
            errors.append(
                f"{images[0].parent}: several files share the name(s) {duplicates[:5]} with different "
                "extensions; keep one file per image."
            )
        if task == "classification":
            labels = _read_labels_csv(
                csv_path,
                layout.get("filename_column", "filename"),
                layout.get("label_column", "label"),
                layout.get("filename_format", "{}"),
                settings.get("group_column"),
            )
            image_stems = {p.stem for p in images}
            for stem in sorted(set(labels) - image_stems, key=_natural_key):
                errors.append(f"{csv_path}: names '{stem}', but no such image exists in {images[0].parent}. "
                              "Fix the name or remove the row.")
            for path in images:
                if path.stem not in labels:
                    errors.append(f"{path}: no label in {csv_path}. Add a row for it or move the image out.")
                    continue
                label, group = labels[path.stem]
                samples.append(Sample(_sample_id(subset, path.stem, stems_seen), str(path), label=label,
                                      subset=subset, group=group))
        else:
            if not masks and subset == "test":
                log.warning("%s: test images have no ground truth; they will be predicted but not evaluated",
                            images[0].parent)
            else:
                image_stems = {p.stem for p in images}
                for stem in sorted(set(masks) - image_stems, key=_natural_key):
                    errors.append(f"{masks[stem]}: mask without an image of the same name. Rename or remove it.")
                for path in images:
                    if path.stem not in masks:
                        errors.append(f"{path}: no mask with the same name in the ground-truth folder. "
                                      "Add its mask or move the image out.")
            for path in images:
                target = masks.get(path.stem)
                samples.append(Sample(_sample_id(subset, path.stem, stems_seen), str(path),
                                      target=str(target) if target else "", subset=subset))

    if task == "classification" and settings.get("classes"):
        allowed = [str(c) for c in settings["classes"]]
        for sample in samples:
            if sample.label not in allowed:
                errors.append(f"{sample.image}: label '{sample.label}' is not in `classes` {allowed}. "
                              "Add it to `classes` in the config or fix the label.")
    _raise_if_any(errors)
    return samples


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


def to_channels_first(array: np.ndarray, path: str, spatial_dims: int = 2) -> np.ndarray:
    """Bring an image read by `read_image` to float32 C + spatial axes (CYX for 2D, CZYX for 3D).

    Colour images stored channels-last (YXC, RGB or RGBA) are moved to CYX; a constant alpha channel is
    dropped (it carries no information and would change the channel count between files).

    Raises:
        InputError when the dimensionality does not fit the task (e.g. a Z-stack given to a 2D task) or
        the pixels contain NaN or infinity.
    """
    if spatial_dims == 2:
        if array.ndim == 2:
            out = array[None]
        elif array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4:
            out = np.moveaxis(array, -1, 0)
        elif array.ndim == 3 and array.shape[0] <= 16 < min(array.shape[1:]):
            out = array
        else:
            raise InputError(
                f"{path}: shape {array.shape} is not a 2D image (expected YX, YXC with 3-4 colours, or CYX with "
                "at most 16 channels). For a Z-stack use a 3D task; otherwise save one plane per file."
            )
    else:
        if array.ndim == 3:
            out = array[None]
        elif array.ndim == 4:
            out = array if array.shape[0] <= 16 else np.moveaxis(array, 1, 0)
        else:
            raise InputError(f"{path}: shape {array.shape} is not a 3D volume (expected ZYX or CZYX).")
    if out.shape[0] == 4 and np.ptp(out[3]) == 0:
        out = out[:3]
    out = out.astype(np.float32)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise InputError(f"{path}: {bad} pixel(s) are NaN or infinite. Replace them (e.g. with 0) before training.")
    return out


def read_mask(path: str, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Read a label mask as integers with the image's spatial shape (YX or ZYX).

    A colour mask whose channels agree (as some tools save them) is reduced to one channel.
    """
    array = read_image(path)
    if array.ndim == len(spatial_shape) + 1 and array.shape[-1] in (3, 4):
        array = array[..., 0]
    if array.shape != tuple(spatial_shape):
        raise InputError(
            f"{path}: mask shape {array.shape} differs from its image's {tuple(spatial_shape)}. "
            "The mask must have the same height and width (and depth) as the image."
        )
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InputError(f"{path}: the mask has NaN or infinite values. Masks must hold integer labels.")
        if not np.all(array == np.round(array)):
            raise InputError(f"{path}: the mask has fractional values. Masks must hold integer labels.")
    return array.astype(np.int64)


def resize_image(image: np.ndarray, size: list[int] | tuple[int, ...], is_mask: bool = False) -> np.ndarray:
    """Resize the spatial axes of CYX/YX (or CZYX/ZYX) arrays; masks with nearest neighbour."""
    from skimage.transform import resize

    size = tuple(size)
    if is_mask:
        return resize(image, size, order=0, preserve_range=True, anti_aliasing=False).astype(image.dtype)
    channels = image.shape[0]
    return resize(image, (channels, *size), order=1, preserve_range=True, anti_aliasing=True).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# the rule


def convert_dataset(settings: dict, arrays_out: str | Path, samples_out: str | Path, fingerprint_out: str | Path) -> dict:
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
            raw = read_image(sample.image)
            raw_dtypes[str(raw.dtype)] += 1
            image = to_channels_first(raw, sample.image, spatial_dims)
            if task != "classification" and sample.target:
                mask = read_mask(sample.target, image.shape[1:])
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
    channel_counts = Counter(img.shape[0] for img in images.values())
    if len(channel_counts) > 1:
        majority = channel_counts.most_common(1)[0][0]
        for sample in samples:
            if sample.id in images and images[sample.id].shape[0] != majority:
                errors.append(f"{sample.image}: {images[sample.id].shape[0]} channel(s) where most images have "
                              f"{majority}. Save all images with the same channels.")
    _raise_if_any(errors)

    fingerprint = _fingerprint(settings, samples, images, targets, raw_dtypes)
    if task != "classification":
        value_to_index = {v: i for i, v in enumerate(fingerprint["mask_values"])}
        lookup = np.vectorize(value_to_index.__getitem__, otypes=[np.int64])
        targets = {k: lookup(v) for k, v in targets.items()}

    label_index = {c: i for i, c in enumerate(fingerprint.get("classes", []))}
    table = pd.DataFrame([asdict(s) for s in samples])
    table["label_index"] = [label_index.get(s.label, -1) for s in samples]
    table["shape"] = ["x".join(map(str, images[s.id].shape)) for s in samples]

    with atomic_path(arrays_out) as tmp:
        np.savez(tmp, **{f"image/{k}": v for k, v in images.items()}, **{f"target/{k}": v for k, v in targets.items()})
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
        values = np.concatenate([
            rng.choice(img[c].ravel(), size=min(img[c].size, 10_000), replace=False) for img in images.values()
        ])
        per_channel.append({
            "mean": float(values.mean()),
            "std": float(values.std()),
            "percentiles": {str(q): float(v) for q, v in zip((0.5, 1, 50, 99, 99.5), np.percentile(values, (0.5, 1, 50, 99, 99.5)))},
        })
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
        "checksums": {s.id: file_checksum(s.image) for s in samples},
    }
    if task == "classification":
        present = sorted({s.label for s in samples}, key=_natural_key)
        classes = [str(c) for c in settings["classes"]] if settings.get("classes") else present
        fingerprint["classes"] = classes
        fingerprint["class_counts"] = {c: sum(s.label == c for s in samples) for c in classes}
    else:
        fingerprint["checksums"].update({f"{s.id}:target": file_checksum(s.target) for s in samples if s.target})
        if task in ("segmentation", "instance_segmentation"):
            counts: Counter = Counter()
            for mask in targets.values():
                values, n = np.unique(mask, return_counts=True)
                counts.update(dict(zip(values.tolist(), n.tolist())))
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
                    raise InputError(f"{settings['data_dir']}: every mask holds only the value {values}; "
                                     "there is nothing to learn. Check the ground-truth folder.")
            fingerprint["mask_values"] = values
            fingerprint["num_classes"] = max(settings.get("num_classes") or 0, len(values))
            total = sum(counts.values())
            fingerprint["class_fraction"] = {str(v): counts[v] / total for v in values}
    return fingerprint


def list_input_files(settings: dict) -> list[str]:
    """Every image and CSV file under `data_dir`: the inputs whose change should re-run `convert`."""
    data_dir = Path(settings["data_dir"])
    if not data_dir.is_dir():
        return []
    suffixes = IMAGE_SUFFIXES + (".csv",)
    return sorted(str(p) for p in data_dir.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
