"""layouts: the dataset layouts recognised from data_dir's folders alone, and the samples of some of them.

With only `task` and `data_dir` in the config, the folders tell the layout:

* InstantDL (``train/image``, ``train/groundtruth``, ``test/...``, or ``image`` + ``groundtruth``) and BiaPy
  (``train/x``, ``train/y``, ``test/x``, optional ``test/y``): images paired with masks by file name; their
  samples are listed by snakescope.convert.discover.
* One folder per class (torchvision ImageFolder, Keras): ``<class>/*.png``, or ``train/<class>/`` with
  optional ``test/<class>/`` (and ``val/`` or ``validation/``, which join the training pool: `split` draws
  the validation images). Classification only.
* nnU-Net raw dataset: ``imagesTr/<case>_<XXXX><ending>`` (one file per channel), ``labelsTr/<case><ending>``,
  optional ``imagesTs/`` and ``labelsTs/``, and ``dataset.json`` (channel_names, file_ending).
* OME-Zarr: ``*.zarr`` image folders in data_dir (or in ``train/`` and ``test/``); the ground truth of each
  is a label image in its own ``labels/`` group, and `Sample.target` is that label image's folder,
  ``<image>.zarr/labels/<name>``, which snakescope.io.read_image reads like any image.

A data_dir that matches several layouts is an error naming them; `layout.format` chooses one.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from snakescope.convert.samples import MULTI_FILE_SEPARATOR, Sample, existing_files, image_files, safe_id
from snakescope.convert.validate import raise_if_any
from snakescope.io import IMAGE_SUFFIXES, InputError, is_zarr_group, natural_key, ome_zarr_label_names

log = logging.getLogger(__name__)

# name: (how it looks, for the messages; True: dense tasks only, False: classification only, None: both)
LAYOUTS = {
    "instantdl": ("InstantDL (train/image, train/groundtruth, test/image, test/groundtruth)", None),
    "biapy": ("BiaPy (train/x, train/y, test/x, test/y)", True),
    "class_folders": ("one folder per class (<class>/*.png, or train/<class>/ and test/<class>/)", False),
    "nnunet": ("nnU-Net (imagesTr, labelsTr, imagesTs, dataset.json)", True),
    "ome_zarr": ("OME-Zarr (*.zarr images, ground truth in each image's labels/ group)", True),
}
PAIRED_FOLDERS = {"instantdl": ("image", "groundtruth"), "biapy": ("x", "y")}  # image and mask folders
SPLIT_FOLDERS = ("train", "val", "validation", "test")  # val and validation join the training pool
# Folder names that belong to a layout, never a class (a class named so needs `layout:`).
NOT_CLASSES = {
    *SPLIT_FOLDERS,
    "image",
    "groundtruth",
    "x",
    "y",
    "imagesTr",
    "labelsTr",
    "imagesTs",
    "labelsTs",
}
NIFTI_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
CHOOSE_HINT = (
    "Choose one with layout.format in the config ({formats}), or describe the files with layout.images "
    "and layout.masks (layout.labels_csv for classification), or move the other layout's folders out of "
    "data_dir."
)


def describe_folder(folder: Path) -> str:
    entries = sorted(
        p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith(".")
    )
    if not entries:
        return "it is empty"
    shown = ", ".join(entries[:8]) + (f", ... ({len(entries)} entries)" if len(entries) > 8 else "")
    return f"it holds {shown}"


def no_images_message(folder: Path) -> str:
    others = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not others:
        return f"{folder}: the folder is empty. Put your images there ({', '.join(IMAGE_SUFFIXES)})."
    kinds = sorted({p.suffix.lower() or "(no extension)" for p in others})
    return (
        f"{folder}: no image files; it holds {len(others)} file(s) of type {', '.join(kinds[:5])} "
        f"(e.g. {others[0].name}). Supported: {', '.join(IMAGE_SUFFIXES)}; convert your images to TIFF "
        "(e.g. with Fiji or bfconvert)."
    )


def _visible_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _images_below(folder: Path) -> list[Path]:
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return existing_files(found)


def _class_folders(root: Path) -> list[Path]:
    """The subfolders of `root` that hold images and are not a layout's own folders."""
    return [
        d
        for d in _visible_dirs(root)
        if d.name not in NOT_CLASSES
        and not d.name.lower().endswith(".zarr")
        and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.rglob("*"))
    ]


