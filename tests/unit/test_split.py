"""Tests for snakescope.split: seeded, stratified, grouped train/val/test splits."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pandas as pd
import pytest

from snakescope.io import InputError
from snakescope.split import load_split, make_split, write_split


def table(
    labels: list[str], subsets: list[str] | None = None, groups: list[str] | None = None
) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame(
        {
            "id": [f"s{i:03d}" for i in range(n)],
            "image": [f"/data/s{i:03d}.png" for i in range(n)],
            "target": [""] * n,
            "label": labels,
            "subset": subsets or [""] * n,
            "group": groups or [""] * n,
        }
    )


def check_partition(split: dict, samples: pd.DataFrame) -> None:
    parts = split["train"] + split["val"] + split["test"] + split["unlabelled_test"]
    assert sorted(parts) == sorted(samples["id"]), "every sample in exactly one split"
    for name in ("train", "val", "test"):
        assert split[name], f"{name} is empty"
        assert split[name] == sorted(split[name])


def test_same_seed_same_split_and_other_seed_other_split():
    samples = table(["a", "b"] * 30)
    first = make_split(samples, 0.2, 0.2, seed=1, stratify=True)
    assert make_split(samples.copy(), 0.2, 0.2, seed=1, stratify=True) == first
    assert make_split(samples, 0.2, 0.2, seed=2, stratify=True)["test"] != first["test"]
    assert first["seed"] == 1
    check_partition(first, samples)


def test_fractions_are_respected():
    samples = table(["a"] * 100)
    split = make_split(samples, 0.2, 0.25, seed=0, stratify=False)
    assert len(split["test"]) == 20 and len(split["val"]) == 20 and len(split["train"]) == 60


def test_stratification_keeps_class_proportions():
    labels = ["common"] * 60 + ["middle"] * 30 + ["rare"] * 10
    samples = table(labels)
    by_id = dict(zip(samples["id"], samples["label"], strict=True))
    for seed in range(3):
        split = make_split(samples, 0.2, 0.25, seed=seed, stratify=True)
        check_partition(split, samples)
        assert Counter(by_id[i] for i in split["test"]) == {"common": 12, "middle": 6, "rare": 2}
        val = Counter(by_id[i] for i in split["val"])
        assert abs(val["common"] - 12) <= 1 and abs(val["middle"] - 6) <= 1 and abs(val["rare"] - 2) <= 1


def test_rare_classes_stay_in_train(caplog):
    samples = table(["a"] * 20 + ["b"] * 20 + ["basophil"] * 2 + ["unique"])
    by_id = dict(zip(samples["id"], samples["label"], strict=True))
    for seed in range(5):
        split = make_split(samples, 0.2, 0.2, seed=seed, stratify=True)
        check_partition(split, samples)
        in_train = Counter(by_id[i] for i in split["train"])
        assert in_train["basophil"] == 2 and in_train["unique"] == 1
    assert "fewer than 3 images" in caplog.text and "basophil" in caplog.text


def test_tiny_stratified_datasets_do_not_crash():
    # 3 classes of 3: too few held-out slots to stratify both levels; still a valid split
    samples = table(["a", "b", "c"] * 3)
    check_partition(make_split(samples, 0.2, 0.2, seed=0, stratify=True), samples)
    # every class rare: falls back to a random split
    samples = table(["a", "a", "b", "b", "c", "c"])
    check_partition(make_split(samples, 0.2, 0.2, seed=0, stratify=True), samples)
    # a large test fraction
    samples = table(["a", "b", "c"] * 3)
    check_partition(make_split(samples, 0.8, 0.2, seed=0, stratify=True), samples)


def test_groups_stay_within_one_split():
    groups = [f"patient{i % 8}" for i in range(80)]
    samples = table(["a", "b"] * 40, groups=groups)
    group_of = dict(zip(samples["id"], samples["group"], strict=True))
    for seed in range(4):
        split = make_split(samples, 0.2, 0.2, seed=seed, stratify=True)
        check_partition(split, samples)
        groups_in = {name: {group_of[i] for i in split[name]} for name in ("train", "val", "test")}
        assert not groups_in["train"] & groups_in["val"]
        assert not groups_in["train"] & groups_in["test"]
        assert not groups_in["val"] & groups_in["test"]


def test_three_groups_give_one_group_per_split():
    samples = table(["a"] * 9, groups=["g1"] * 3 + ["g2"] * 3 + ["g3"] * 3)
    split = make_split(samples, 0.2, 0.2, seed=0, stratify=False)
    assert sorted(len(split[name]) for name in ("train", "val", "test")) == [3, 3, 3]


def test_too_few_groups_for_a_group_column():
    samples = table(["a"] * 10, groups=["g1"] * 5 + ["g2"] * 5)
    with pytest.raises(
        InputError, match=r"only 2 group\(s\) \['g1', 'g2'\]; at least 3 are needed.*remove group_column"
    ):
        make_split(samples, 0.2, 0.2, seed=0, stratify=False, require_groups=True)


def test_write_split_requires_groups_when_group_column_is_set(tmp_path):
    table(["a"] * 10, groups=["g1"] * 5 + ["g2"] * 5).to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    settings = {
        "task": "classification",
        "seed": 0,
        "test_fraction": 0.2,
        "val_fraction": 0.2,
        "group_column": "p",
    }
    with pytest.raises(InputError, match="at least 3 are needed"):
        write_split(str(tmp_path / "samples.tsv"), settings, str(tmp_path / "splits.json"))
    assert not (tmp_path / "splits.json").exists()


def test_automatic_groups_fall_back_to_single_images_when_too_few(caplog):
    # e.g. the tiles of one large image: one group, split tile by tile (logged)
    samples = table([""] * 12, groups=["field1"] * 12)
    samples["target"] = "/data/gt.tif"
    split = make_split(samples, 0.25, 0.25, seed=0, stratify=False)
    check_partition(split, samples)
    assert "only 1 group(s) ['field1']" in caplog.text


def one_image_tiles() -> tuple[pd.DataFrame, dict[str, int]]:
    """4 rows x 5 columns of 10-pixel tiles of one image (layout.tile_size), and each tile's x."""
    corners = [(y, x) for y in range(0, 40, 10) for x in range(0, 50, 10)]
    samples = table([""] * 20, groups=["slide"] * 20)
    samples["target"] = "/data/gt.tif"
    samples["region"] = [f"y{y}:{y + 10},x{x}:{x + 10}" for y, x in corners]
    return samples, {f"s{i:03d}": x for i, (_, x) in enumerate(corners)}


