"""Tests for snakescope.convert: discovering, checking and packing the user's data.

Every bad input is reported by `convert` (the validation step before any training) with one message
naming the file and what to do; the user's folder is never modified and no output is half written.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from snakescope.config import load_schema, resolve_datasets
from snakescope.convert import convert_dataset, discover_samples, list_input_files
from snakescope.images import read_mask, resize_image, to_channels_first
from snakescope.io import InputError, file_checksum
from snakescope.split import make_split
from snakescope.store import open_store

SIZE = 24
SCHEMA = load_schema()


# ---------------------------------------------------------------------------------------------------
# helpers: small synthetic datasets in tmp_path


def settings_for(data_dir: Path, **config) -> dict:
    config.setdefault("task", "classification")
    if config["task"] == "classification":
        config.setdefault("resize", [16, 16])
    (settings,) = resolve_datasets({"data_dir": str(data_dir), **config}, SCHEMA, data_dir).values()
    return settings


def rgb(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def grey(seed: int, size: int = SIZE, dtype=np.uint8) -> np.ndarray:
    high = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, high, (size, size), dtype=dtype, endpoint=True)


def mask_0_128_255(seed: int, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    offset = seed % 4
    mask[4 + offset : 18, 4:18] = 128
    mask[8 + offset : 14, 8:14] = 255
    return mask


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def instantdl_classification(root: Path, labels: dict[str, str], suffix: str = ".png") -> Path:
    for i, name in enumerate(labels):
        save(root / "image" / f"{name}{suffix}", rgb(i))
    write_csv(
        root / "groundtruth" / "groundtruth.csv",
        ["filename", "label"],
        [[f"{n}{suffix}", c] for n, c in labels.items()],
    )
    return root


def instantdl_segmentation(root: Path, names: list[str], subset: str = "") -> Path:
    base = root / subset if subset else root
    for i, name in enumerate(names):
        save(base / "image" / f"{name}.png", rgb(i))
        save(base / "groundtruth" / f"{name}.png", mask_0_128_255(i))
    return root


def snapshot(folder: Path) -> dict[str, tuple]:
    return {
        str(p.relative_to(folder)): (file_checksum(p), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(folder)) + "/": () for p in folder.rglob("*") if p.is_dir()}


def outputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    out = tmp_path / "results"
    return out / "arrays.zarr", out / "samples.tsv", out / "fingerprint.json"


def convert(settings: dict, tmp_path: Path) -> tuple[dict, pd.DataFrame, dict]:
    arrays, samples, fingerprint_path = outputs(tmp_path)
    fingerprint = convert_dataset(settings, arrays, samples, fingerprint_path)
    with open_store(arrays) as store:
        packed = {k: store[k] for k in store.keys()}
    table = pd.read_csv(samples, sep="\t", dtype=str, keep_default_na=False)
    return fingerprint, table, packed


def convert_error(settings: dict, tmp_path: Path) -> str:
    """The InputError message of a conversion that must fail; checks that nothing was written."""
    with pytest.raises(InputError) as info:
        convert_dataset(settings, *outputs(tmp_path))
    out = tmp_path / "results"
    assert not out.exists() or list(out.iterdir()) == [], "a failed convert left files behind"
    return str(info.value)


# ---------------------------------------------------------------------------------------------------
# end to end: good data


def test_classification_instantdl_layout(tmp_path):
    labels = {f"cell_{i:02d}": "lymphocyte" if i % 3 else "neutrophil" for i in range(9)}
    data = instantdl_classification(tmp_path / "data", labels)
    fingerprint, table, packed = convert(settings_for(data), tmp_path)

    assert fingerprint["n_images"] == 9 and fingerprint["channels"] == 3
    assert fingerprint["classes"] == ["lymphocyte", "neutrophil"]
    assert fingerprint["class_counts"] == {"lymphocyte": 6, "neutrophil": 3}
    assert fingerprint["resized_to"] == [16, 16]
    assert sorted(table["id"]) == sorted(labels)
    assert set(table.columns) >= {"id", "image", "target", "label", "subset", "group", "label_index", "shape"}
    row = table.set_index("id").loc["cell_00"]
    assert row["label"] == "neutrophil" and row["label_index"] == "1" and row["shape"] == "3x16x16"
    image = packed["image/cell_00"]
    assert image.dtype == np.float32 and image.shape == (3, 16, 16)
    assert not any(key.startswith("target/") for key in packed)
    assert set(fingerprint["checksums"]) == set(labels)


def test_classification_custom_layout_with_numbered_csv(tmp_path):
    data = tmp_path / "wbc"
    for i in range(1, 7):
        save(data / "Dataset_1" / f"{i:03d}.bmp", rgb(i))
    write_csv(data / "labels.csv", ["image ID", "class label"], [[i, 1 + i % 2] for i in range(1, 7)])
    settings = settings_for(
        data,
        layout={
            "images": "Dataset_1/*.bmp",
            "labels_csv": "labels.csv",
            "filename_column": "image ID",
            "label_column": "class label",
            "filename_format": "{:03d}",
        },
        classes=[1, 2],
    )
    fingerprint, table, _ = convert(settings, tmp_path)
    assert sorted(table["id"]) == ["001", "002", "003", "004", "005", "006"]
    assert fingerprint["classes"] == ["1", "2"]
    assert table.set_index("id").loc["002", "label"] == "1"
    assert table.set_index("id").loc["002", "label_index"] == "0"


def test_label_csv_with_semicolons_and_padded_header(tmp_path):
    data = tmp_path / "data"
    for i in range(3):
        save(data / "image" / f"a{i}.png", rgb(i))
    (data / "groundtruth").mkdir()
    (data / "groundtruth" / "groundtruth.csv").write_text(
        " filename ; label \na0.png;x\na1.png;y\na2.png;x\n"
    )
    samples = discover_samples(settings_for(data))
    assert {s.id: s.label for s in samples} == {"a0": "x", "a1": "y", "a2": "x"}


def test_segmentation_masks_0_128_255_become_0_1_2(tmp_path):
    data = instantdl_segmentation(tmp_path / "data", ["a", "b", "c"])
    fingerprint, table, packed = convert(settings_for(data, task="segmentation"), tmp_path)
    assert fingerprint["mask_values"] == [0, 128, 255]
    assert fingerprint["num_classes"] == 3
    target = packed["target/a"]
    assert target.dtype == np.int64 and target.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(target, np.searchsorted([0, 128, 255], mask_0_128_255(0)))
    assert set(np.unique(target)) == {0, 1, 2}
    image = packed["image/a"]  # RGB stored YXC -> CYX at native intensity
    assert image.shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(image, np.moveaxis(rgb(0), -1, 0).astype(np.float32))
    assert all(table["target"] != "")


def test_segmentation_masks_that_are_class_indices_keep_them(tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        save(data / "image" / f"m{i}.png", grey(i))
        save(data / "groundtruth" / f"m{i}.png", (mask_0_128_255(i) == 255).astype(np.uint8) * 2)  # 0 and 2
    fingerprint, _, packed = convert(settings_for(data, task="segmentation", num_classes=3), tmp_path)
    assert fingerprint["mask_values"] == [0, 1, 2]
    assert set(np.unique(packed["target/m0"])) == {0, 2}


def test_rgba_with_constant_alpha_is_dropped(tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        rgba = np.dstack([rgb(i), np.full((SIZE, SIZE), 255, np.uint8)])
        save(data / "image" / f"he{i}.png", rgba)
        save(data / "groundtruth" / f"he{i}.png", mask_0_128_255(i))
    fingerprint, _, packed = convert(settings_for(data, task="segmentation"), tmp_path)
    assert fingerprint["channels"] == 3
    np.testing.assert_array_equal(packed["image/he0"], np.moveaxis(rgb(0), -1, 0))


def test_16_bit_images_keep_their_values(tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        save(data / "image" / f"f{i}.tif", grey(i, dtype=np.uint16))
        save(data / "groundtruth" / f"f{i}.tif", (mask_0_128_255(i) > 0).astype(np.uint16))
    fingerprint, _, packed = convert(settings_for(data, task="segmentation"), tmp_path)
    assert fingerprint["source_dtypes"] == {"uint16": 2}
    assert fingerprint["channels"] == 1
    np.testing.assert_array_equal(packed["image/f1"][0], grey(1, dtype=np.uint16).astype(np.float32))
    assert packed["image/f1"].max() > 255


def test_train_test_instantdl_layout_keeps_the_users_test_set(tmp_path):
    data = tmp_path / "data"
    instantdl_segmentation(data, [f"tr{i}" for i in range(6)], subset="train")
    instantdl_segmentation(data, ["te0", "te1"], subset="test")
    fingerprint, table, _ = convert(settings_for(data, task="segmentation"), tmp_path)
    assert fingerprint["n_by_subset"] == {"train": 6, "test": 2}
    split = make_split(table, test_fraction=0.2, val_fraction=0.2, seed=0, stratify=False)
    assert split["test"] == ["te0", "te1"]
    assert sorted(split["train"] + split["val"]) == [f"tr{i}" for i in range(6)]


def test_test_folder_without_ground_truth_is_predicted_only(tmp_path):
    data = tmp_path / "data"
    instantdl_segmentation(data, [f"tr{i}" for i in range(4)], subset="train")
    save(data / "test" / "image" / "new.png", rgb(5))
    _, table, packed = convert(settings_for(data, task="segmentation"), tmp_path)
    row = table.set_index("id").loc["new"]
    assert row["subset"] == "test" and row["target"] == ""
    assert "target/new" not in packed and "image/new" in packed
    split = make_split(table, 0.2, 0.2, seed=0, stratify=False)
    assert split["unlabelled_test"] == ["new"] and "new" not in split["test"]


def test_regression_targets_stay_float(tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        save(data / "image" / f"r{i}.tif", grey(i))
        save(data / "groundtruth" / f"r{i}.tif", grey(i + 10).astype(np.float32) / 7)
    fingerprint, _, packed = convert(settings_for(data, task="regression"), tmp_path)
    assert fingerprint["target_channels"] == 1
    target = packed["target/r0"]
    assert target.dtype == np.float32 and target.shape == (SIZE, SIZE)
    np.testing.assert_allclose(target, grey(10).astype(np.float32) / 7)


def test_convert_does_not_touch_the_input_folder(tmp_path):
    data = instantdl_segmentation(tmp_path / "data", ["a", "b", "c"])
    before = snapshot(data)
    convert(settings_for(data, task="segmentation"), tmp_path)
    assert snapshot(data) == before


def test_convert_leaves_no_temporary_files(tmp_path):
    data = instantdl_segmentation(tmp_path / "data", ["a", "b"])
    convert(settings_for(data, task="segmentation"), tmp_path)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "arrays.zarr",
        "fingerprint.json",
        "samples.tsv",
    ]


def test_wbc_layout_finds_300_labelled_samples(shared_data):
    wbc = shared_data / "wbc_zheng2018"
    settings = settings_for(
        wbc,
        layout={
            "images": "Dataset_1/*.bmp",
            "labels_csv": "Class_Labels_of_Dataset_1.csv",
            "filename_column": "image ID",
            "label_column": "class label",
            "filename_format": "{:03d}",
        },
        classes=[1, 2, 3, 4, 5],
    )
    samples = discover_samples(settings)
    assert len(samples) == 300
    assert all(s.label in {"1", "2", "3", "4", "5"} for s in samples)
    assert {s.id for s in samples} == {f"{i:03d}" for i in range(1, 301)}


def test_list_input_files(tmp_path):
    data = instantdl_classification(tmp_path / "data", {"a": "x", "b": "y"})
    (data / "notes.txt").write_text("not an input")
    files = list_input_files(settings_for(data))
    assert [Path(f).name for f in files] == ["groundtruth.csv", "a.png", "b.png"]
    assert list_input_files(settings_for(tmp_path / "missing")) == []


# ---------------------------------------------------------------------------------------------------
# bad input: one clear message each, naming the file and what to do, nothing written


def test_data_dir_that_does_not_exist(tmp_path):
    message = convert_error(settings_for(tmp_path / "no_such_folder"), tmp_path)
    assert f"{tmp_path / 'no_such_folder'}: data_dir does not exist" in message
    assert str(tmp_path) in message and "Set data_dir" in message


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    assert "data_dir is a file, not a folder" in convert_error(settings_for(tmp_path / "data.zip"), tmp_path)


def test_missing_image_folder(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    message = convert_error(settings_for(tmp_path / "data"), tmp_path)
    assert "no 'image' or 'train/image' folder (it holds images/)" in message
    assert "InstantDL layout" in message and "`layout:`" in message


def test_empty_data_dir(tmp_path):
    (tmp_path / "data").mkdir()
    assert "(it is empty)" in convert_error(settings_for(tmp_path / "data"), tmp_path)


def test_empty_image_folder(tmp_path):
    (tmp_path / "data" / "image").mkdir(parents=True)
    message = convert_error(settings_for(tmp_path / "data"), tmp_path)
    assert f"{tmp_path / 'data' / 'image'}: the folder is empty. Put your images there" in message


def test_image_folder_with_unsupported_files(tmp_path):
    (tmp_path / "data" / "image").mkdir(parents=True)
    (tmp_path / "data" / "image" / "scan1.czi").write_bytes(b"ZISRAW")
    message = convert_error(settings_for(tmp_path / "data"), tmp_path)
    assert "no image files; it holds 1 file(s) of type .czi (e.g. scan1.czi)" in message
    assert "convert your images to TIFF" in message


def test_missing_ground_truth_folder(tmp_path):
    save(tmp_path / "data" / "image" / "a.png", rgb(0))
    message = convert_error(settings_for(tmp_path / "data", task="segmentation"), tmp_path)
    assert f"{tmp_path / 'data' / 'groundtruth'}: folder missing" in message


def test_image_without_mask(tmp_path):
    data = instantdl_segmentation(tmp_path / "data", ["a", "b"])
    save(data / "image" / "lonely.png", rgb(3))
    message = convert_error(settings_for(data, task="segmentation"), tmp_path)
    assert "1 problem(s)" in message
    assert f"{data / 'image' / 'lonely.png'}: no mask with the same name" in message
    assert "Add its mask or move the image out" in message


def test_mask_without_image(tmp_path):
    data = instantdl_segmentation(tmp_path / "data", ["a", "b"])
    save(data / "groundtruth" / "orphan.png", mask_0_128_255(0))
    message = convert_error(settings_for(data, task="segmentation"), tmp_path)
    assert f"{data / 'groundtruth' / 'orphan.png'}: mask without an image of the same name" in message


def test_custom_layout_mask_suffix_pairs_masks(tmp_path):
    data = tmp_path / "data"
    save(data / "img" / "a.png", rgb(0))
    save(data / "lbl" / "a_mask.png", mask_0_128_255(0))
    save(data / "img" / "b.png", rgb(1))
    layout = {"images": "img/*.png", "masks": "lbl/*.png", "mask_suffix": "_mask"}
    message = convert_error(settings_for(data, task="segmentation", layout=layout), tmp_path)
    assert f"{data / 'img' / 'b.png'}: no mask" in message and "mask_suffix '_mask'" in message


def test_masks_named_with_a_suffix_get_one_hint(tmp_path):
    data = tmp_path / "data"
    for i in range(3):
        save(data / "image" / f"img{i}.png", rgb(i))
        save(data / "groundtruth" / f"img{i}_mask.png", mask_0_128_255(i))
    message = convert_error(settings_for(data, task="segmentation"), tmp_path)
    assert message.startswith("1 problem(s)")
    assert "none of the 3 masks has an image of the same name" in message
    assert "set layout.mask_suffix: '_mask'" in message
    fingerprint, _, _ = convert(
        settings_for(data, task="segmentation", layout={"mask_suffix": "_mask"}), tmp_path
    )
    assert fingerprint["n_images"] == 3


def test_custom_layout_segmentation_without_masks_glob(tmp_path):
    save(tmp_path / "data" / "img" / "a.png", rgb(0))
    settings = settings_for(tmp_path / "data", task="segmentation", layout={"images": "img/*.png"})
    assert "has `images` and no `masks`. Add layout.masks" in convert_error(settings, tmp_path)


def test_custom_layout_glob_matching_nothing(tmp_path):
    save(tmp_path / "data" / "img" / "a.png", rgb(0))
    settings = settings_for(tmp_path / "data", layout={"images": "images/*.png"})
    assert "no image files match layout.images 'images/*.png'" in convert_error(settings, tmp_path)


def test_image_mask_shape_mismatch(tmp_path):
    data = instantdl_segmentation(tmp_path / "data", ["a", "b"])
    save(data / "groundtruth" / "b.png", mask_0_128_255(0)[:20, :22])
    message = convert_error(settings_for(data, task="segmentation"), tmp_path)
    assert (
        f"{data / 'groundtruth' / 'b.png'}: mask shape (20, 22) differs from its image's (24, 24)" in message
    )
    assert "same height and width" in message


def test_colour_coded_mask(tmp_path):
    data = instantdl_segmentation(tmp_path / "data", ["a", "b"])
    save(data / "groundtruth" / "a.png", rgb(0))
    message = convert_error(settings_for(data, task="segmentation"), tmp_path)
    assert "a colour mask whose channels differ" in message and "single-channel label image" in message


def test_masks_with_a_single_value(tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        save(data / "image" / f"a{i}.png", rgb(i))
        save(data / "groundtruth" / f"a{i}.png", np.zeros((SIZE, SIZE), np.uint8))
    assert "every mask holds only the value [0]" in convert_error(
        settings_for(data, task="segmentation"), tmp_path
    )


def test_labels_csv_naming_a_missing_file(tmp_path):
    data = instantdl_classification(tmp_path / "data", {"a": "x", "b": "y"})
    write_csv(
        data / "groundtruth" / "groundtruth.csv",
        ["filename", "label"],
        [["a.png", "x"], ["b.png", "y"], ["ghost.png", "x"]],
    )
    message = convert_error(settings_for(data), tmp_path)
    assert (
        f"{data / 'groundtruth' / 'groundtruth.csv'}: names 'ghost', but no image with that name" in message
    )
    assert "Fix the name in the CSV, add the image, or remove the row" in message


def test_label_not_in_classes(tmp_path):
    data = instantdl_classification(tmp_path / "data", {"a": "x", "b": "y", "c": "z"})
    message = convert_error(settings_for(data, classes=["x", "y"]), tmp_path)
    assert f"{data / 'image' / 'c.png'}: label 'z' is not in `classes` ['x', 'y']" in message
    assert "Add it to `classes`" in message


def test_image_with_no_label_row(tmp_path):
    data = instantdl_classification(tmp_path / "data", {"a": "x", "b": "y"})
    save(data / "image" / "c.png", rgb(5))
    message = convert_error(settings_for(data), tmp_path)
    assert f"{data / 'image' / 'c.png'}: no label for this image in" in message
    assert "Add a row for it" in message


def test_missing_labels_csv(tmp_path):
    save(tmp_path / "data" / "image" / "a.png", rgb(0))
    message = convert_error(settings_for(tmp_path / "data"), tmp_path)
    assert "groundtruth.csv: label file not found" in message and "'filename,label'" in message


def test_labels_csv_without_the_configured_column(tmp_path):
    data = instantdl_classification(tmp_path / "data", {"a": "x"})
    message = convert_error(settings_for(data, layout={"label_column": "class"}), tmp_path)
    assert "no column 'class'; the header has ['filename', 'label']" in message
    assert "Set layout.label_column" in message


def test_labels_csv_row_without_label(tmp_path):
    data = instantdl_classification(tmp_path / "data", {"a": "x", "b": "y"})
    write_csv(
        data / "groundtruth" / "groundtruth.csv", ["filename", "label"], [["a.png", "x"], ["b.png", ""]]
    )
    assert "line 3: 'b.png' has no label" in convert_error(settings_for(data), tmp_path)


def test_filename_format_that_does_not_fit(tmp_path):
    data = instantdl_classification(tmp_path / "data", {"a": "x"})
    write_csv(data / "groundtruth" / "groundtruth.csv", ["filename", "label"], [["a", "x"]])
    message = convert_error(settings_for(data, layout={"filename_format": "{:03d}"}), tmp_path)
    assert "layout.filename_format '{:03d}' cannot format 'a'" in message


def test_group_column_with_an_empty_value(tmp_path):
    data = instantdl_classification(tmp_path / "data", {"a": "x", "b": "y"})
    write_csv(
        data / "groundtruth" / "groundtruth.csv",
        ["filename", "label", "patient"],
        [["a.png", "x", "p1"], ["b.png", "y", ""]],
    )
    message = convert_error(settings_for(data, group_column="patient"), tmp_path)
    assert "'b.png' has no value in the group column 'patient'" in message


def test_nan_and_inf_pixels(tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        image = grey(i).astype(np.float32)
        image[3, 4] = np.nan if i == 0 else np.inf
        save(data / "image" / f"f{i}.tif", image)
        save(data / "groundtruth" / f"f{i}.tif", mask_0_128_255(i))
    message = convert_error(settings_for(data, task="segmentation"), tmp_path)
    assert "2 problem(s)" in message  # both files reported in one pass
    assert f"{data / 'image' / 'f0.tif'}: 1 of {SIZE * SIZE} pixel values are NaN or infinite" in message
    assert f"{data / 'image' / 'f1.tif'}: 1 of" in message
    assert "Replace them" in message


def test_z_stack_given_to_a_2d_task(tmp_path):
    data = tmp_path / "data"
    save(data / "image" / "a.tif", grey(0))
    stack = np.stack([grey(i) for i in range(5)])
    tifffile.imwrite(
        data / "image" / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"}
    )  # as Fiji saves
    write_csv(
        data / "groundtruth" / "groundtruth.csv", ["filename", "label"], [["a.tif", "x"], ["stack.tif", "y"]]
    )
    message = convert_error(settings_for(data), tmp_path)
    assert f"{data / 'image' / 'stack.tif'}: a Z-stack of 5 planes" in message
    assert "2D task" in message and "patch_size three values" in message


def test_deep_stack_without_metadata_given_to_a_2d_task(tmp_path):
    data = tmp_path / "data"
    save(data / "image" / "a.png", rgb(0))
    save(data / "image" / "stack.tif", np.zeros((30, SIZE, SIZE), np.uint8))
    write_csv(
        data / "groundtruth" / "groundtruth.csv", ["filename", "label"], [["a.png", "x"], ["stack.tif", "y"]]
    )
    message = convert_error(settings_for(data), tmp_path)
    assert "shape (30, 24, 24) is not a 2D image" in message


def test_2d_image_given_to_a_3d_task(tmp_path):
    data = tmp_path / "data"
    save(data / "image" / "a.tif", grey(0))
    save(data / "groundtruth" / "a.tif", mask_0_128_255(0))
    settings = settings_for(data, task="segmentation", patch_size=[16, 16, 16])
    assert "shape (24, 24) is not a 3D volume" in convert_error(settings, tmp_path)


def test_channel_count_differs_between_images(tmp_path):
    data = instantdl_segmentation(tmp_path / "data", ["a", "b", "c"])
    save(data / "image" / "c.png", grey(2))
    message = convert_error(settings_for(data, task="segmentation"), tmp_path)
    assert f"{data / 'image' / 'c.png'}: 1 channel(s) where most images have 3" in message


def test_truncated_tiff_in_the_dataset(tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        save(data / "image" / f"t{i}.tif", grey(i, size=64))
        save(data / "groundtruth" / f"t{i}.tif", np.pad(mask_0_128_255(i), 20))
    path = data / "image" / "t1.tif"
    path.write_bytes(path.read_bytes()[:2000])
    message = convert_error(settings_for(data, task="segmentation"), tmp_path)
    assert f"{path}: cannot be read as an image" in message and "truncated or corrupt" in message


def test_corrupt_png_in_the_dataset(tmp_path):
    data = instantdl_classification(tmp_path / "data", {"a": "x", "b": "y"})
    path = data / "image" / "b.png"
    path.write_bytes(path.read_bytes()[:200])
    message = convert_error(settings_for(data), tmp_path)
    assert f"{path}: cannot be read as an image" in message and "copy it again" in message


def test_all_problems_reported_at_once(tmp_path):
    data = instantdl_segmentation(tmp_path / "data", ["a", "b", "c"])
    save(data / "image" / "lonely.png", rgb(1))
    save(data / "groundtruth" / "orphan.png", mask_0_128_255(1))
    message = convert_error(settings_for(data, task="segmentation"), tmp_path)
    assert message.startswith("2 problem(s) in the input data")
    assert "lonely.png" in message and "orphan.png" in message


def test_failed_convert_keeps_the_input_folder_unchanged(tmp_path):
    data = instantdl_segmentation(tmp_path / "data", ["a", "b"])
    save(data / "groundtruth" / "b.png", mask_0_128_255(0)[:10])
    before = snapshot(data)
    convert_error(settings_for(data, task="segmentation"), tmp_path)
    assert snapshot(data) == before


# ---------------------------------------------------------------------------------------------------
# pixel helpers


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((20, 30), (1, 20, 30)),
        ((20, 30, 3), (3, 20, 30)),
        ((2, 20, 30), (2, 20, 30)),
        ((20, 30, 2), (2, 20, 30)),
    ],
)
def test_to_channels_first_layouts(shape, expected):
    array = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    out = to_channels_first(array, "x.png")
    assert out.shape == expected and out.dtype == np.float32


def test_to_channels_first_keeps_a_varying_alpha():
    rgba = np.random.default_rng(0).integers(0, 256, (20, 20, 4), dtype=np.uint8)
    assert to_channels_first(rgba, "x.png").shape == (4, 20, 20)


def test_to_channels_first_keeps_a_constant_fourth_microscopy_channel():
    cyx = np.random.default_rng(0).random((4, 20, 20)).astype(np.float32)
    cyx[3] = 0  # an empty channel of a CYX stack is data, not alpha
    assert to_channels_first(cyx, "x.tif").shape == (4, 20, 20)


def test_read_mask_reduces_grey_rgb(tmp_path):
    mask = mask_0_128_255(0)
    save(tmp_path / "m.png", np.dstack([mask] * 3))
    np.testing.assert_array_equal(read_mask(str(tmp_path / "m.png"), (SIZE, SIZE)), mask)


def test_read_mask_rejects_fractional_values(tmp_path):
    save(tmp_path / "m.tif", np.full((SIZE, SIZE), 0.5, np.float32))
    with pytest.raises(InputError, match="fractional values.*task: regression"):
        read_mask(str(tmp_path / "m.tif"), (SIZE, SIZE))


def test_resize_image_nearest_for_masks():
    mask = np.repeat(np.repeat(np.array([[0, 2], [1, 0]], np.int64), 8, 0), 8, 1)
    small = resize_image(mask, (4, 4), is_mask=True)
    assert small.dtype == np.int64 and set(np.unique(small)) == {0, 1, 2}
    image = np.ones((3, 16, 16), np.float32)
    assert resize_image(image, (8, 8)).shape == (3, 8, 8)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_snapshot_notices_a_change(tmp_path):
    # guards the guard: the folder snapshot used above does see a touched file
    data = instantdl_classification(tmp_path / "data", {"a": "x"})
    before = snapshot(data)
    os.utime(data / "image" / "a.png", ns=(0, 0))
    assert snapshot(data) != before


@pytest.mark.parametrize(
    ("config", "n_arrays"),
    [
        # 9 tiles of each of 3 images, each with its 0/128/255 mask encoded
        ({"task": "segmentation", "layout": {"tile_size": [8, 8]}}, 2 * 27),
        # instances derived from the masks in place
        ({"task": "instance_segmentation", "layout": {"mask_foreground": True}}, 2 * 3),
    ],
)
def test_convert_with_no_memory_to_spare_spills_to_disk_and_packs_the_same(tmp_path, monkeypatch, config, n_arrays):
    """With no memory budget every image read waits on disk (SpilledArrays); the result is the same."""
    import snakescope.convert as convert_module

    data = instantdl_segmentation(tmp_path / "data", ["a", "b", "c"])
    in_memory = convert(settings_for(data, **config), tmp_path / "memory")
    spilled_sizes = []
    original = convert_module.SpilledArrays

    def spilling(folder, memory_budget):
        spilled_sizes.append(memory_budget)
        return original(folder, memory_budget)

    monkeypatch.setattr(convert_module, "usable_memory_bytes", lambda: 0)
    monkeypatch.setattr(convert_module, "SpilledArrays", spilling)
    on_disk = convert(settings_for(data, **config), tmp_path / "disk")
    assert set(spilled_sizes) == {0}
    assert on_disk[0] == in_memory[0]  # fingerprint
    pd.testing.assert_frame_equal(on_disk[1], in_memory[1])
    assert on_disk[2].keys() == in_memory[2].keys() and len(on_disk[2]) == n_arrays
    for key, array in in_memory[2].items():
        assert on_disk[2][key].dtype == array.dtype
        np.testing.assert_array_equal(on_disk[2][key], array)
    assert sorted(p.name for p in (tmp_path / "disk" / "results").iterdir()) == [
        "arrays.zarr", "fingerprint.json", "samples.tsv"]