def _zarr_images(folder: Path) -> list[Path]:
    return [d for d in _visible_dirs(folder) if d.name.lower().endswith(".zarr")]


def _shown(items: list[str], limit: int = 4) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def detect_layouts(data_dir: Path) -> dict[str, list[str]]:
    """The layouts whose folders data_dir has, each with the folders (relative to data_dir) that match."""
    found: dict[str, list[str]] = {}
    for base in ("train/", ""):
        if (data_dir / base / "image").is_dir():
            found["instantdl"] = [
                f"{base}{f}/" for f in PAIRED_FOLDERS["instantdl"] if (data_dir / base / f).is_dir()
            ]
            break
    if (data_dir / "train" / "x").is_dir():
        found["biapy"] = [f"train/{f}/" for f in PAIRED_FOLDERS["biapy"] if (data_dir / "train" / f).is_dir()]
    for base in ("train/", ""):
        classes = _class_folders(data_dir / base)
        if len(classes) >= 2:  # one folder of images is not a set of classes
            found["class_folders"] = [f"{base}{d.name}/" for d in classes]
            break
    if (data_dir / "imagesTr").is_dir():
        names = ("imagesTr/", "labelsTr/", "imagesTs/", "dataset.json")
        found["nnunet"] = [n for n in names if (data_dir / n.rstrip("/")).exists()]
    zarrs = [f"{base}{d.name}/" for base in ("", "train/", "test/") for d in _zarr_images(data_dir / base)]
    if zarrs:
        found["ome_zarr"] = zarrs
    return found


def choose_layout(data_dir: Path, task: str, dense: bool, layout: dict) -> str:
    """The one layout data_dir has (or `layout.format`, checked against the folders).

    Raises:
        InputError when none matches, several match, or the only match does not suit the task; each names
        the folders found and the config keys that fix it.
    """
    found = detect_layouts(data_dir)
    formats = ", ".join(LAYOUTS)
    forced = layout.get("format")
    if forced:
        if forced not in found:
            raise InputError(
                f"{data_dir}: layout.format is '{forced}', {LAYOUTS[forced][0]}, but data_dir does not have its "
                f"folders ({describe_folder(data_dir)}). Fix layout.format (one of {formats}) or the folders."
            )
        found = {forced: found[forced]}
    fitting = {name: where for name, where in found.items() if LAYOUTS[name][1] in (None, dense)}
    if len(fitting) > 1:
        listed = "\n  - ".join(f"{LAYOUTS[n][0]}: found {_shown(w)}" for n, w in fitting.items())
        raise InputError(
            f"{data_dir}: matches {len(fitting)} dataset layouts, so which one is meant is unclear:\n  - {listed}\n"
            + CHOOSE_HINT.format(formats=", ".join(f"format: {n}" for n in fitting))
        )
    if fitting:
        return next(iter(fitting))
    if "class_folders" in found:
        classes = found["class_folders"]
        raise InputError(
            f"{data_dir}: looks like one folder per class ({_shown(classes)}), a classification layout, but task "
            f"{task} needs a mask (ground-truth image) for every image. If these folders hold images and masks, "
            f"describe them with layout.images and layout.masks (e.g. images: '{classes[0]}*.png', masks: "
            f"'{classes[-1]}*.png'); or use a segmentation layout: InstantDL (image/ + groundtruth/), BiaPy "
            "(train/x, train/y), nnU-Net (imagesTr, labelsTr) or OME-Zarr with labels."
        )
    if found:
        name, where = next(iter(found.items()))
        raise InputError(
            f"{data_dir}: has the {LAYOUTS[name][0]} layout ({_shown(where)}), which holds per-pixel ground "
            f"truth, but task {task} needs one label per image. Put the images in one folder per class "
            "(<class>/ or train/<class>/ and test/<class>/), or name the labels in a CSV (layout.images and "
            "layout.labels_csv)."
        )
    raise InputError(
        f"{data_dir}: no 'image' or 'train/image' folder ({describe_folder(data_dir)}), nor another known "
        "layout. Use the InstantDL layout (train/image, train/groundtruth, test/image, test/groundtruth, or "
        "image + groundtruth); for classification one folder per class (<class>/*.png, or train/<class>/ and "
        "test/<class>/); BiaPy (train/x, train/y, test/x, test/y); nnU-Net (imagesTr, labelsTr, imagesTs, "
        "dataset.json); or OME-Zarr images (*.zarr with a labels/ group). Or describe yours with `layout:` in "
        "the config (layout.images, layout.masks, layout.labels_csv)."
    )


