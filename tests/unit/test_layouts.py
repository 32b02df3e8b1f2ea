"""Tests for the dataset layouts recognised from data_dir's folders alone (snakescope.convert.layouts):
one folder per class, nnU-Net raw datasets, BiaPy, OME-Zarr; and the errors when the folders match
several layouts, none, or one that does not suit the task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from PIL import Image

from snakescope.config import load_schema, resolve_datasets
from snakescope.convert import convert_dataset, discover_samples, list_input_files, read_sample_image
from snakescope.convert.layouts import detect_layouts
from snakescope.convert.samples import MULTI_FILE_SEPARATOR
from snakescope.images import to_channels_first
from snakescope.io import InputError, file_checksum, read_image
from snakescope.store import open_store

SCHEMA = load_schema()
SIZE = 24


def settings_for(data_dir: Path, **config) -> dict:
    config.setdefault("task", "classification")
    (settings,) = resolve_datasets({"data_dir": str(data_dir), **config}, SCHEMA, data_dir).values()
    return settings


def pixels(seed: int, shape=(SIZE, SIZE), dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, shape, dtype=dtype)


def mask(seed: int) -> np.ndarray:
    out = np.zeros((SIZE, SIZE), np.uint8)
    out[4 + seed % 4 : 16, 4:16] = 1
    return out


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)
    return path


def convert(settings: dict, tmp_path: Path) -> tuple[dict, pd.DataFrame, dict]:
    out = tmp_path / "results"
    fingerprint = convert_dataset(settings, out / "arrays.zarr", out / "samples.tsv", out / "fingerprint.json")
    with open_store(out / "arrays.zarr") as store:
        packed = {k: store[k] for k in store.keys()}
    return fingerprint, pd.read_csv(out / "samples.tsv", sep="\t", dtype=str, keep_default_na=False), packed


def error_of(settings: dict) -> str:
    with pytest.raises(InputError) as info:
        discover_samples(settings)
    return str(info.value)


def by_id(samples) -> dict:
    return {s.id: s for s in samples}


# ---------------------------------------------------------------------------------------------------
# one folder per class


def test_class_folders_flat(tmp_path):
    data = tmp_path / "data"
    save(data / "cat" / "a.png", pixels(0))
    save(data / "cat" / "b.png", pixels(1))
    save(data / "dog" / "a.png", pixels(2))
    save(data / "dog" / "deeper" / "c.png", pixels(3))  # nested folders belong to their class
    (data / ".ipynb_checkpoints").mkdir()
    samples = by_id(discover_samples(settings_for(data)))
    assert {
        i: (Path(s.image).relative_to(data).as_posix(), s.label, s.subset) for i, s in samples.items()
    } == {
        "cat_a": ("cat/a.png", "cat", ""),
        "b": ("cat/b.png", "cat", ""),
        "dog_a": ("dog/a.png", "dog", ""),
        "c": ("dog/deeper/c.png", "dog", ""),
    }
    assert all(s.target == "" for s in samples.values())


def test_class_folders_with_train_val_and_test(tmp_path):
    data = tmp_path / "data"
    for split, names in {"train": ["1", "2"], "val": ["3"], "test": ["1"]}.items():
        for label in ("ant", "bee"):
            for n in names:
                save(data / split / label / f"{label}{n}.png", pixels(int(n)))
    save(data / "test" / "unknown.png", pixels(9))  # no class: predicted, not evaluated
    samples = by_id(discover_samples(settings_for(data)))
    assert {i: (s.label, s.subset) for i, s in samples.items()} == {
        "train_ant_ant1": ("ant", "train"),
        "ant2": ("ant", "train"),
        "ant3": ("ant", "train"),  # val/ joins the training pool; `split` draws validation images
        "test_ant_ant1": ("ant", "test"),
        "train_bee_bee1": ("bee", "train"),
        "bee2": ("bee", "train"),
        "bee3": ("bee", "train"),
        "test_bee_bee1": ("bee", "test"),
        "unknown": ("", "test"),
    }  # a name in two folders is prefixed by its folders (train_ant_ant1, test_ant_ant1)
    assert samples["bee3"].image == str(data / "val" / "bee" / "bee3.png")


def test_class_folders_convert_with_only_task_and_data_dir(tmp_path):
    data = tmp_path / "flowers"
    for i in range(3):
        save(data / "rose" / f"r{i}.png", pixels(i, (SIZE, SIZE, 3)))
        save(data / "tulip" / f"t{i}.png", pixels(10 + i, (SIZE, SIZE, 3)))
    fingerprint, table, packed = convert(settings_for(data), tmp_path)
    assert fingerprint["classes"] == ["rose", "tulip"]
    assert dict(zip(table["id"], table["label"], strict=True)) == {
        "r0": "rose",
        "r1": "rose",
        "r2": "rose",
        "t0": "tulip",
        "t1": "tulip",
        "t2": "tulip",
    }
    assert dict(zip(table["id"], table["label_index"], strict=True))["t1"] == "1"
    assert fingerprint["channels"] == 3 and fingerprint["n_images"] == 6


def test_test_class_without_training_folder(tmp_path):
    data = tmp_path / "data"
    for label in ("a", "b"):
        save(data / "train" / label / "x.png", pixels(0))
    save(data / "test" / "c" / "y.png", pixels(1))
    message = error_of(settings_for(data))
    assert (
        f"{data / 'test' / 'c'}: class 'c' has no folder among the training images (train/ has ['a', 'b'])"
        in message
    )


def test_class_folders_are_not_instantdl_or_biapy_folders(tmp_path):
    instantdl = tmp_path / "instantdl"
    save(instantdl / "train" / "image" / "a.png", pixels(0))
    save(instantdl / "train" / "groundtruth" / "a.png", mask(0))
    assert detect_layouts(instantdl) == {"instantdl": ["train/image/", "train/groundtruth/"]}
    biapy = tmp_path / "biapy"
    save(biapy / "train" / "x" / "a.png", pixels(0))
    save(biapy / "train" / "y" / "a.png", mask(0))
    assert detect_layouts(biapy) == {"biapy": ["train/x/", "train/y/"]}


def test_dense_task_with_class_folders(tmp_path):
    data = tmp_path / "data"
    save(data / "images" / "a.png", pixels(0))
    save(data / "masks" / "a.png", mask(0))
    message = error_of(settings_for(data, task="segmentation"))
    assert f"{data}: looks like one folder per class (images/, masks/), a classification layout" in message
    assert "layout.images and layout.masks (e.g. images: 'images/*.png', masks: 'masks/*.png')" in message


# ---------------------------------------------------------------------------------------------------
# ambiguity and nothing found


def test_several_layouts_are_an_error_naming_them_and_the_keys(tmp_path):
    data = tmp_path / "data"
    save(data / "imagesTr" / "c1_0000.tif", pixels(0))
    save(data / "labelsTr" / "c1.tif", mask(0))
    save(data / "train" / "x" / "a.tif", pixels(1))
    save(data / "train" / "y" / "a.tif", mask(1))
    message = error_of(settings_for(data, task="segmentation"))
    assert "matches 2 dataset layouts" in message
    assert "BiaPy (train/x, train/y, test/x, test/y): found train/x/, train/y/" in message
    assert "nnU-Net (imagesTr, labelsTr, imagesTs, dataset.json): found imagesTr/, labelsTr/" in message
    assert "layout.format in the config (format: biapy, format: nnunet)" in message
    assert "layout.images and layout.masks" in message
    samples = discover_samples(settings_for(data, task="segmentation", layout={"format": "biapy"}))
    assert [(s.id, Path(s.target).relative_to(data).as_posix()) for s in samples] == [("a", "train/y/a.tif")]


def test_instantdl_beside_class_folders_is_ambiguous_for_classification(tmp_path):
    data = tmp_path / "data"
    save(data / "train" / "image" / "a.png", pixels(0))
    (data / "train" / "groundtruth").mkdir()
    (data / "train" / "groundtruth" / "groundtruth.csv").write_text("filename,label\na.png,x\n")
    save(data / "train" / "cat" / "c.png", pixels(1))
    save(data / "train" / "dog" / "d.png", pixels(2))
    message = error_of(settings_for(data))
    assert "found train/image/, train/groundtruth/" in message and "found train/cat/, train/dog/" in message
    assert "(format: instantdl, format: class_folders)" in message
    chosen = discover_samples(settings_for(data, layout={"format": "class_folders"}))
    assert [(s.id, s.label) for s in chosen] == [("c", "cat"), ("d", "dog")]


def test_format_naming_a_layout_that_is_not_there(tmp_path):
    save(tmp_path / "data" / "image" / "a.png", pixels(0))
    message = error_of(settings_for(tmp_path / "data", task="segmentation", layout={"format": "nnunet"}))
    assert "layout.format is 'nnunet'" in message and "it holds image/" in message


def test_no_layout_names_the_new_ones(tmp_path):
    save(tmp_path / "data" / "pictures" / "a.png", pixels(0))
    message = error_of(settings_for(tmp_path / "data"))
    assert "no 'image' or 'train/image' folder (it holds pictures/)" in message
    for layout in ("BiaPy (train/x", "nnU-Net (imagesTr", "OME-Zarr", "one folder per class", "`layout:`"):
        assert layout in message


def test_dense_layout_for_classification(tmp_path):
    save(tmp_path / "data" / "train" / "x" / "a.png", pixels(0))
    message = error_of(settings_for(tmp_path / "data"))
    assert "has the BiaPy (train/x, train/y, test/x, test/y) layout (train/x/)" in message
    assert "needs one label per image" in message


# ---------------------------------------------------------------------------------------------------
# nnU-Net


def nnunet(root: Path, cases: dict[str, int], channels=("DAPI", "GFP"), ending=".tif", test=("t1",)) -> Path:
    """An nnU-Net raw dataset: case -> seed; channel c of a case holds pixels(seed * 10 + c)."""
    (root / "imagesTr").mkdir(parents=True)
    info = {
        "channel_names": {str(i): n for i, n in enumerate(channels)},
        "labels": {"background": 0, "cell": 1},
    }
    (root / "dataset.json").write_text(json.dumps({**info, "numTraining": len(cases), "file_ending": ending}))
    for folder, names in (("Tr", cases), ("Ts", {name: 7 for name in test})):
        for case, seed in names.items():
            for c in range(len(channels)):
                save(root / f"images{folder}" / f"{case}_{c:04d}{ending}", pixels(seed * 10 + c))
            if folder == "Tr":
                save(root / "labelsTr" / f"{case}{ending}", mask(seed))
    return root


def test_nnunet_channels_labels_and_test_cases(tmp_path):
    data = nnunet(tmp_path / "Dataset001_Cells", {"cell1": 1, "cell2": 2, "cell10": 3})
    samples = discover_samples(settings_for(data, task="segmentation"))
    assert [(s.id, s.subset) for s in samples] == [
        ("cell1", "train"),
        ("cell2", "train"),
        ("cell10", "train"),
        ("t1", "test"),
    ]
    cell2 = samples[1]
    assert cell2.image.split(MULTI_FILE_SEPARATOR) == [
        str(data / "imagesTr" / "cell2_0000.tif"),
        str(data / "imagesTr" / "cell2_0001.tif"),
    ]
    assert cell2.target == str(data / "labelsTr" / "cell2.tif")
    assert samples[3].target == ""  # no labelsTs: predicted, not evaluated
    stacked = read_sample_image(cell2.image)
    assert stacked.shape == (2, SIZE, SIZE)
    np.testing.assert_array_equal(stacked[0], pixels(20))
    np.testing.assert_array_equal(stacked[1], pixels(21))
    assert str(data / "dataset.json") in list_input_files(settings_for(data, task="segmentation"))
    fingerprint, table, packed = convert(settings_for(data, task="segmentation"), tmp_path)
    assert fingerprint["channels"] == 2 and fingerprint["n_by_subset"] == {"train": 3, "test": 1}
    np.testing.assert_array_equal(packed["image/cell10"][1], pixels(31))
    np.testing.assert_array_equal(packed["target/cell10"], mask(3))


def test_nnunet_missing_channel_file(tmp_path):
    data = nnunet(tmp_path / "data", {"a": 1, "b": 2})
    (data / "imagesTr" / "b_0001.tif").unlink()
    message = error_of(settings_for(data, task="segmentation"))
    assert f"{data / 'imagesTr' / 'b_0001.tif'}: missing; case 'b' needs channel 1 ('GFP')" in message


def test_nnunet_missing_label(tmp_path):
    data = nnunet(tmp_path / "data", {"a": 1, "b": 2})
    (data / "labelsTr" / "a.tif").unlink()
    message = error_of(settings_for(data, task="segmentation"))
    assert f"{data / 'labelsTr' / 'a.tif'}: missing; case 'a' needs its label." in message


def test_nnunet_nifti_is_refused_with_the_fix(tmp_path):
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    (data / "imagesTr" / "brain_0000.nii.gz").write_bytes(b"\x1f\x8b")
    (data / "labelsTr" / "brain.nii.gz").write_bytes(b"\x1f\x8b")
    (data / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "file_ending": ".nii.gz"}))
    message = error_of(settings_for(data, task="segmentation"))
    assert f"{data / 'imagesTr'}: the nnU-Net dataset holds .nii.gz files; NIfTI" in message
    assert "not supported" in message and "Convert every file to TIFF" in message
    assert '"file_ending": ".tif"' in message


def test_nnunet_rgb_png_in_one_file(tmp_path):
    """nnU-Net's 2D natural-image datasets keep R, G and B in one _0000.png."""
    data = tmp_path / "data"
    for i, case in enumerate(("road1", "road2")):
        save(data / "imagesTr" / f"{case}_0000.png", pixels(i, (SIZE, SIZE, 3)))
        save(data / "labelsTr" / f"{case}.png", mask(i))
    (data / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "R", "1": "G", "2": "B"}, "file_ending": ".png"})
    )
    samples = discover_samples(settings_for(data, task="segmentation"))
    assert [(s.id, Path(s.image).name, Path(s.target).name) for s in samples] == [
        ("road1", "road1_0000.png", "road1.png"),
        ("road2", "road2_0000.png", "road2.png"),
    ]