def test_the_tiles_of_one_image_split_in_bands_from_the_right(caplog):
    caplog.set_level(logging.INFO, logger="snakescope")
    samples, column = one_image_tiles()  # no test_right_fraction

    for seed in (0, 1):
        split = make_split(samples, 0.2, 0.25, seed=seed, stratify=False)
        check_partition(split, samples)
        assert {column[i] for i in split["test"]} == {40} and len(split["test"]) == 4  # the rightmost column
        assert {column[i] for i in split["val"]} == {30} and len(split["val"]) == 4  # the band next to it
    assert "the 4 furthest right held out as one band (x from 30)" in caplog.text
    assert "spans two splits" not in caplog.text


def test_a_test_band_of_the_same_image_is_reported_as_the_layout_chose_it_not_as_a_leak(caplog):
    caplog.set_level(logging.INFO, logger="snakescope")
    samples, column = one_image_tiles()
    samples["subset"] = ["test" if column[i] == 40 else "" for i in samples["id"]]  # test_right_fraction
    split = make_split(samples, 0.2, 0.25, seed=0, stratify=False)
    check_partition(split, samples)
    assert sorted(split["test"]) == sorted(samples["id"][samples["subset"] == "test"])
    assert "image(s) ['slide']: the test tiles are the band layout.test_right_fraction holds out" in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]

    whole_images = table([""] * 8, groups=["a", "a", "b", "b", "c", "c", "d", "d"])
    whole_images["target"] = "/data/gt.tif"
    whole_images["subset"] = ["test", "", "", "", "", "", "", ""]
    make_split(whole_images, 0.2, 0.25, seed=0, stratify=False)
    assert "groups ['a'] have images both in the given test set and in training" in caplog.text