def layout_samples(name: str, data_dir: Path, layout: dict) -> list[Sample]:
    """The samples of a layout this module lists (class_folders, nnunet, ome_zarr)."""
    listers = {
        "class_folders": _class_folder_samples,
        "nnunet": _nnunet_samples,
        "ome_zarr": _ome_zarr_samples,
    }
    return listers[name](data_dir, layout)


def _roots(data_dir: Path, nested: bool) -> list[tuple[str, str, Path]]:
    """(folder name, subset, folder) of each split folder present; ("", "", data_dir) when not nested."""
    if not nested:
        return [("", "", data_dir)]
    return [
        (n, "test" if n == "test" else "train", data_dir / n)
        for n in SPLIT_FOLDERS
        if (data_dir / n).is_dir()
    ]


def _unique_ids(keys: list[tuple[str, ...]]) -> list[str]:
    """One id per key (folders..., stem): the stem where it is unique, else the whole key joined.

    Raises:
        InputError when two names still give one id (e.g. 'a b' and 'a_b': ids keep letters, digits, _.-).
    """
    stems = Counter(key[-1] for key in keys)
    ids = [safe_id(key[-1] if stems[key[-1]] == 1 else "_".join(k for k in key if k)) for key in keys]
    clashes = [i for i, n in Counter(ids).items() if n > 1]
    if clashes:
        names = [key for key, i in zip(keys, ids, strict=True) if i == clashes[0]]
        raise InputError(
            f"{len(clashes)} sample id(s) shared by several files, e.g. '{clashes[0]}' for {names}: ids keep "
            "letters, digits and _.- only. Rename the files so that their names differ in those."
        )
    return ids


def _class_folder_samples(data_dir: Path, layout: dict) -> list[Sample]:
    errors: list[str] = []
    found: list[tuple[str, str, str, Path]] = []  # (split folder, subset, class, image)
    for folder_name, subset, root in _roots(data_dir, len(_class_folders(data_dir / "train")) >= 2):
        for class_dir in _class_folders(root):
            images = _images_below(class_dir)
            for stem, n in Counter(
                p.relative_to(class_dir).with_suffix("").as_posix() for p in images
            ).items():
                if n > 1:
                    errors.append(
                        f"{class_dir}: {n} files named '{stem}' with different extensions; keep one."
                    )
            found += [(folder_name, subset, class_dir.name, p) for p in images]
        loose = image_files(root)
        if loose and subset == "test":
            log.warning(
                "%s: %d image(s) outside class folders: predicted but not evaluated", root, len(loose)
            )
            found += [(folder_name, subset, "", p) for p in loose]
        elif loose:
            log.warning(
                "%s: %d image(s) directly in the folder, outside the class folders, are not used (e.g. %s); "
                "move each into its class's folder",
                root,
                len(loose),
                loose[0].name,
            )
    trained = {label for _, subset, label, _ in found if subset != "test"}
    for label in sorted({label for _, subset, label, _ in found if subset == "test" and label} - trained):
        errors.append(
            f"{data_dir / 'test' / label}: class '{label}' has no folder among the training images "
            f"(train/ has {sorted(trained, key=natural_key)}). Add its training images or fix the folder name."
        )
    raise_if_any(errors)
    relative = [p.relative_to(data_dir / f / label) for f, _, label, p in found]  # within the class folder
    ids = _unique_ids(
        [(f, label, *r.parent.parts, r.stem) for (f, _, label, _), r in zip(found, relative, strict=True)]
    )
    samples = [
        Sample(sample_id, str(path), label=label, subset=subset)
        for sample_id, (_, subset, label, path) in zip(ids, found, strict=True)
    ]
    log.info(
        "class folders: %d images of %d classes %s",
        len(samples),
        len(trained),
        sorted(trained, key=natural_key),
    )
    return samples


def _read_dataset_json(data_dir: Path) -> dict:
    path = data_dir / "dataset.json"
    if not path.is_file():
        log.warning(
            "%s: no dataset.json; the channels and file ending are taken from the file names", data_dir
        )
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(
            f"{path}: not valid JSON ({error}). Fix it: nnU-Net's dataset.json names channel_names, labels, "
            "numTraining and file_ending."
        ) from error
    if not isinstance(info, dict):
        raise InputError(f"{path}: holds a {type(info).__name__}, not a JSON object with channel_names.")
    return info


