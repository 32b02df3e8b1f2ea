"""Images too large for memory (issue 18): lazy reading of TIFF and OME-Zarr regions, the block grid,
normalisation from a sample, and block-by-block prediction that matches the whole-image prediction."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import zarr

from snakescope import lazy_images
from snakescope.engine import tiled
from snakescope.engine.inference import predict_logits
from snakescope.engine.tiled import fits_whole, predict_blocks
from snakescope.engine.transforms import normalisation_statistics, normalise
from snakescope.images import to_channels_first
from snakescope.io import InputError, read_image
from snakescope.lazy_images import LazyImage, blocks


@pytest.fixture
def open_lazy():
    """LazyImage(...), closed when the test ends (it holds its TIFF open)."""
    opened = []
    yield lambda path, spatial_dims: opened.append(LazyImage(path, spatial_dims)) or opened[-1]
    for image in opened:
        image.close()


def test_a_tiled_rgb_tiff_reads_region_by_region_as_the_whole_image(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (300, 260, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, rgb, tile=(64, 64), photometric="rgb")
    whole = to_channels_first(read_image(path), str(path))
    with LazyImage(path, spatial_dims=2) as image:
        assert image.shape == (3, 300, 260) == whole.shape
        region = (slice(37, 201), slice(150, 260))
        np.testing.assert_array_equal(image.read(region), whole[:, 37:201, 150:260])
        assert image.read(region).dtype == np.float32


def test_volumes_and_ome_zarr_channels_read_as_c_zyx(tmp_path, open_lazy):
    volume = np.random.default_rng(1).random((20, 40, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "volume.tif", volume, metadata={"axes": "ZYX"})
    image = open_lazy(tmp_path / "volume.tif", spatial_dims=3)
    assert image.shape == (1, 20, 40, 30)
    np.testing.assert_array_equal(image.read((slice(3, 9), slice(0, 40), slice(5, 6))), volume[None, 3:9, :, 5:6])

    from test_layouts import write_ngff  # the OME-Zarr writer of the layout tests

    cyx = np.random.default_rng(2).integers(0, 4000, (2, 50, 70), dtype=np.uint16)
    write_ngff(tmp_path / "cells.zarr", cyx[None], "tcyx", version="0.5")
    image = open_lazy(tmp_path / "cells.zarr", spatial_dims=2)
    assert image.shape == (2, 50, 70)
    np.testing.assert_array_equal(image.read((slice(10, 20), slice(60, 70))), cyx[:, 10:20, 60:70].astype(np.float32))


def test_a_stack_given_to_a_2d_model_and_nan_pixels_name_the_file_and_the_fix(tmp_path, open_lazy):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 64, 64), np.uint8), metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match=r"stack\.tif: 5 planes along its Z axis .* Give one plane per file"):
        LazyImage(tmp_path / "stack.tif", spatial_dims=2)
    pixels = np.zeros((64, 64), np.float32)
    pixels[40, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", pixels, tile=(16, 16))
    image = open_lazy(tmp_path / "nan.tif", spatial_dims=2)
    image.read((slice(0, 32), slice(0, 64)))  # the NaN is not in this region
    with pytest.raises(InputError, match=r"nan\.tif: NaN or infinite values among the pixels \[32:64, 0:64\]"):
        image.read((slice(32, 64), slice(0, 64)))


def test_blocks_write_every_pixel_once_and_read_it_with_its_margin():
    shape = (70, 45)
    coverage = np.zeros(shape, int)
    grid = blocks(shape, [32, 32], [8, 8])
    assert len(grid) == 3 * 2
    for block in grid:
        coverage[block.write] += 1
        for read, inner, write in zip(block.read, block.inner, block.write, strict=True):
            assert read.start + inner.start == write.start and read.start + inner.stop == write.stop
            assert read.start == max(0, write.start - 8) and read.stop == min(write.stop + 8, 70 if read is block.read[0] else 45)
    np.testing.assert_array_equal(coverage, 1)


def test_statistics_of_a_whole_sample_normalise_as_the_image_itself(tmp_path, open_lazy):
    pixels = np.random.default_rng(3).gamma(2.0, 300.0, (2, 90, 110)).astype(np.float32)
    tifffile.imwrite(tmp_path / "image.tif", pixels, metadata={"axes": "CYX"}, tile=(32, 32))
    image = open_lazy(tmp_path / "image.tif", spatial_dims=2)
    assert image.sample().shape == (2, 90 * 110)  # fewer pixels than SAMPLED_VALUES: all of them
    assert image.sample(max_values=1000).shape == (2, 23 * 28)  # every 4th pixel each way (9,900 / 4² <= 1,000)
    for method in ("percentile", "minmax", "zscore"):
        plan = {"normalisation": method}
        statistics = normalisation_statistics(image.sample(), plan)
        np.testing.assert_allclose(normalise(pixels, plan, statistics), normalise(pixels, plan), rtol=1e-6, atol=1e-6)


def test_fits_whole_counts_the_image_its_outputs_and_the_mc_dropout_samples():
    shape = (3, 1000, 1000)  # two classes; float32 per pixel:
    one_pass = 4 * (3 + 3 * 2 + 1 * 2 + 1 * (3 + 2 * 2))  # image, three output maps, one sample, one pass
    assert fits_whole(shape, 2, memory_budget=one_pass * 10**6)
    assert not fits_whole(shape, 2, memory_budget=one_pass * 10**6 - 1)
    sampled = 4 * (3 + 3 * 2 + 20 * 2 + 16 * (3 + 2 * 2))  # 20 samples kept, 16 copies a pass
    assert fits_whole(shape, 2, 20, 16, memory_budget=sampled * 10**6)
    assert not fits_whole(shape, 2, 20, 16, memory_budget=sampled * 10**6 - 1)


def test_block_by_block_outputs_equal_the_whole_image_for_a_pixelwise_network(tmp_path, monkeypatch, open_lazy):
    """With a network that looks at one pixel at a time, any tiling gives the same output: each block's
    output lands exactly where the whole image's does."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Tanh(), torch.nn.Conv2d(4, 2, 1)).eval()
    pixels = np.random.default_rng(4).integers(0, 255, (130, 97, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "image.tif", pixels, tile=(32, 32), photometric="rgb")
    plan = {"normalisation": "percentile", "patch_size": [32, 32], "spatial_dims": 2}
    monkeypatch.setitem(lazy_images.BLOCK_SIDE, 2, 40)

    def outputs_of(block):
        with torch.no_grad():
            return predict_logits(network, torch.as_tensor(block[None]), plan)[0].numpy()

    whole = outputs_of(normalise(to_channels_first(pixels, "rgb"), plan))
    assembled = np.full_like(whole, np.nan)
    for region, outputs in predict_blocks(open_lazy(tmp_path / "image.tif", 2), plan, outputs_of, "test"):
        assembled[(slice(None), *region)] = outputs
    np.testing.assert_allclose(assembled, whole, atol=1e-5)


def test_a_large_segmentation_writes_ome_zarr_with_the_otsu_mask_of_its_probabilities(tmp_path, monkeypatch, open_lazy):
    pixels = np.zeros((120, 100), np.float32)
    pixels[20:70, 30:90] = 1.0
    tifffile.imwrite(tmp_path / "image.tif", pixels, tile=(32, 32))
    monkeypatch.setitem(lazy_images.BLOCK_SIDE, 2, 48)

    def probabilities_of(block):  # a "network" sure of the bright pixels, less of the dark ones
        foreground = np.where(block[0] > 0.5, 0.9, 0.2)
        return np.stack([1 - foreground, foreground]).astype(np.float32)

    plan = {"normalisation": "minmax", "patch_size": [16, 16], "spatial_dims": 2}
    (tmp_path / "predictions").mkdir()
    (tmp_path / "uncertainty").mkdir()
    row, uncertainty_row = tiled.predict_large_segmentation(
        open_lazy(tmp_path / "image.tif", 2), plan, 2, probabilities_of, "image", "otsu",
        tmp_path / "predictions", tmp_path / "uncertainty")
    assert row == {"id": "image", "prob": "image.ome.zarr", "mask": "image_mask.tif", "threshold": row["threshold"]}
    assert 0.2 <= row["threshold"] < 0.9  # Otsu's cut: between the two probabilities, 0.2 itself background
    group = zarr.open_group(str(tmp_path / "predictions/image.ome.zarr"), mode="r")
    assert group.attrs["ome"]["multiscales"][0]["axes"][-1]["name"] == "x"
    np.testing.assert_array_equal(np.asarray(group["labels/mask/0"]), (pixels > 0.5).astype(np.uint8))
    with tifffile.TiffFile(tmp_path / "predictions/image_mask.tif") as tif:  # the same mask for Fiji
        assert tif.is_bigtiff and tif.pages[0].is_tiled and tif.pages[0].tilewidth == 256
        np.testing.assert_array_equal(tif.asarray(), (pixels > 0.5).astype(np.uint8))
    np.testing.assert_allclose(np.asarray(group["0"]), np.where(pixels > 0.5, 0.9, 0.2), rtol=1e-6)
    entropy = np.asarray(zarr.open_group(str(tmp_path / "uncertainty/image_uncertainty.ome.zarr"), mode="r")["0"])
    expected = np.where(pixels > 0.5, *[-(p * np.log(p) + (1 - p) * np.log(1 - p)) / np.log(2) for p in (0.9, 0.2)])
    np.testing.assert_allclose(entropy, expected, rtol=1e-5)
    assert uncertainty_row["uncertainty"] == pytest.approx(expected.mean(), rel=1e-5)
    assert not list((tmp_path / "predictions").glob(".*tmp"))  # written beside and renamed


def test_a_thumbnail_takes_every_nth_pixel_across_blocks(tmp_path, monkeypatch, open_lazy):
    pixels = np.arange(3 * 70 * 45, dtype=np.uint16).reshape(70, 45, 3)
    tifffile.imwrite(tmp_path / "image.tif", pixels, photometric="rgb")
    monkeypatch.setitem(lazy_images.BLOCK_SIDE, 2, 16)  # blocks that do not start on the thumbnail's grid
    thumbnail = open_lazy(tmp_path / "image.tif", 2).thumbnail(max_side=20)  # every 4th pixel
    np.testing.assert_array_equal(thumbnail, np.moveaxis(pixels[::4, ::4], -1, 0).astype(np.float32))


def test_a_volume_block_by_block_equals_the_whole_volume(tmp_path, monkeypatch, open_lazy):
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 1), torch.nn.Tanh(), torch.nn.Conv3d(3, 2, 1)).eval()
    volume = np.random.default_rng(5).random((30, 50, 41)).astype(np.float32)
    tifffile.imwrite(tmp_path / "volume.tif", volume, metadata={"axes": "ZYX"})
    plan = {"normalisation": "zscore", "patch_size": [16, 16, 16], "spatial_dims": 3}
    monkeypatch.setitem(lazy_images.BLOCK_SIDE, 3, 24)  # blocks of 24 (twice the step of 12), margins of 24

    def outputs_of(block):
        with torch.no_grad():
            return predict_logits(network, torch.as_tensor(block[None]), plan)[0].numpy()

    whole = outputs_of(normalise(volume[None], plan))
    assembled = np.full_like(whole, np.nan)
    regions = []
    for region, outputs in predict_blocks(open_lazy(tmp_path / "volume.tif", 3), plan, outputs_of, "test"):
        assembled[(slice(None), *region)] = outputs
        regions.append(region)
    assert len(regions) == 2 * 3 * 2
    np.testing.assert_allclose(assembled, whole, atol=1e-5)


def test_a_mask_volume_becomes_a_tiled_bigtiff_plane_by_plane(tmp_path):
    labels = np.random.default_rng(6).integers(0, 3, (3, 300, 270), dtype=np.uint8)
    stored = zarr.create_array(str(tmp_path / "labels.zarr"), shape=labels.shape, dtype=np.uint8, chunks=(1, 64, 64))
    stored[...] = labels
    tiled.write_tiled_tiff(stored, tmp_path / "labels.tif")
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.pages[0].is_tiled
        np.testing.assert_array_equal(tif.asarray(), labels)