def test_images_without_a_group():
    samples = table(["a"] * 6, groups=["g1", "g2", "g3", "g1", "", "g2"])
    with pytest.raises(InputError, match=r"1 image\(s\) have no group \(e.g. 's004'\)"):
        make_split(samples, 0.2, 0.2, seed=0, stratify=False)


def test_user_test_set_is_respected():
    subsets = [""] * 12 + ["test"] * 3
    samples = table(["a", "b", "c"] * 5, subsets=subsets)
    split = make_split(samples, 0.5, 0.2, seed=0, stratify=True)
    check_partition(split, samples)
    assert split["test"] == ["s012", "s013", "s014"]
    assert len(split["train"]) + len(split["val"]) == 12


def test_user_train_subset_is_split_into_train_and_val():
    samples = table(["a"] * 4, subsets=["train", "train", "test", "test"])
    split = make_split(samples, 0.2, 0.2, seed=0, stratify=False)
    assert split["test"] == ["s002", "s003"] and len(split["train"]) == len(split["val"]) == 1


def test_unlabelled_test_images_are_kept_apart():
    samples = table(["a"] * 6 + [""] * 2, subsets=["train"] * 6 + ["test"] * 2)
    split = make_split(samples, 0.2, 0.2, seed=0, stratify=True)
    assert split["unlabelled_test"] == ["s006", "s007"]
    assert split["test"]  # no labelled test set given: one is split off the training images
    check_partition(split, samples)


@pytest.mark.parametrize(("n", "subsets", "needed"), [(2, None, 3), (1, ["", "test"], 2), (0, None, 3)])
def test_too_few_images(n, subsets, needed):
    labels = ["a"] * len(subsets) if subsets else ["a"] * n
    with pytest.raises(InputError, match=f"at least {needed} are needed.*Add images"):
        make_split(table(labels, subsets=subsets), 0.2, 0.2, seed=0, stratify=True)


def test_write_split_and_load_split_round_trip(tmp_path):
    samples = table(["a", "b"] * 10)
    samples.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    settings = {"task": "classification", "seed": 3, "test_fraction": 0.2, "val_fraction": 0.2}
    split = write_split(str(tmp_path / "samples.tsv"), settings, str(tmp_path / "split" / "splits.json"))
    assert load_split(str(tmp_path / "split" / "splits.json"), known_ids=set(samples["id"])) == split
    assert split == make_split(samples, 0.2, 0.2, seed=3, stratify=True)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"train": ["a"], "val": ["b"]}, "no 'test' list"),
        ({"train": ["a"], "val": ["a"], "test": ["c"]}, r"\['a'\] appear in more than one split"),
        ({"train": ["a"], "val": ["b"], "test": ["zz"]}, r"unknown sample id\(s\) \['zz'\]"),
        ({"train": "a", "val": ["b"], "test": ["c"]}, "'train' must be a list of sample ids"),
        ({"train": ["a"], "val": [], "test": ["c"]}, "the 'val' list is empty"),
        (["a", "b"], "expected a JSON object"),
    ],
)
def test_load_split_rejects_bad_files(tmp_path, content, expected):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match=expected) as info:
        load_split(str(path), known_ids={"a", "b", "c"})
    assert str(path) in str(info.value)


def test_load_split_invalid_json(tmp_path):
    (tmp_path / "splits.json").write_text('{"train": ["a",]')
    with pytest.raises(InputError, match="not valid JSON"):
        load_split(str(tmp_path / "splits.json"))