def _channel_names(info: dict, path: Path) -> list[str]:
    """The channel names of dataset.json in channel order (nnU-Net v2 channel_names, v1 modality)."""
    names = info.get("channel_names") or info.get("modality") or {}
    try:
        return [str(names[key]) for key in sorted(names, key=int)]
    except (ValueError, TypeError, AttributeError) as error:
        raise InputError(
            f'{path}: channel_names must map channel numbers to names, e.g. {{"0": "DAPI", "1": "GFP"}}; '
            f"it is {names!r}."
        ) from error


def _file_ending(info: dict, images_dir: Path) -> str:
    ending = str(info.get("file_ending") or "")
    if not ending:  # no dataset.json (or an nnU-Net v1 one, always NIfTI): the first image's ending
        names = sorted(p.name.lower() for p in images_dir.iterdir() if not p.name.startswith("."))
        ending = next((e for n in names for e in NIFTI_ENDINGS + IMAGE_SUFFIXES if n.endswith(e)), "")
        if not ending:
            raise InputError(no_images_message(images_dir))
    if ending.lower() in NIFTI_ENDINGS:
        raise InputError(
            f"{images_dir}: the nnU-Net dataset holds {ending} files; NIfTI (and other medical volume formats) "
            f"are not supported: snakescope reads {', '.join(IMAGE_SUFFIXES)}. Convert every file to TIFF under "
            f"the same name (case_0000{ending} -> case_0000.tif, e.g. with Fiji or SimpleITK's WriteImage), the "
            'labels too, and set "file_ending": ".tif" in dataset.json.'
        )
    if ending.lower() not in IMAGE_SUFFIXES:
        raise InputError(
            f"{images_dir}: file_ending '{ending}' is not a type snakescope reads ({', '.join(IMAGE_SUFFIXES)}). "
            "Convert the images and labels to TIFF and set file_ending in dataset.json."
        )
    return ending


def _nnunet_cases(folder: Path, ending: str, channels: list[str], errors: list[str]) -> dict[str, list[Path]]:
    """{case id: its files in channel order} of an imagesTr/imagesTs folder; problems go to `errors`."""
    by_case: dict[str, dict[int, Path]] = {}
    for path in existing_files(p for p in folder.iterdir() if not p.name.startswith(".")):
        if not path.name.lower().endswith(ending.lower()):
            if path.name.lower().endswith(IMAGE_SUFFIXES + NIFTI_ENDINGS):
                errors.append(
                    f"{path}: not a {ending} file, the file_ending of dataset.json. Convert or remove it."
                )
            continue
        case, sep, channel = path.name[: -len(ending)].rpartition("_")
        if not sep or not case or len(channel) != 4 or not channel.isdigit():
            errors.append(
                f"{path}: not named <case>_<channel>{ending} (e.g. cell01_0000{ending}); nnU-Net image names "
                "end in a 4-digit channel number. Rename it."
            )
            continue
        by_case.setdefault(case, {})[int(channel)] = path
    n_channels = len(channels) or max((max(c) + 1 for c in by_case.values()), default=1)
    if n_channels > 1 and by_case and all(set(c) == {0} for c in by_case.values()):
        # nnU-Net's 2D PNG datasets store RGB as one _0000 file with channel_names R, G, B.
        log.info("%s: one file per case holds all %d channels %s", folder, n_channels, channels)
        return {case: [files[0]] for case, files in by_case.items()}
    cases: dict[str, list[Path]] = {}
    for case in sorted(by_case, key=natural_key):
        files = by_case[case]
        for channel in sorted(set(files) - set(range(n_channels))):
            errors.append(
                f"{files[channel]}: channel {channel}, but dataset.json names {n_channels} channel(s) "
                f"{channels}. Add it to channel_names or remove the file."
            )
        missing = [c for c in range(n_channels) if c not in files]
        for channel in missing:
            name = f" ('{channels[channel]}')" if channels else ""
            errors.append(
                f"{folder / f'{case}_{channel:04d}{ending}'}: missing; case '{case}' needs channel {channel}{name} "
                f"of the {n_channels} channels {channels or ''} (one file per channel). Add the file or remove "
                "the case's other files."
            )
        if not missing:
            cases[case] = [files[c] for c in range(n_channels)]
    return cases