# ---------------------------------------------------------------------------------------------------
# BiaPy


def test_biapy_pairs_by_name_and_test_without_y(tmp_path):
    data = tmp_path / "data"
    for i, name in enumerate(("n1", "n2")):
        save(data / "train" / "x" / f"{name}.tif", pixels(i))
        save(data / "train" / "y" / f"{name}.tif", mask(i))
    save(data / "test" / "x" / "n1.tif", pixels(5))
    samples = discover_samples(settings_for(data, task="segmentation"))
    assert [(s.id, s.subset, Path(s.image).relative_to(data).as_posix(), s.target) for s in samples] == [
        ("train_n1", "train", "train/x/n1.tif", str(data / "train" / "y" / "n1.tif")),
        ("n2", "train", "train/x/n2.tif", str(data / "train" / "y" / "n2.tif")),
        ("test_n1", "test", "test/x/n1.tif", ""),
    ]


def test_biapy_image_without_mask(tmp_path):
    data = tmp_path / "data"
    save(data / "train" / "x" / "a.tif", pixels(0))
    save(data / "train" / "x" / "b.tif", pixels(1))
    save(data / "train" / "y" / "a.tif", mask(0))
    message = error_of(settings_for(data, task="segmentation"))
    assert (
        f"{data / 'train' / 'x' / 'b.tif'}: no mask with the same name among the ground truth ({data / 'train' / 'y'})"
        in message
    )


