"""fields: layouts beyond one-image-one-mask, for regression and 3D datasets.

Ground truth paired by folder or stem, one field of view spread over several files named by key-value
lists, and a fixed test set; configured by the `layout:` keys targets, pair_by, test_images,
channel_key, slice_key, field_keys, input_channels, target_channel (described in the schema). Tiles of
a large image with a spatial train/test split: snakescope.convert.read.tile_regions.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from snakescope.convert.samples import MULTI_FILE_SEPARATOR, Sample, glob_files, safe_id
from snakescope.convert.validate import raise_if_any
from snakescope.io import IMAGE_SUFFIXES, InputError, natural_key
from snakescope.tasks import get_task

log = logging.getLogger(__name__)


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
    files = [p for p in glob_files(data_dir, layout["images"], "images") if p.suffix.lower() in IMAGE_SUFFIXES]
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
    targets = [p for p in glob_files(data_dir, layout["targets"], "targets") if p.suffix.lower() in IMAGE_SUFFIXES]
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
        samples.append(Sample(safe_id(sample_id), str(image), target=str(by_key[key]), group=group))
    unused = sorted(set(by_key) - {(p.parent.name if pair_by == "folder" else p.stem) for p in images})
    if unused:
        log.info(
            "%d target(s) have no image among layout.images and are not used: %s", len(unused), unused[:10]
        )
    raise_if_any(errors)
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
    if get_task(task).dense and not target_channel:
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
    raise_if_any(errors)
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
    raise_if_any(errors)
    varying = [i for i in range(len(field_keys)) if len({key[i] for key in fields}) > 1]
    samples = []
    for key, paths in sorted(fields.items()):
        shown = [key[i] for i in varying] or (list(key) if layout.get("field_keys") else ["field"])
        name = safe_id("_".join(shown))
        input_paths = []
        for channel in inputs:
            members = [p for p in paths if parsed[p][channel_key] == channel]
            if not members:
                errors.append(f"field {name} ({paths[0].parent}): no file with {channel_key}-{channel}.")
            order = (
                (lambda p: natural_key(parsed[p].get(slice_key, "")))
                if slice_key
                else (lambda p: natural_key(p.name))
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
    raise_if_any(errors)
    return samples