def _nnunet_labels(folder: Path, ending: str) -> dict[str, Path] | None:
    if not folder.is_dir():
        return None
    files = existing_files(p for p in folder.iterdir() if p.name.lower().endswith(ending.lower()))
    return {p.name[: -len(ending)]: p for p in files if not p.name.startswith(".")}


def _nnunet_samples(data_dir: Path, layout: dict) -> list[Sample]:
    info = _read_dataset_json(data_dir)
    channels = _channel_names(info, data_dir / "dataset.json")
    ending = _file_ending(info, data_dir / "imagesTr")
    errors: list[str] = []
    parts = [("train", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")]
    found: list[tuple[str, str, list[Path], Path | None]] = []  # (subset, case, channel files, label)
    for subset, images_name, labels_name in parts:
        if not (data_dir / images_name).is_dir():
            continue
        cases = _nnunet_cases(data_dir / images_name, ending, channels, errors)
        labels = _nnunet_labels(data_dir / labels_name, ending)
        if labels is None and subset == "train":
            errors.append(
                f"{data_dir / labels_name}: folder missing. Every training case needs its label image "
                f"{labels_name}/<case>{ending}."
            )
        elif labels is None:
            log.warning("%s: no %s; test cases are predicted but not evaluated", data_dir, labels_name)
        for case in sorted(set(labels or {}) - set(cases), key=natural_key):
            errors.append(
                f"{labels[case]}: label without images (no {images_name}/{case}_0000{ending}). Remove it."
            )
        for case, files in cases.items():
            if labels is not None and case not in labels:
                errors.append(
                    f"{data_dir / labels_name / (case + ending)}: missing; case '{case}' needs its label."
                )
            elif any(MULTI_FILE_SEPARATOR in str(p) for p in files):
                errors.append(
                    f"{files[0]}: the path contains '{MULTI_FILE_SEPARATOR}'; rename the folder or files."
                )
            else:
                found.append((subset, case, files, (labels or {}).get(case)))
    raise_if_any(errors)
    ids = _unique_ids([(subset, case) for subset, case, _, _ in found])
    return [
        Sample(sample_id, MULTI_FILE_SEPARATOR.join(map(str, files)), target=str(label or ""), subset=subset)
        for sample_id, (subset, _, files, label) in zip(ids, found, strict=True)
    ]


def _ome_zarr_samples(data_dir: Path, layout: dict) -> list[Sample]:
    chosen = layout.get("zarr_label")
    errors: list[str] = []
    found: list[tuple[str, str, Path, str]] = []  # (split folder, subset, image, target)
    for folder_name, subset, root in _roots(data_dir, bool(_zarr_images(data_dir / "train"))):
        for image in _zarr_images(root):
            names = ome_zarr_label_names(image)
            target = ""
            if not names and subset == "test":
                log.warning("%s: no label image; predicted but not evaluated", image)
            elif not names:
                errors.append(
                    f"{image}: no label image (no labels/ group). The ground truth of an OME-Zarr image is a "
                    "label image inside it, <image>.zarr/labels/<name> (napari and ome-zarr-py write one); add "
                    "it, or put the image in a test/ folder to predict it without evaluation."
                )
            elif chosen and chosen not in names:
                errors.append(f"{image}: no label image '{chosen}' (layout.zarr_label); it has {names}.")
            elif not chosen and len(names) > 1:
                errors.append(
                    f"{image}: several label images {names}; set layout.zarr_label to the one to learn."
                )
            else:
                target = str(image / "labels" / (chosen or names[0]))
                if not is_zarr_group(target):
                    errors.append(f"{target}: listed in {image / 'labels'} but not there. Write it again.")
            found.append((folder_name, subset, image, target))
    raise_if_any(errors)
    stems = [
        image.name[: -len(".ome.zarr")] if image.name.lower().endswith(".ome.zarr") else image.stem
        for _, _, image, _ in found
    ]
    ids = _unique_ids([(f, stem) for (f, _, _, _), stem in zip(found, stems, strict=True)])
    return [
        Sample(sample_id, str(image), target=target, subset=subset)
        for sample_id, (_, subset, image, target) in zip(ids, found, strict=True)
    ]