# ---------------------------------------------------------------------------------------------------
# OME-Zarr


def axes(names: str) -> list[dict]:
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    return [{"name": n, "type": kinds[n]} for n in names]


def write_ngff(path: Path, array: np.ndarray, axis_names: str, version: str = "0.4", **attributes):
    """An OME-Zarr image (level 0 = `array`, level 1 = every second pixel) in NGFF 0.4 (Zarr v2) or 0.5 (v3)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    half = tuple(slice(None, None, 2) if n in "yx" else slice(None) for n in axis_names)
    for level, data in (("s0", array), ("s1", array[half])):
        group.create_array(level, data=data, chunks=data.shape)
    multiscales = [
        {
            "version": version,
            "axes": axes(axis_names),
            "datasets": [
                {
                    "path": level,
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0] * (len(axis_names) - 2) + [s, s]}
                    ],
                }
                for level, s in (("s0", 1.0), ("s1", 2.0))
            ],
        }
    ]
    metadata = {"multiscales": multiscales, **attributes}
    if version == "0.4":
        group.attrs.update(metadata)
    else:
        group.attrs["ome"] = {"version": version, **metadata}
    return group


def write_labels(image: Path, labels: dict[str, np.ndarray], axis_names: str, version: str = "0.4"):
    group = zarr.open_group(str(image / "labels"), mode="a", zarr_format=2 if version == "0.4" else 3)
    if version == "0.4":
        group.attrs["labels"] = list(labels)
    else:
        group.attrs["ome"] = {"version": version, "labels": list(labels)}
    for name, data in labels.items():
        write_ngff(
            image / "labels" / name, data, axis_names, version, **{"image-label": {"version": version}}
        )


def zarr_dataset(root: Path, n: int = 3) -> Path:
    """n two-channel 2D OME-Zarr images stored TCZYX (t = z = 1), each with a 'nuclei' label image."""
    for i in range(n):
        image = np.stack([pixels(10 * i), pixels(10 * i + 1)])[None, :, None].astype(np.uint16)  # 1,2,1,Y,X
        write_ngff(root / f"field{i}.ome.zarr", image, "tczyx")
        write_labels(root / f"field{i}.ome.zarr", {"nuclei": mask(i)[None, None, None]}, "tczyx")
    return root


def test_ome_zarr_images_and_their_labels(tmp_path):
    data = zarr_dataset(tmp_path / "data")
    samples = discover_samples(settings_for(data, task="segmentation"))
    assert [(s.id, s.image, s.target) for s in samples] == [
        (
            f"field{i}",
            str(data / f"field{i}.ome.zarr"),
            str(data / f"field{i}.ome.zarr" / "labels" / "nuclei"),
        )
        for i in range(3)
    ]
    image = read_sample_image(samples[1].image)  # t and z dropped, channels first
    assert image.dtype == np.uint16 and image.shape == (2, SIZE, SIZE)
    np.testing.assert_array_equal(image, np.stack([pixels(10), pixels(11)]))
    np.testing.assert_array_equal(read_image(samples[1].target), mask(1))
    fingerprint, table, packed = convert(settings_for(data, task="segmentation"), tmp_path)
    assert fingerprint["channels"] == 2
    np.testing.assert_array_equal(
        packed["image/field2"], np.stack([pixels(20), pixels(21)]).astype(np.float32)
    )
    np.testing.assert_array_equal(packed["target/field2"], mask(2))
    assert fingerprint["checksums"]["field0"] == file_checksum(data / "field0.ome.zarr")


def test_ome_zarr_input_files_and_checksums_follow_edits(tmp_path):
    data = zarr_dataset(tmp_path / "data", n=1)
    image, label = data / "field0.ome.zarr", data / "field0.ome.zarr" / "labels" / "nuclei"
    files = {
        Path(f).relative_to(image).as_posix()
        for f in list_input_files(settings_for(data, task="segmentation"))
    }
    assert {
        ".zattrs",
        ".zgroup",
        "s0/.zarray",
        "s0/0.0.0.0.0",
        "labels/.zattrs",
        "labels/nuclei/s0/0.0.0.0.0",
    } <= files
    before = file_checksum(image), file_checksum(label)
    zarr.open_array(str(label / "s0"), mode="r+")[0, 0, 0, 0, 0] = 7  # a label painted in place
    assert file_checksum(image) == before[0]  # the image's checksum leaves its labels out
    assert file_checksum(label) != before[1]


def test_ome_zarr_0_5_volume(tmp_path):
    volume = pixels(3, (5, SIZE, SIZE), np.uint16)
    write_ngff(tmp_path / "vol.zarr", volume, "zyx", version="0.5")
    array = read_image(tmp_path / "vol.zarr")
    np.testing.assert_array_equal(array, volume)
    assert to_channels_first(array, str(tmp_path / "vol.zarr"), spatial_dims=3).shape == (1, 5, SIZE, SIZE)
    with pytest.raises(InputError, match="a Z-stack of 5 planes"):
        to_channels_first(array, str(tmp_path / "vol.zarr"), spatial_dims=2)


def test_ome_zarr_with_several_labels_needs_a_choice(tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        write_ngff(data / "train" / f"im{i}.zarr", pixels(i), "yx")
        write_labels(data / "train" / f"im{i}.zarr", {"cells": mask(i), "nuclei": mask(i + 1)}, "yx")
    write_ngff(data / "test" / "new.zarr", pixels(5), "yx")
    message = error_of(settings_for(data, task="segmentation"))
    assert (
        f"{data / 'train' / 'im0.zarr'}: several label images ['cells', 'nuclei']; set layout.zarr_label"
        in message
    )
    samples = discover_samples(settings_for(data, task="segmentation", layout={"zarr_label": "nuclei"}))
    assert [(s.id, s.subset, Path(s.target).name) for s in samples] == [
        ("im0", "train", "nuclei"),
        ("im1", "train", "nuclei"),
        ("new", "test", ""),
    ]
    np.testing.assert_array_equal(read_image(samples[1].target), mask(2))


def test_ome_zarr_without_labels_for_training(tmp_path):
    write_ngff(tmp_path / "data" / "a.zarr", pixels(0), "yx")
    message = error_of(settings_for(tmp_path / "data", task="segmentation"))
    assert f"{tmp_path / 'data' / 'a.zarr'}: no label image (no labels/ group)" in message


def test_ome_zarr_time_series_is_refused(tmp_path):
    write_ngff(tmp_path / "movie.zarr", pixels(0, (3, SIZE, SIZE)), "tyx")
    with pytest.raises(InputError, match="a time series of 3 time points"):
        read_image(tmp_path / "movie.zarr")
