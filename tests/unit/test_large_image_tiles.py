"""Images too large to read whole (whole-slide images, large volumes) cut into training tiles by
`convert` region by region: the same table, fingerprint and store as when each image is read whole and
then cut, without any image being read whole."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_convert import rgb, save, settings_for
from test_convert_shards import assert_same_conversion, converted
from test_layouts import zarr_dataset

from snakescope.config import stage_settings
from snakescope.convert import convert_dataset, discover_samples, read
from snakescope.io import InputError
from snakescope.tasks import get_task

SIDE = 40  # tiles of 12 leave a remainder of 4 on each axis


def mask_0_128_255(seed: int) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[4 + seed : 30, 6:34] = 128
    mask[10:20 + seed, 12:22] = 255
    return mask


def slides(root: Path, kind: str) -> dict:
    """Three images with their ground truth as TIFF (tiled, as slide scanners write them), and the
    settings for their `kind` of task; returns the settings."""
    layout = {"tile_size": [12, 12], "test_right_fraction": 0.34}
    for i in range(3):
        if kind == "volume":
            image = np.random.default_rng(i).integers(100, 4000, (5, SIDE, SIDE), dtype=np.uint16)
            target = np.zeros((5, SIDE, SIDE), np.uint8)
            target[1:4, 5 + i : 30, 8:36] = 1
        else:
            image = rgb(i, SIDE)
            target = mask_0_128_255(i)
        if kind == "regression":
            target = image.mean(axis=-1, dtype=np.float32) / 7 + np.float32(0.25)
        if kind == "instances_from_binary":
            target = np.where(target > 0, 255, 0).astype(np.uint8)
        (root / "image").mkdir(parents=True, exist_ok=True)
        if kind == "pyramidal_ome_tiff":  # full resolution with a half-resolution level in a SubIFD
            with tifffile.TiffWriter(root / "image" / f"slide{i}.ome.tif", ome=True) as tif:
                tif.write(image, subifds=1, tile=(16, 16), photometric="rgb")
                tif.write(image[::2, ::2], subfiletype=1, tile=(16, 16), photometric="rgb")
        else:
            tifffile.imwrite(root / "image" / f"slide{i}.tif", image, tile=(16, 16))
        mask_name = f"slide{i}.ome.tif" if kind == "pyramidal_ome_tiff" else f"slide{i}.tif"
        save(root / "groundtruth" / mask_name, target)  # volumes without axes metadata: pages as Z
    task = {"volume": "segmentation", "instances_from_binary": "instance_segmentation",
            "pyramidal_ome_tiff": "segmentation"}.get(kind, kind)
    extra = {"patch_size": [16, 16, 16]} if kind == "volume" else {}
    return settings_for(root, task=task, layout=layout, **extra)


def read_in_parts_only(monkeypatch) -> None:
    """Every image that can be read in parts counts as too large to read whole, and reading one whole
    fails the test."""
    monkeypatch.setattr(read, "MEMORY_SHARE", 0.0)

    def refuse(spec):
        raise AssertionError(f"{spec} was read whole")

    monkeypatch.setattr(read, "read_sample_image", refuse)


def convert_to(settings: dict, out: Path) -> tuple[str, str, dict]:
    convert_dataset(settings, out / "arrays.zarr", out / "samples.tsv", out / "fingerprint.json")
    return converted(out)


@pytest.mark.parametrize("kind", ["segmentation", "regression", "instances_from_binary", "volume", "ome_zarr",
                                  "pyramidal_ome_tiff"])
def test_tiles_read_region_by_region_equal_tiles_cut_from_whole_images(tmp_path, monkeypatch, kind):
    if kind == "ome_zarr":  # two-channel OME-Zarr images with their label images, stored TCZYX
        data = zarr_dataset(tmp_path / "data")
        settings = settings_for(data, task="segmentation", layout={"tile_size": [12, 12]})
    else:
        settings = slides(tmp_path / "data", kind)
    settings = stage_settings(settings, "convert")
    whole = convert_to(settings, tmp_path / "whole")

    with monkeypatch.context() as patched:
        read_in_parts_only(patched)
        in_parts = convert_to(settings, tmp_path / "tiles")

    assert whole[0].count("\n") == 1 + 3 * (4 if kind == "ome_zarr" else 9)  # 24² in 2x2 tiles, 40² in 3x3
    assert_same_conversion(in_parts, whole)


def test_problems_of_large_images_name_the_file_and_region_and_come_together(tmp_path, monkeypatch, caplog):
    read_in_parts_only(monkeypatch)
    caplog.set_level(logging.INFO, logger="snakescope")
    settings = slides(tmp_path / "data", "regression")
    nan_image = np.full((SIDE, SIDE), 5.0, np.float32)
    nan_image[30, 2] = np.nan  # in the tile at y24, x0
    tifffile.imwrite(tmp_path / "data" / "image" / "slide1.tif", nan_image, tile=(16, 16))
    tifffile.imwrite(tmp_path / "data" / "groundtruth" / "slide2.tif", np.zeros((SIDE, SIDE - 8), np.float32))
    settings = stage_settings(settings, "convert")

    with pytest.raises(InputError) as raised:
        convert_to(settings, tmp_path / "out")

    message = str(raised.value)
    assert f"{tmp_path}/data/image/slide1.tif: NaN or infinite values among the pixels [24:36, 0:12]" in message
    assert f"{tmp_path}/data/groundtruth/slide2.tif: ground truth shape (40, 32) differs from its image's (40, 40)" in message
    assert not (tmp_path / "out" / "arrays.zarr").exists()
    assert "slide0: 40x40 pixels, read tile by tile" in caplog.text
    assert "slide0: read 9/9 tiles" in caplog.text


@pytest.mark.parametrize("budget, read_whole", [(SIDE * SIDE * (9 * 3 + 16), True), (SIDE * SIDE * (9 * 3 + 16) - 1, False)])
def test_an_image_is_read_whole_when_it_and_its_mask_fit_the_budget(tmp_path, monkeypatch, budget, read_whole):
    settings = stage_settings(slides(tmp_path / "data", "segmentation"), "convert")
    whole = []
    original = read.read_sample_image
    monkeypatch.setattr(read, "read_sample_image", lambda spec: whole.append(spec) or original(spec))

    samples, images, targets, dtypes, errors = read.read_tiles(
        discover_samples(settings), get_task("segmentation"), settings, {}, {}, whole_image_bytes=budget)

    # 40² RGB with its mask: 9 bytes a channel and 16 for the mask per pixel, 68,800 bytes read whole
    assert len(whole) == (3 if read_whole else 0)
    assert errors == [] and dtypes == {"uint8": 3}
    assert len(samples) == len(images) == len(targets) == 27


def test_an_image_too_large_to_read_whole_without_tiles_is_refused_with_the_fix(tmp_path, monkeypatch):
    settings = slides(tmp_path / "data", "segmentation")
    settings = stage_settings({**settings, "layout": {}}, "convert")
    monkeypatch.setattr(read, "LARGE_FILE_BYTES", 0)  # every file opened to count its pixels
    monkeypatch.setattr(read, "usable_memory_bytes", lambda: SIDE * SIDE * (9 * 3 + 16) - 1)

    with pytest.raises(InputError) as raised:
        convert_to(settings, tmp_path / "out")

    assert str(raised.value).count("more than the 0.0 GiB this job may use") == 3
    assert (f"{tmp_path}/data/image/slide0.tif: 40x40 pixels (3 channel(s)) take about 0.0 GiB to read whole"
            in str(raised.value))
    assert "layout: {tile_size: [512, 512]}" in str(raised.value)
    monkeypatch.setattr(read, "usable_memory_bytes", lambda: SIDE * SIDE * (9 * 3 + 16))
    assert convert_to(settings, tmp_path / "out")[0].count("\n") == 4  # read whole: three images
