"""A corpus of bad (and borderline) inputs, each with its expected outcome (issue 14).

Every case builds a small dataset and config in a temporary folder and runs what a user's run would run
first: the configuration check (`resolve_datasets`), `convert` and `split`. The outcome is one of

* STOP: a UserError whose message names the file or key (`names`) and says what to do (`fix`);
* WARN: the run goes on, and a warning naming the file says what is odd (`names`, `fix` in the warning);
* ACCEPT: the run goes on without a warning about the data.

No case may end in another exception (a traceback for the user), and no input file may change.
A handful of cases go through snakemake in tests/workflow/test_bad_input_workflow.py.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from snakescope.config import resolve_datasets, stage_settings
from snakescope.convert import convert_dataset
from snakescope.io import UserError, file_checksum, read_image
from snakescope.split import write_split

STOP, WARN, ACCEPT = "stop", "warn", "accept"
SIZE = 32


# --- builders ---------------------------------------------------------------------------------------


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)
    return path


def noise(seed: int, shape=(SIZE, SIZE), dtype=np.uint8) -> np.ndarray:
    high = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1
    values = np.random.default_rng(seed).random(shape) * high
    return values.astype(dtype)


def rgb(seed: int) -> np.ndarray:
    return noise(seed, (SIZE, SIZE, 3))


def class_mask(seed: int, values=(0, 128, 255)) -> np.ndarray:
    """A cell: background, a cytoplasm ring and a nucleus, at a position set by `seed`."""
    mask = np.full((SIZE, SIZE), values[0], np.uint8)
    o = seed % 5
    mask[4 + o : 24 + o, 4:24] = values[1]
    mask[10 + o : 18 + o, 10:18] = values[2]
    return mask


def instance_mask(seed: int, n: int = 3) -> np.ndarray:
    """`n` separate square objects with ids 1..n, on a grid."""
    mask = np.zeros((SIZE, SIZE), np.uint16)
    per_row = int(np.ceil(np.sqrt(n)))
    spacing = (SIZE - 1) // per_row
    for k in range(n):
        top, left = 1 + spacing * (k // per_row), 1 + spacing * (k % per_row) + seed % 2
        mask[top : top + spacing - 2, left : left + spacing - 2] = k + 1
    return mask


def write_csv(path: Path, rows: list[list], header=("filename", "label"), encoding="utf-8", delimiter=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def classification(root: Path, n: int = 12, labels=None, image=rgb, suffix=".png", **csv_options) -> Path:
    labels = labels or ["a", "b"] * (n // 2)
    for i in range(n):
        save(root / "image" / f"im{i:02d}{suffix}", image(i))
    write_csv(root / "groundtruth" / "groundtruth.csv", [[f"im{i:02d}{suffix}", labels[i]] for i in range(n)],
              **csv_options)
    return root


def segmentation(root: Path, n: int = 12, mask=class_mask, image=rgb, mask_suffix=".png") -> Path:
    for i in range(n):
        save(root / "image" / f"im{i:02d}.png", image(i))
        save(root / "groundtruth" / f"im{i:02d}{mask_suffix}", mask(i))
    return root


def regression(root: Path, n: int = 12, target=None) -> Path:
    for i in range(n):
        save(root / "image" / f"im{i:02d}.tif", noise(i, dtype=np.uint16))
        save(root / "groundtruth" / f"im{i:02d}.tif", target(i) if target else noise(100 + i, dtype=np.float32))
    return root


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


# --- the cases --------------------------------------------------------------------------------------


@dataclass
class Case:
    """`build(root)` writes the data under `root` and returns the config (data_dir filled in if absent)."""

    id: str
    build: Callable[[Path], dict]
    outcome: str
    names: list[str] = field(default_factory=list)  # the file or key the message names (parts of it)
    fix: str = ""  # words of the fix the message proposes
    fill_data_dir: bool = True  # give the config the case's data folder when it names none


def cls(**extra):
    return {"task": "classification", "resize": [SIZE, SIZE], **extra}


def seg(**extra):
    return {"task": "segmentation", "patch_size": [SIZE, SIZE], **extra}


def inst(**extra):
    return {"task": "instance_segmentation", "patch_size": [SIZE, SIZE], **extra}


def reg(**extra):
    return {"task": "regression", "patch_size": [SIZE, SIZE], **extra}


def config_case(id, extra, names, fix="", base=seg):
    """A configuration mistake on a good segmentation dataset."""
    return Case(id, lambda root: (segmentation(root), base(**extra))[1], STOP, names, fix)


def on_data(build_data, config):
    return lambda root: (build_data(root), config)[1]


def _first(root: Path, sub="image") -> Path:
    return sorted((root / sub).iterdir())[0]


def _blank_one(root: Path):
    classification(root)
    save(_first(root), np.zeros((SIZE, SIZE, 3), np.uint8))


def _all_blank(root: Path):
    classification(root, image=lambda i: np.full((SIZE, SIZE, 3), 7, np.uint8))


def _broken_link(root: Path):
    classification(root)
    os.symlink(root / "elsewhere" / "gone.png", root / "image" / "im99.png")
    with open(root / "groundtruth" / "groundtruth.csv", "a") as fh:
        fh.write("im99.png,a\n")


def _nan_image(root: Path):
    classification(root, image=lambda i: noise(i, dtype=np.float32), suffix=".tif")
    bad = noise(1, dtype=np.float32)
    bad[3, 3] = np.nan
    save(_first(root), bad)


def _channels_differ(root: Path):
    classification(root)
    save(_first(root), noise(0))


def _z_stack(root: Path):
    classification(root, suffix=".tif", image=lambda i: noise(i))
    tifffile.imwrite(_first(root), noise(0, (5, SIZE, SIZE)), metadata={"axes": "ZYX"})


def _pages(root: Path):
    classification(root, suffix=".tif", image=lambda i: noise(i, (5, SIZE, SIZE)))


def _duplicate_stems(root: Path):
    classification(root)
    save(root / "image" / "im00.tif", noise(3))


def _test_without_labels(root: Path):
    classification(root / "train")
    for i in range(3):
        save(root / "test" / "image" / f"t{i}.png", rgb(50 + i))


def _mask_shape(root: Path):
    segmentation(root)
    save(_first(root, "groundtruth"), np.zeros((SIZE, SIZE + 4), np.uint8))


def _colour_mask(root: Path):
    segmentation(root)
    save(_first(root, "groundtruth"), rgb(3))


def _fractional_mask(root: Path):
    segmentation(root, mask=lambda i: class_mask(i).astype(np.float32) / 255, mask_suffix=".tif")


def _nan_mask(root: Path):
    segmentation(root)
    bad = class_mask(0).astype(np.float32)
    bad[0, 0] = np.nan
    (root / "groundtruth" / "im00.png").unlink()
    save(root / "groundtruth" / "im00.tif", bad)


def _noisy_masks(root: Path):
    """Masks that went through JPEG: a few per cent of pixels (the edges) a little off their label."""

    def noisy(i: int) -> np.ndarray:
        rng = np.random.default_rng(i)
        mask = class_mask(i).astype(int)
        hit = rng.random(mask.shape) < 0.03
        mask[hit] += rng.integers(-3, 4, hit.sum())
        return np.clip(mask, 0, 255).astype(np.uint8)

    segmentation(root, mask=noisy)


def _orphan_mask(root: Path):
    segmentation(root)
    save(root / "groundtruth" / "extra.png", class_mask(1))


def _mask_suffix(root: Path):
    for i in range(12):
        save(root / "image" / f"im{i:02d}.png", rgb(i))
        save(root / "groundtruth" / f"im{i:02d}_mask.png", class_mask(i))


def _missing_mask(root: Path):
    segmentation(root)
    _first(root, "groundtruth").unlink()


def _truncated_mask(root: Path):
    segmentation(root, mask_suffix=".tif")
    truncate(_first(root, "groundtruth"))


def _csv(rows, **options):
    def build(root: Path):
        for i in range(12):
            save(root / "image" / f"im{i:02d}.png", rgb(i))
        write_csv(root / "groundtruth" / "groundtruth.csv", rows, **options)

    return build


GOOD_ROWS = [[f"im{i:02d}.png", "ab"[i % 2]] for i in range(12)]


def _raw_csv(text: bytes):
    def build(root: Path):
        for i in range(12):
            save(root / "image" / f"im{i:02d}.png", rgb(i))
        (root / "groundtruth").mkdir(parents=True)
        (root / "groundtruth" / "groundtruth.csv").write_bytes(text)

    return build


def _wrong_extension(root: Path):
    classification(root)
    first = _first(root)
    first.rename(first.with_suffix(".tif"))
    rows = (root / "groundtruth" / "groundtruth.csv").read_text().replace("im00.png", "im00.tif")
    (root / "groundtruth" / "groundtruth.csv").write_text(rows)


def _empty_file(root: Path):
    classification(root)
    _first(root).write_bytes(b"")


def _truncated_image(root: Path):
    classification(root)
    truncate(_first(root))


def _mask_jpeg(root: Path):
    segmentation(root, mask_suffix=".jpg")


def _instances_for_semantic(root: Path):
    segmentation(root, mask=lambda i: instance_mask(i, n=24))


def _regression_shape(root: Path):
    regression(root)
    save(_first(root, "groundtruth"), noise(1, (SIZE, SIZE + 2), np.float32))


def _regression_channels(root: Path):
    regression(root)
    save(_first(root, "groundtruth"), noise(1, (2, SIZE, SIZE), np.float32))


def _regression_unpaired(root: Path):
    regression(root)
    _first(root, "groundtruth").unlink()


CASES = [
    # --- configuration ---
    Case("config_missing_task", lambda root: {"data_dir": str(root)}, STOP, ["`task`"], "Give `task`"),
    Case("config_missing_data_dir", lambda root: {"task": "segmentation"}, STOP, ["`data_dir`"], "Give `task`",
         fill_data_dir=False),
    config_case("config_task_typo", {"task": "segmentaton"}, ["task", "segmentaton"], "Did you mean 'segmentation'"),
    config_case("config_unknown_key", {"epocs": 3}, ["epocs"], "Did you mean 'epochs'"),
    config_case("config_unknown_layout_key", {"layout": {"image": "x/*.png"}}, ["layout", "image"], "Did you mean"),
    config_case("config_zero_epochs", {"epochs": 0}, ["epochs"], ">= 1"),
    config_case("config_epochs_text", {"epochs": "ten"}, ["epochs", "'ten'"], "a whole number"),
    config_case("config_learning_rate_1e-3", {"learning_rate": "1e-3"}, ["learning_rate"], "write 0.001"),
    config_case("config_negative_learning_rate", {"learning_rate": -1}, ["learning_rate"], "> 0"),
    config_case("config_zero_batch", {"batch_size": 0}, ["batch_size"], ">= 1"),
    config_case("config_patch_too_small", {"patch_size": [16, 16], "models": ["unet"]}, ["patch_size [16, 16]", "unet"],
                "at least 32"),
    config_case("config_patch_not_multiple", {"patch_size": [40, 40], "models": ["unet"]}, ["patch_size [40, 40]"],
                "multiple of 16"),
    config_case("config_patch_fits_no_model", {"patch_size": [20, 20]}, ["patch_size [20, 20]"], "fits no network"),
    config_case("config_model_for_other_task", {"models": ["resnet50"]}, ["resnet50"], "models for segmentation"),
    config_case("config_unknown_model", {"models": ["resnet5"]}, ["resnet5"], "models for segmentation"),
    config_case("config_2d_model_in_3d", {"models": ["maskrcnn"], "patch_size": [32, 64, 64]}, ["maskrcnn"], "2D only",
                base=inst),
    config_case("config_loss_for_other_task", {"loss": "mse"}, ["loss 'mse'"], "dice_cross_entropy"),
    config_case("config_threshold_range", {"threshold": 1.5}, ["threshold"], "(0, 1)"),
    config_case("config_threshold_word", {"threshold": "otsuu"}, ["threshold"], "'otsu'"),
    config_case("config_resize_axes", {"resize": [32, 32, 32]}, ["resize [32, 32, 32]"], "[height, width]"),
    config_case("config_augmentation_typo", {"augmentations": ["flipp"]}, ["flipp"], "Did you mean 'flip'"),
    config_case("config_normalisation_typo", {"normalisation": "zscor"}, ["zscor"], "Did you mean 'zscore'"),
    Case("config_dataset_name", lambda root: {"datasets": {"my data": {**seg(), "data_dir": str(root)}}}, STOP,
         ["my data"], "letters, digits"),
    Case("config_data_dir_and_datasets", lambda root: {**seg(), "data_dir": str(root),
                                                       "datasets": {"x": {**seg(), "data_dir": str(root)}}},
         STOP, ["`data_dir`"], "not both"),
    config_case("config_test_fraction", {"test_fraction": 1.5}, ["test_fraction"], "<"),
    config_case("config_missing_weights", {"pretrained_weights": "weights/none.pt"}, ["pretrained_weights",
                "none.pt"], "existing local file"),
    config_case("config_missing_plan", {"plan": "my_plan.json"}, ["plan", "my_plan.json"], "existing local file"),
    config_case("config_empty_seeds", {"seeds": []}, ["seeds"], "at least 1"),
    config_case("config_device", {"device": "gpu"}, ["device", "'gpu'"], "auto, cpu, cuda"),
    config_case("config_zero_processes", {"train_processes": 0}, ["train_processes"], ">= 1"),
    config_case("config_batch_not_shared", {"train_processes": 3, "batch_size": 8}, ["batch_size 8", "3 training"],
                "multiple of train_processes"),
    config_case("config_zero_mc_samples", {"mc_samples": 0}, ["mc_samples"], ">="),
    config_case("config_dropout", {"dropout": 1.5}, ["dropout"], "<"),
    config_case("config_one_class", {"num_classes": 1}, ["num_classes"], ">= 2"),
    config_case("config_layout_not_text", {"layout": {"images": 3}}, ["layout/images"], "a text"),
    config_case("config_models_empty", {"models": []}, ["models"], "at least 1"),
    # --- classification: folders, label files, pixels ---
    Case("empty_image_folder", lambda root: ((root / "image").mkdir(parents=True), cls())[1], STOP, ["image"],
         "Put your images there"),
    Case("no_image_folder", lambda root: ((root / "photos").mkdir(parents=True), cls())[1], STOP, ["'image'"],
         "layout"),
    Case("folder_of_text_files", lambda root: ((root / "image").mkdir(parents=True),
                                               (root / "image" / "a.txt").write_text("x"), cls())[2], STOP,
         ["image"], "convert your images to TIFF"),
    Case("csv_missing", lambda root: ([save(root / "image" / f"{i}.png", rgb(i)) for i in range(4)], cls())[1],
         STOP, ["groundtruth.csv"], "label file not found"),
    Case("csv_wrong_column", on_data(_csv(GOOD_ROWS, header=("file", "label")), cls()), STOP,
         ["groundtruth.csv", "'filename'"], "layout.filename_column"),
    Case("csv_empty", on_data(_raw_csv(b""), cls()), STOP, ["groundtruth.csv"], "Add a header line"),
    Case("csv_header_only", on_data(_raw_csv(b"filename,label\n"), cls()), STOP, ["groundtruth.csv"],
         "Add one row per image"),
    Case("csv_row_without_label", on_data(_csv(GOOD_ROWS[:11] + [["im11.png", ""]]), cls()), STOP,
         ["groundtruth.csv, line 13", "im11.png"], "Fill it in"),
    Case("csv_duplicate_row", on_data(_csv(GOOD_ROWS + [GOOD_ROWS[0]]), cls()), STOP, ["groundtruth.csv",
         "im00.png"], "Keep one row"),
    Case("csv_names_missing_image", on_data(_csv(GOOD_ROWS + [["ghost.png", "a"]]), cls()), STOP, ["ghost"],
         "add the image, or remove the row"),
    Case("image_without_label", on_data(_csv(GOOD_ROWS[:11]), cls()), STOP, ["im11.png"], "Add a row for it"),
    Case("label_case_typo", lambda root: (classification(root, labels=["a", "b"] * 5 + ["a", "B"]), cls())[1],
         STOP, ["'B'", "'b'", "im11.png"], "Write one spelling"),
    Case("label_trailing_space", on_data(_csv([[r[0], r[1] + " "] for r in GOOD_ROWS]), cls()), ACCEPT),
    Case("label_not_in_classes", lambda root: (classification(root), cls(classes=["a", "c"]))[1], STOP,
         ["label 'b'", "`classes`"], "Add it to `classes`"),
    Case("csv_not_utf8", on_data(_raw_csv("filename,label\nim00.png,é\n".encode("latin-1")), cls()), STOP,
         ["groundtruth.csv", "not UTF-8"], "CSV UTF-8"),
    Case("csv_semicolons", on_data(_csv(GOOD_ROWS, delimiter=";"), cls()), ACCEPT),
    Case("csv_with_bom", on_data(_csv(GOOD_ROWS, encoding="utf-8-sig"), cls()), ACCEPT),
    Case("truncated_image", on_data(_truncated_image, cls()), STOP, ["im00.png"], "copy it again"),
    Case("empty_image_file", on_data(_empty_file, cls()), STOP, ["im00.png", "0 bytes"], "Copy it again"),
    Case("png_named_tif", on_data(_wrong_extension, cls()), STOP, ["im00.tif", "content is PNG"],
         "Rename the file"),
    Case("broken_symlink", on_data(_broken_link, cls()), STOP, ["im99.png", "gone.png"], "Restore the files"),
    Case("nan_pixels", on_data(_nan_image, cls()), STOP, ["im00.tif", "NaN"], "Replace them"),
    Case("every_image_blank", on_data(_all_blank, cls()), STOP, ["im00.png", "constant"], "Check the export"),
    Case("one_blank_image", on_data(_blank_one, cls()), WARN, ["im00.png", "constant"], "remove it"),
    Case("channels_differ", on_data(_channels_differ, cls()), STOP, ["im00.png", "1 channel(s)"],
         "same channels"),
    Case("rgba_constant_alpha", lambda root: (classification(root, image=lambda i: np.dstack(
        [rgb(i), np.full((SIZE, SIZE), 255, np.uint8)])), cls())[1], ACCEPT),
    Case("sixteen_bit", lambda root: (classification(root, image=lambda i: noise(i, dtype=np.uint16),
                                                     suffix=".tif"), cls())[1], ACCEPT),
    Case("float_images", lambda root: (classification(root, image=lambda i: noise(i, dtype=np.float32),
                                                      suffix=".tif"), cls())[1], ACCEPT),
    Case("z_stack_for_2d", on_data(_z_stack, cls()), STOP, ["im00.tif", "Z-stack"], "patch_size three values"),
    Case("pages_without_axes", on_data(_pages, cls()), WARN, ["im00.tif", "without axis metadata"],
         "give patch_size three values"),
    Case("four_d_for_2d", lambda root: (classification(root, suffix=".tif",
                                                       image=lambda i: noise(i, (2, 3, SIZE, SIZE))), cls())[1],
         STOP, ["im00.tif", "not a 2D image"], "Save one plane per file"),
    Case("duplicate_stems", on_data(_duplicate_stems, cls()), STOP, ["'im00'"], "keep one file per image"),
    Case("test_images_without_labels", on_data(_test_without_labels, cls()), WARN, ["test images have no labels"],
         "predicted but not evaluated"),
    Case("mixed_sizes_resized", lambda root: (classification(root, image=lambda i: noise(i, (SIZE + i, SIZE, 3))),
                                              cls())[1], ACCEPT),
    Case("too_few_images_to_split", lambda root: (classification(root, n=2), cls())[1], STOP,
         ["only 2 image(s)"], "Add images"),
    # --- segmentation ---
    Case("masks_folder_missing", lambda root: ([save(root / "image" / f"{i}.png", rgb(i)) for i in range(4)],
                                               seg())[1], STOP, ["groundtruth"], "needs a mask for every image"),
    Case("image_without_mask", on_data(_missing_mask, seg()), STOP, ["im00.png"], "Add its mask"),
    Case("mask_without_image", on_data(_orphan_mask, seg()), STOP, ["extra.png"], "Rename or remove the mask"),
    Case("mask_suffix_hint", on_data(_mask_suffix, seg()), STOP, ["_mask"], "layout.mask_suffix: '_mask'"),
    Case("mask_suffix_set", on_data(_mask_suffix, seg(layout={"mask_suffix": "_mask"})), ACCEPT),
    Case("mask_shape_differs", on_data(_mask_shape, seg()), STOP, ["im00.png", "mask shape"],
         "must have the same height and width"),
    Case("colour_mask", on_data(_colour_mask, seg()), STOP, ["im00.png", "colour mask"], "single-channel"),
    Case("fractional_mask", on_data(_fractional_mask, seg()), STOP, ["fractional values"], "task: regression"),
    Case("nan_mask", on_data(_nan_mask, seg()), STOP, ["im00.tif", "NaN"], "integer labels"),
    Case("masks_all_background", lambda root: (segmentation(root, mask=lambda i: np.zeros((SIZE, SIZE), np.uint8)),
                                               seg())[1], STOP, ["only the value"], "Check the ground-truth folder"),
    Case("masks_as_jpeg", on_data(_mask_jpeg, seg()), STOP, ["im00.jpg", "JPEG"], "losslessly (PNG or TIFF)"),
    Case("masks_with_compression_noise", on_data(_noisy_masks, seg()), STOP, ["rare values", "JPEG"],
         "lossless PNG/TIFF"),
    Case("masks_with_dozens_of_values", lambda root: (segmentation(root, mask=lambda i: noise(i) // 3), seg())[1],
         STOP, ["distinct values"], "lossless PNG/TIFF"),
    Case("instance_ids_for_semantic", on_data(_instances_for_semantic, seg()), STOP, ["im", "instance labels"],
         "task: instance_segmentation"),
    Case("many_classes_declared", on_data(_instances_for_semantic, seg(num_classes=30)), ACCEPT),
    Case("more_values_than_num_classes", lambda root: (segmentation(root), seg(num_classes=2))[1], STOP,
         ["num_classes is 2"], "Raise num_classes"),
    Case("masks_0_128_255", lambda root: (segmentation(root), seg())[1], ACCEPT),
    Case("binary_masks_0_1", lambda root: (segmentation(root, mask=lambda i: (class_mask(i) > 0).astype(np.uint8)),
                                           seg())[1], ACCEPT),
    Case("absent_class_kept", lambda root: (segmentation(root, mask=lambda i: class_mask(i, (0, 2, 2))),
                                            seg(num_classes=3))[1], ACCEPT),
    Case("2d_images_3d_patch", lambda root: (segmentation(root), seg(patch_size=[32, 32, 32]))[1], STOP,
         ["im00.png", "holds a 2D image, but the task is 3D"], "two-value patch_size"),
    Case("truncated_mask", on_data(_truncated_mask, seg()), STOP, ["im00.tif"], "copy it again"),
    Case("mask_foreground_on_classes", lambda root: (segmentation(root), seg(layout={"mask_foreground": True}))[1],
         ACCEPT),
    Case("layout_images_match_nothing", lambda root: (segmentation(root), seg(layout={"images": "img/*.png",
                                                                                       "masks": "groundtruth/*.png"}))[1],
         STOP, ["layout.images 'img/*.png'"], "Check the glob"),
    Case("layout_masks_match_nothing", lambda root: (segmentation(root), seg(layout={"images": "image/*.png",
                                                                                      "masks": "gt/*.png"}))[1],
         STOP, ["layout.masks 'gt/*.png'"], "Check the glob"),
    Case("layout_glob_absolute", lambda root: (segmentation(root), seg(layout={"images": "/abs/*.png",
                                                                                "masks": "groundtruth/*.png"}))[1],
         STOP, ["layout.images '/abs/*.png'"], "relative to data_dir"),
    Case("test_images_match_none", lambda root: (segmentation(root), seg(layout={"test_images": "image/zz*.png"}))[1],
         STOP, ["layout.test_images"], "Check the glob"),
    Case("test_images_match_all", lambda root: (segmentation(root), seg(layout={"test_images": "image/*.png"}))[1],
         STOP, ["layout.test_images"], "nothing is left to train"),
    # --- instance segmentation ---
    Case("instance_masks_empty", lambda root: (segmentation(root, mask=lambda i: np.zeros((SIZE, SIZE), np.uint8)),
                                               inst())[1], STOP, ["masks are empty"], "layout.masks"),
    Case("class_masks_for_instances", lambda root: (segmentation(root), inst())[1], STOP,
         ["im00.png", "hold classes"], "layout.mask_foreground: true"),
    Case("class_masks_as_foreground", lambda root: (segmentation(root), inst(layout={"mask_foreground": True}))[1],
         ACCEPT),
    Case("binary_masks_for_instances", lambda root: (segmentation(root, mask=lambda i: (instance_mask(i) > 0)
                                                                  .astype(np.uint8) * 255), inst())[1], ACCEPT),
    Case("instance_labels", lambda root: (segmentation(root, mask=instance_mask), inst())[1], ACCEPT),
    Case("instance_masks_as_jpeg", lambda root: (segmentation(root, mask=lambda i: (instance_mask(i) > 0).astype(
        np.uint8) * 255, mask_suffix=".jpeg"), inst())[1], STOP, ["im00.jpeg", "JPEG"], "losslessly"),
    # --- regression ---
    Case("regression_target_shape", on_data(_regression_shape, reg()), STOP, ["im00.tif", "target shape"],
         "same height and width"),
    Case("regression_target_channels", on_data(_regression_channels, reg()), STOP, ["different channel counts"],
         "same channels"),
    Case("regression_image_without_target", on_data(_regression_unpaired, reg()), STOP, ["im00.tif"],
         "Add its mask"),
    Case("regression_good", lambda root: (regression(root), reg())[1], ACCEPT),
    Case("regression_nan_target", lambda root: (regression(root, target=lambda i: np.full((SIZE, SIZE), np.nan,
                                                                                         np.float32)), reg())[1],
         STOP, ["NaN"], "Replace them"),
]


# --- the runner -------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict:
    return {str(p): (file_checksum(p), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def run_case(case: Case, tmp_path: Path, caplog) -> tuple[str, str]:
    """(outcome, text): the UserError's message, the warnings, or ""."""
    root, out = tmp_path / "data", tmp_path / "results"
    root.mkdir()
    config = case.build(root)
    if "datasets" not in config and case.fill_data_dir:
        config.setdefault("data_dir", str(root))
    before = snapshot(root)
    caplog.set_level(logging.WARNING)
    stage = "config"
    try:
        (settings,) = resolve_datasets(config, base_dir=tmp_path).values()
        stage = "convert"
        convert_dataset(stage_settings(settings, "convert"), out / "arrays.zarr", out / "samples.tsv",
                        out / "fingerprint.json")
        stage = "split"
        write_split(str(out / "samples.tsv"), stage_settings(settings, "split"), str(out / "splits.json"))
    except UserError as error:
        outcome, text = STOP, str(error)
        written = {"config": ["arrays.zarr"], "convert": ["arrays.zarr"], "split": ["splits.json"]}[stage]
        assert not any((out / name).exists() for name in written), f"a stopped {stage} left its output behind"
    else:
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                    and r.name.startswith("snakescope")]
        outcome, text = (WARN, "\n".join(warnings)) if warnings else (ACCEPT, "")
        json.loads((out / "fingerprint.json").read_text())
    assert snapshot(root) == before, "an input file was changed"
    return outcome, text


def test_the_corpus_has_at_least_a_hundred_cases():
    assert len(CASES) >= 100
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path, caplog):
    outcome, text = run_case(case, tmp_path, caplog)
    assert outcome == case.outcome, f"{case.id}: expected {case.outcome}, got {outcome}: {text}"
    for name in case.names:
        assert name in text, f"{case.id}: the message does not name {name!r}: {text}"
    assert case.fix in text, f"{case.id}: the message does not say {case.fix!r}: {text}"


def test_a_huge_png_is_read_not_called_corrupt(tmp_path):
    """Pillow's "decompression bomb" guard (over 179 megapixels) is not a corrupt file."""
    path = tmp_path / "slide.png"
    Image.new("L", (13_500, 13_500)).save(path)
    assert read_image(path).shape == (13_500, 13_500)
