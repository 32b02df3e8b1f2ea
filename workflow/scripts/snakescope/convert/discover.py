"""discover: the user's images and their ground truth, found and paired by the layout they use.

Layouts understood (read-only; nothing in `data_dir` is ever written), recognised from the folders when
the config has no `layout.images` (snakescope.convert.layouts; `layout.format` names one):

* InstantDL: ``train/image``, ``train/groundtruth``, ``test/image``, ``test/groundtruth``, or a single
  ``image`` + ``groundtruth`` pair (then `split` makes the test set). Masks carry the image's file name;
  classification labels sit in ``groundtruth/groundtruth.csv`` with columns ``filename,label``.
* BiaPy: ``train/x``, ``train/y``, ``test/x``, optional ``test/y``; paired as InstantDL's (listed here).
* One folder per class (``<class>/*.png``, or ``train/<class>/`` and ``test/<class>/``), classification.
* nnU-Net raw datasets (``imagesTr``, ``labelsTr``, ``imagesTs``, ``dataset.json``; one file per channel).
* OME-Zarr images (``*.zarr`` folders) with their ground truth in their own ``labels/`` group.
* Any other layout described by the config's ``layout:`` globs and label-CSV columns.
* Ground truth paired by folder or stem, fields of view spread over several files, tiles of large
  images: snakescope.convert.fields.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

from snakescope.convert.fields import discover_field_samples
from snakescope.convert.layouts import PAIRED_FOLDERS, choose_layout, layout_samples, no_images_message
from snakescope.convert.samples import Sample, glob_files, image_files, mark_test_images
from snakescope.convert.validate import label_spelling_errors, raise_if_any
from snakescope.io import IMAGE_SUFFIXES, InputError, natural_key
from snakescope.tasks import get_task

log = logging.getLogger(__name__)


def _strip_image_suffix(name: str) -> str:
    """'images/001.bmp' -> '001'; 'cell.1' -> 'cell.1' (only an image extension is removed)."""
    name = Path(name).name
    return Path(name).stem if name.lower().endswith(IMAGE_SUFFIXES) else name


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


def discover_samples(settings: dict) -> list[Sample]:
    """List the samples of one dataset, pairing every image with its mask or label.

    Raises:
        InputError listing every problem found (missing folders, images without masks or labels, labels
        naming missing files, unknown classes), each with the file and the fix.
    """
    data_dir = Path(settings["data_dir"])
    task = settings["task"]
    dense = get_task(task).dense  # per-pixel ground truth files; else one label per image from a CSV
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

    # (split folder, subset, images, masks by stem or None when there is no ground-truth folder, label CSV)
    groups: list[tuple[str, str, list[Path], dict[str, Path] | None, Path]] = []
    truth_name = "groundtruth"  # the mask folder beside each image folder (InstantDL; BiaPy: y)
    if layout.get("images"):
        found = glob_files(data_dir, layout["images"], "images")
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
            for mask in glob_files(data_dir, layout["masks"], "masks"):
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
        elif dense:
            raise InputError(
                f"{data_dir}: task {task} needs a ground-truth image per image, but the config's `layout:` "
                "has `images` and no `masks`. Add layout.masks, a glob matching the masks (e.g. 'masks/*.png')."
            )
        csv_path = (
            data_dir / layout["labels_csv"] if layout.get("labels_csv") else data_dir / "groundtruth.csv"
        )
        groups.append(("", "", images, masks, csv_path))
    else:
        name = choose_layout(data_dir, task, dense, layout)
        if name not in PAIRED_FOLDERS:
            return _checked_labels(layout_samples(name, data_dir, layout), [], settings)
        image_name, truth_name = PAIRED_FOLDERS[name]
        if (data_dir / "train" / image_name).is_dir():
            # val/ (or validation/) joins the training pool: `split` draws the validation images itself.
            folders = [
                f for f in ("train", "val", "validation", "test") if (data_dir / f / image_name).is_dir()
            ]
            roots = {f: data_dir / f for f in folders}
        else:
            roots = {"": data_dir}
        for folder_name, root in roots.items():
            images = image_files(root / image_name)
            if not images:
                raise InputError(no_images_message(root / image_name))
            truth = root / truth_name
            suffix = layout.get("mask_suffix", "")
            masks = (
                {
                    (p.stem[: -len(suffix)] if suffix and p.stem.endswith(suffix) else p.stem): p
                    for p in image_files(truth)
                }
                if truth.is_dir()
                else None
            )
            csv_name = Path(layout["labels_csv"]).name if layout.get("labels_csv") else "groundtruth.csv"
            subset = "test" if folder_name == "test" else ("train" if folder_name else "")
            groups.append((folder_name, subset, images, masks, truth / csv_name))

    errors: list[str] = []
    samples: list[Sample] = []
    stems_seen: Counter = Counter(p.stem for _, _, images, _, _ in groups for p in images)
    for folder_name, subset, images, masks, csv_path in groups:
        folder = images[0].parent
        duplicates = [stem for stem, n in Counter(p.stem for p in images).items() if n > 1]
        if duplicates:
            errors.append(
                f"{folder}: several files share the name(s) {duplicates[:5]} with different "
                "extensions; keep one file per image."
            )
        if not dense:
            if subset == "test" and not csv_path.is_file():
                log.warning(
                    "%s: test images have no labels (%s missing); they will be predicted but not evaluated",
                    folder,
                    csv_path,
                )
                samples += [
                    Sample(_sample_id(folder_name, p.stem, stems_seen), str(p), subset=subset) for p in images
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
            for stem in sorted(set(labels) - image_stems, key=natural_key):
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
                        _sample_id(folder_name, path.stem, stems_seen),
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
                    f"{folder.parent / truth_name}: folder missing. Task {task} needs a mask for every "
                    f"image, with the image's file name, in {folder.parent / truth_name}."
                )
                masks = {}
            else:
                image_stems = {p.stem for p in images}
                orphans = sorted(set(masks) - image_stems, key=natural_key)
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
                                f"({_truth_where(layout, folder, truth_name)}). Add its mask or move the image out."
                            )
            for path in images:
                target = masks.get(path.stem)
                samples.append(
                    Sample(
                        _sample_id(folder_name, path.stem, stems_seen),
                        str(path),
                        target=str(target) if target else "",
                        subset=subset,
                    )
                )

    return _checked_labels(samples, errors, settings)


def _checked_labels(samples: list[Sample], errors: list[str], settings: dict) -> list[Sample]:
    """`samples` after the checks of their class labels, with `layout.test_images` marked.

    Raises:
        InputError listing `errors` and every label that is spelled two ways or not in `classes`.
    """
    if not get_task(settings["task"]).dense and not settings.get("classes"):
        errors += label_spelling_errors(samples)
    if not get_task(settings["task"]).dense and settings.get("classes"):
        allowed = [str(c) for c in settings["classes"]]
        for sample in samples:
            if sample.label and sample.label not in allowed:
                errors.append(
                    f"{sample.image}: label '{sample.label}' is not in `classes` {allowed}. "
                    "Add it to `classes` in the config or fix the label in the CSV (or the class folder's name)."
                )
    raise_if_any(errors)
    return mark_test_images(samples, Path(settings["data_dir"]), settings.get("layout") or {})


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


def _truth_where(layout: dict, image_folder: Path, truth_name: str) -> str:
    if layout.get("masks"):
        suffix = layout.get("mask_suffix", "")
        return f"layout.masks '{layout['masks']}'" + (f" with mask_suffix '{suffix}'" if suffix else "")
    return str(image_folder.parent / truth_name)


def _sample_id(subset: str, stem: str, stems_seen: Counter) -> str:
    # Only prefix when two subsets reuse a file name, so ids stay the user's own names where possible.
    return f"{subset}_{stem}" if subset and stems_seen[stem] > 1 else stem


def list_input_files(settings: dict) -> list[str]:
    """Every image and CSV file under `data_dir`, nnU-Net's dataset.json, and every file of an OME-Zarr
    folder: the inputs whose change should re-run `convert`. An OME-Zarr image edited in place (e.g. a
    label painted in napari) changes chunk files only, so the chunks are listed with the metadata."""
    data_dir = Path(settings["data_dir"])
    if not data_dir.is_dir():
        return []
    suffixes = IMAGE_SUFFIXES + (".csv",)

    def is_input(path: Path) -> bool:
        folders = path.relative_to(data_dir).parts[:-1]
        return (
            path.suffix.lower() in suffixes
            or path.name == "dataset.json"
            or any(folder.lower().endswith(".zarr") for folder in folders)
        )

    return sorted(str(p) for p in data_dir.rglob("*") if p.is_file() and is_input(p))
