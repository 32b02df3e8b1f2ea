"""Tests for snakescope.store: the chunked OME-Zarr store that convert writes and every later rule reads."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from snakescope.io import InputError, ome_zarr_label_names, read_ome_zarr
from snakescope.store import SpilledArrays, open_store, storage_dtype, write_store


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([0, 255], dtype=np.float32), np.uint8),
        (np.array([0, 4095], dtype=np.float32), np.uint16),
        (np.array([-3, 200], dtype=np.float32), np.int16),
        (np.array([0.5, 2], dtype=np.float32), np.float32),  # not whole numbers
        (np.array([0, 70_000], dtype=np.float32), np.float32),  # beyond uint16
        (np.array([0, np.nan], dtype=np.float32), np.float32),
        (np.array([0, 1], dtype=np.int64), np.uint8),  # a binary mask
        (np.array([0, 300], dtype=np.int64), np.uint16),  # 300 instances
        (np.array([-1, 5], dtype=np.int64), np.int8),  # an ignore label
    ],
)
def test_storage_dtype_is_the_smallest_lossless_one(values, expected):
    assert storage_dtype(values) == np.dtype(expected)


def _dataset(rng):
    """Images as convert holds them (float32) from uint8, uint16 and float sources, with their targets."""
    return {
        "rgb": (rng.integers(0, 256, (3, 300, 40)).astype(np.float32), rng.integers(0, 3, (300, 40))),
        "deep": (rng.integers(0, 4096, (1, 16, 20, 24)).astype(np.float32), None),
        "stain": (rng.normal(size=(1, 30, 30)).astype(np.float32), rng.normal(size=(30, 30)).astype(np.float32)),
    }


def _written(dataset: dict, path):
    with write_store(path) as store:
        for sample_id, (image, target) in dataset.items():
            store.add(sample_id, image, target)
    return path


def test_store_gives_back_what_convert_held_in_its_own_dtypes(tmp_path):
    dataset = _dataset(np.random.default_rng(0))
    path = _written(dataset, tmp_path / "arrays.zarr")

    with open_store(path) as store:
        assert store.keys() == ["image/rgb", "target/rgb", "image/deep", "image/stain", "target/stain"]
        assert "target/deep" not in store and "image/other" not in store
        for sample_id, (image, target) in dataset.items():
            read = store[f"image/{sample_id}"]
            assert read.dtype == np.float32
            np.testing.assert_array_equal(read, image)
            if target is not None:
                read = store[f"target/{sample_id}"]
                assert read.dtype == target.dtype
                np.testing.assert_array_equal(read, target)
        with pytest.raises(KeyError, match="target/deep"):
            store["target/deep"]

    root = zarr.open_group(str(path), mode="r")
    # stored natively: uint8 and uint16 pixels, a 3-class mask in uint8, the float target as float32
    assert [root[f"images/{n}/0"].dtype for n in range(3)] == [np.uint8, np.uint16, np.float32]
    assert root["images/0/labels/target/0"].dtype == np.uint8
    assert root["targets/2/0"].dtype == np.float32
    # chunked per spatial tile with every channel: 256 in 2D, 64 in 3D, the whole axis when shorter
    assert root["images/0/0"].chunks == (3, 256, 40)
    assert root["images/1/0"].chunks == (1, 16, 20, 24)


def test_store_is_ome_zarr_with_each_mask_as_the_label_image_of_its_image(tmp_path):
    dataset = _dataset(np.random.default_rng(1))
    path = _written(dataset, tmp_path / "arrays.zarr")

    # read with the OME-Zarr reader that reads users' images (NGFF 0.5 metadata, axes c, z, y, x)
    np.testing.assert_array_equal(read_ome_zarr(path / "images" / "0"), dataset["rgb"][0].astype(np.uint8))
    np.testing.assert_array_equal(read_ome_zarr(path / "images" / "1"), dataset["deep"][0][0].astype(np.uint16))
    assert ome_zarr_label_names(path / "images" / "0") == ["target"]
    np.testing.assert_array_equal(read_ome_zarr(path / "images" / "0" / "labels" / "target"), dataset["rgb"][1])
    label_metadata = zarr.open_group(str(path / "images" / "0" / "labels" / "target"), mode="r").attrs["ome"]
    assert "image-label" in label_metadata


def test_a_failed_write_leaves_no_store_and_keeps_the_previous_one(tmp_path):
    path = tmp_path / "arrays.zarr"
    image = np.ones((1, 8, 8), dtype=np.float32)
    with write_store(path) as store:
        store.add("kept", image)

    with pytest.raises(RuntimeError, match="killed"), write_store(path) as store:
        store.add("new", image)
        raise RuntimeError("killed")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.zarr"]
    with open_store(path) as store:
        assert store.keys() == ["image/kept"]


def test_an_incomplete_store_is_named_with_the_fix(tmp_path):
    (tmp_path / "arrays.zarr").mkdir()
    with pytest.raises(InputError, match=r"arrays.zarr: not a complete snakescope store .* run the convert rule"):
        open_store(tmp_path / "arrays.zarr")


@pytest.mark.parametrize("budget", [0, 30_000])  # all on disk; a (24,000 bytes) and c (1,200) in memory
def test_spilled_arrays_are_a_dict_held_in_memory_up_to_a_budget_then_on_disk(tmp_path, budget):
    rng = np.random.default_rng(2)
    arrays = {"a": rng.random((1, 300, 20), dtype=np.float32), "b": rng.integers(0, 9, (2, 8, 8, 8)),
              "c": rng.integers(0, 2, (40, 30)).astype(bool)}
    spilled = SpilledArrays(tmp_path / "scratch", memory_budget=budget)
    spilled.update(arrays)
    assert spilled.in_memory() == (["a", "c"] if budget else [])  # b, 8,192 bytes, is over the budget
    assert list(spilled) == ["a", "b", "c"] and len(spilled) == 3 and "b" in spilled
    for key, array in arrays.items():
        read = spilled[key]
        assert read.dtype == array.dtype
        np.testing.assert_array_equal(read, array)
    spilled["b"] = np.zeros((1, 2, 2), np.float32)  # replaced, keeping its place, as in a dict
    assert list(spilled) == ["a", "b", "c"] and spilled["b"].shape == (1, 2, 2)
    del spilled["a"]
    assert list(spilled) == ["b", "c"] and spilled.get("a") is None
    assert spilled.held == (16 + 1_200 if budget else 0)  # the new b fits in memory when there is a budget
    if not budget:  # on disk in the smallest lossless dtype: the booleans as uint8
        assert zarr.open_group(str(tmp_path / "scratch"), mode="r")[spilled.entries["c"]].dtype == np.uint8


def test_usable_memory_is_the_cgroup_limit_when_there_is_one(tmp_path):
    from snakescope.resources import cgroup_memory_limit, usable_memory_bytes

    (tmp_path / "memory" / "job_7").mkdir(parents=True)
    (tmp_path / "memory" / "job_7" / "memory.limit_in_bytes").write_text("3221225472\n")
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "memory.max").write_text("max\n")
    v1 = "4:memory:/job_7\n1:cpu:/\n0::/"
    assert cgroup_memory_limit(v1, tmp_path) == 3 * 2**30
    assert cgroup_memory_limit("0::/slurm", tmp_path) is None  # v2 without a limit
    (tmp_path / "slurm" / "memory.max").write_text("1073741824\n")
    assert cgroup_memory_limit("0::/slurm", tmp_path) == 2**30
    assert cgroup_memory_limit("0::/elsewhere", tmp_path) is None  # not readable
    import os
    assert 0 < usable_memory_bytes() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
