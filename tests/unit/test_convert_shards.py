"""A dataset converted in shards and gathered is the dataset converted in one job (snakescope.convert.shards)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_convert import SIZE, instantdl_classification, instantdl_segmentation, rgb, save, settings_for

from snakescope.config import stage_settings
from snakescope.convert import (
    convert_dataset,
    convert_shard,
    discover_samples,
    gather_shards,
    list_input_files,
    shard_count,
)
from snakescope.convert.fingerprint import _intensity_samples
from snakescope.convert.shards import ShardImages, plan_shards, shard_input_files, shard_samples
from snakescope.io import InputError
from snakescope.store import open_store

SHARD_SIZE = 3


def convert_in_shards(settings: dict, out: Path) -> list[Path]:
    """Every shard as its own job would convert it, then the gather step; returns the shard folders."""
    shards = shard_count(len(discover_samples(settings)), SHARD_SIZE)
    shard_dirs = [out / "shards" / str(k) for k in range(shards)]
    for k, shard_dir in enumerate(shard_dirs):
        convert_shard(settings, k, shards, SHARD_SIZE, shard_dir)
    gather_shards(settings, shard_dirs, out / "arrays.zarr", out / "samples.tsv", out / "fingerprint.json")
    return shard_dirs


def converted(out: Path) -> tuple[str, str, dict]:
    with open_store(out / "arrays.zarr") as store:
        arrays = {key: store[key] for key in store.keys()}
    return (out / "samples.tsv").read_text(), (out / "fingerprint.json").read_text(), arrays


def assert_same_conversion(actual: tuple[str, str, dict], expected: tuple[str, str, dict]) -> None:
    """Two `converted` outputs are the same: table and fingerprint text, every array with its dtype."""
    (table, fingerprint, arrays), (expected_table, expected_fingerprint, expected_arrays) = actual, expected
    assert table == expected_table
    assert fingerprint == expected_fingerprint
    assert arrays.keys() == expected_arrays.keys()
    for key, array in expected_arrays.items():
        assert arrays[key].dtype == array.dtype
        np.testing.assert_array_equal(arrays[key], array, err_msg=key)


def binary_masks(root: Path, names: list[str]) -> Path:
    """Images with binary masks of two touching objects: instances derived by convert (the targets it
    rewrites)."""
    for i, name in enumerate(names):
        save(root / "image" / f"{name}.png", rgb(i))
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[3:11, 3 + i % 3 : 12 + i % 3] = 255
        mask[11:20, 6:16] = 255
        save(root / "groundtruth" / f"{name}.png", mask)
    return root


@pytest.mark.parametrize("task", ["segmentation", "classification", "segmentation_tiles", "instances_from_binary"])
def test_shards_gather_into_what_one_job_writes(tmp_path, task):
    names = [f"img{i}" for i in range(7)]
    if task == "classification":
        data = instantdl_classification(tmp_path / "data", {n: "ab"[i % 2] for i, n in enumerate(names)})
        settings = settings_for(data)
    elif task == "instances_from_binary":
        settings = settings_for(binary_masks(tmp_path / "data", names), task="instance_segmentation")
    else:
        data = instantdl_segmentation(tmp_path / "data", names)
        layout = {"tile_size": [12, 12], "test_right_fraction": 0.5} if task == "segmentation_tiles" else {}
        settings = settings_for(data, task="segmentation", layout=layout)
    settings = stage_settings(settings, "convert")

    convert_dataset(settings, tmp_path / "one" / "arrays.zarr", tmp_path / "one" / "samples.tsv",
                    tmp_path / "one" / "fingerprint.json")
    shard_dirs = convert_in_shards(settings, tmp_path / "sharded")

    assert len(shard_dirs) == 3  # 7 images in shards of 3: 3 + 3 + 1
    table, _, _ = converted(tmp_path / "one")
    assert_same_conversion(converted(tmp_path / "sharded"), converted(tmp_path / "one"))
    # the gathered store links the shards' image chunks rather than writing them again
    # the last sample, which is also the last of the last shard's store
    last = table.count("\n") - 2  # the table's rows, counted from 0, less the header
    with open_store(shard_dirs[-1] / "arrays.zarr") as shard_store:
        last_in_shard = sum(key.startswith("image/") for key in shard_store.keys()) - 1
    gathered = tmp_path / "sharded" / "arrays.zarr" / "images" / str(last) / "0"
    in_shard = shard_dirs[-1] / "arrays.zarr" / "images" / str(last_in_shard) / "0"
    chunks = sorted(p.relative_to(in_shard) for p in in_shard.rglob("*") if p.is_file())
    assert chunks == sorted(p.relative_to(gathered) for p in gathered.rglob("*") if p.is_file())
    assert all((gathered / chunk).samefile(in_shard / chunk) for chunk in chunks)


def test_gather_reads_each_image_once_with_the_summaries_the_shards_made(tmp_path, monkeypatch):
    settings = stage_settings(settings_for(instantdl_segmentation(tmp_path / "data", [f"img{i}" for i in range(7)]),
                                           task="segmentation"), "convert")
    convert_dataset(settings, tmp_path / "one" / "arrays.zarr", tmp_path / "one" / "samples.tsv",
                    tmp_path / "one" / "fingerprint.json")
    reads = []
    original = ShardImages.__getitem__
    monkeypatch.setattr(ShardImages, "__getitem__", lambda self, key: reads.append(key) or original(self, key))

    convert_in_shards(settings, tmp_path / "sharded")

    assert sorted(reads) == [f"img{i}" for i in range(7)]  # the intensity samples' read, nothing more
    assert_same_conversion(converted(tmp_path / "sharded"), converted(tmp_path / "one"))


def test_gather_reports_the_problems_of_every_shard_at_once(tmp_path):
    names = [f"img{i}" for i in range(7)]
    data = instantdl_segmentation(tmp_path / "data", names)
    (data / "image" / "img1.png").write_bytes(b"not a png")  # shard 0
    save(data / "groundtruth" / "img6.png", np.zeros((5, 5), np.uint8))  # shard 2: mask of another size
    settings = stage_settings(settings_for(data, task="segmentation"), "convert")
    out = tmp_path / "results"

    with pytest.raises(InputError) as info:
        convert_in_shards(settings, out)

    message = str(info.value)
    assert message.startswith("2 problem(s) in the input data")
    assert "img1.png" in message and "img6.png" in message
    assert sorted(p.name for p in out.iterdir()) == ["shards"]  # no store, table or fingerprint


def test_a_shard_refuses_a_data_folder_changed_since_the_plan(tmp_path):
    data = instantdl_segmentation(tmp_path / "data", [f"img{i}" for i in range(7)])
    settings = stage_settings(settings_for(data, task="segmentation"), "convert")
    samples = discover_samples(settings)
    assert [s.id for s in shard_samples(samples, 2, SHARD_SIZE, 3)] == ["img6"]

    with pytest.raises(InputError, match="now holds 7 samples, which make 3 convert shard"):
        shard_samples(samples, 0, SHARD_SIZE, 2)


def test_intensity_samples_read_each_image_once_and_draw_what_one_generator_draws_channel_by_channel():
    rng = np.random.default_rng(3)
    images = {f"im{i}": rng.random((3, 20 + i, 30)).astype(np.float32) for i in range(5)}
    images["large"] = rng.random((3, 120, 100)).astype(np.float32)  # more pixels than are drawn per image
    reads = []

    class CountingReads(dict):
        def values(self):
            for image in super().values():
                reads.append(1)
                yield image

    sizes = [image[0].size for image in images.values()]
    values = _intensity_samples(CountingReads(images), sizes, n_channels=3)

    # what the fingerprint drew before, reading every image once per channel
    reference = np.random.default_rng(0)
    per_image = 10_000  # at most 10,000 pixels of each of 6 images: all of the small ones
    for channel in range(3):
        expected = np.concatenate([reference.choice(image[channel].ravel(), size=min(image[channel].size, per_image),
                                                    replace=False) for image in images.values()])
        np.testing.assert_array_equal(values[channel], expected)
    assert len(reads) == 6


def test_the_workflow_plans_one_job_per_shard_with_only_its_own_files(tmp_path):
    names = [f"img{i}" for i in range(7)]
    data = instantdl_classification(tmp_path / "data", {n: "ab"[i % 2] for i, n in enumerate(names)})
    settings = settings_for(data, convert_shard_size=SHARD_SIZE)

    shards = plan_shards(settings, list_input_files(settings))

    assert [[s.id for s in shard] for shard in shards] == [names[0:3], names[3:6], names[6:]]
    files = shard_input_files(shards[1], list_input_files(settings))
    assert files == [str(data / "groundtruth" / "groundtruth.csv")] + [str(data / "image" / f"{n}.png") for n in names[3:6]]
    assert plan_shards({**settings, "convert_shard_size": 7}, list_input_files(settings)) == []  # one job
