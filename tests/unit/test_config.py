"""Tests for snakescope.config: schema validation with clear messages, defaults, per-dataset settings."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from snakescope.config import (
    STAGE_KEYS,
    ConfigError,
    TrainConfig,
    load_schema,
    resolve_datasets,
    stage_settings,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema() -> dict:
    return load_schema()


def resolve(config: dict, schema: dict, base_dir: Path = Path("/project")) -> dict:
    return resolve_datasets(config, schema, base_dir)


# ---------------------------------------------------------------------------------------------------
# defaults


def test_two_key_classification_config_fills_defaults(schema):
    datasets = resolve({"task": "classification", "data_dir": "data/cells"}, schema)
    assert list(datasets) == ["cells"]
    settings = datasets["cells"]
    assert settings["name"] == "cells"
    assert settings["data_dir"] == "/project/data/cells"
    assert settings["resize"] == [224, 224]
    assert settings["models"] == ["resnet50"]
    assert settings["loss"] == "cross_entropy"
    assert settings["seeds"] == [0]
    assert settings["epochs"] == 100 and settings["batch_size"] == 16
    assert settings["layout"]["filename_column"] == "filename"
    assert settings["layout"]["label_column"] == "label"
    assert settings["layout"]["filename_format"] == "{}"
    assert settings["pretrained_weights"] is None


def test_two_key_segmentation_config_keeps_native_size(schema):
    settings = resolve({"task": "segmentation", "data_dir": "/data/nuclei"}, schema)["nuclei"]
    assert settings["resize"] is None
    assert settings["models"] == ["unet"]
    assert settings["loss"] == "dice_cross_entropy"
    assert settings["data_dir"] == "/data/nuclei"


def test_config_is_not_modified(schema):
    config = {"task": "classification", "data_dir": "d", "layout": {"images": "*.png"}, "classes": ["a", "b"]}
    before = copy.deepcopy(config)
    settings = resolve(config, schema)["d"]
    settings["classes"].append("c")
    settings["layout"]["images"] = "changed"
    assert config == before


def test_datasets_mapping_with_per_dataset_overrides(schema):
    config = {
        "epochs": 7,
        "batch_size": 4,
        "datasets": {
            "wbc": {"task": "classification", "data_dir": "a", "epochs": 3, "resize": [64, 64]},
            "nuclei": {
                "task": "segmentation",
                "data_dir": "/b",
                "layout": {"images": "x/*.png", "masks": "y/*"},
            },
        },
    }
    datasets = resolve(config, schema)
    assert list(datasets) == ["wbc", "nuclei"]
    assert datasets["wbc"]["epochs"] == 3 and datasets["nuclei"]["epochs"] == 7
    assert datasets["wbc"]["batch_size"] == datasets["nuclei"]["batch_size"] == 4
    assert datasets["wbc"]["resize"] == [64, 64] and datasets["nuclei"]["resize"] is None
    assert datasets["nuclei"]["layout"]["images"] == "x/*.png"
    assert datasets["nuclei"]["layout"]["filename_column"] == "filename"  # layout defaults still filled
    assert datasets["wbc"]["data_dir"] == "/project/a"
    assert datasets["nuclei"]["name"] == "nuclei"


def test_relative_paths_resolved_against_base_dir(schema, tmp_path):
    (tmp_path / "project" / "w").mkdir(parents=True)
    (tmp_path / "project" / "w" / "model.pt").write_bytes(b"")
    config = {"task": "segmentation", "data_dir": "../shared/data/x", "pretrained_weights": "w/model.pt"}
    settings = resolve(config, schema, base_dir=tmp_path / "project")["x"]
    assert settings["data_dir"] == str((tmp_path / "shared" / "data" / "x").resolve())
    assert settings["pretrained_weights"] == str((tmp_path / "project" / "w" / "model.pt").resolve())


def test_base_dir_defaults_to_working_directory(schema, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = resolve_datasets({"task": "segmentation", "data_dir": "imgs"}, schema)["imgs"]
    assert settings["data_dir"] == str((tmp_path / "imgs").resolve())


@pytest.mark.parametrize(
    ("data_dir", "name"),
    [("..", "project"), (".", "sub"), ("my data.v2/", "my_data_v2"), ("/", "data")],
)
def test_dataset_name_from_data_dir_is_safe_for_paths(schema, data_dir, name):
    assert list(resolve({"task": "segmentation", "data_dir": data_dir}, schema, Path("/project/sub"))) == [
        name
    ]


def test_whole_number_floats_become_ints(schema):
    settings = resolve(
        {"task": "segmentation", "data_dir": "d", "epochs": 10.0, "patch_size": [64.0, 64]}, schema
    )
    assert settings["d"]["epochs"] == 10 and isinstance(settings["d"]["epochs"], int)
    assert all(isinstance(v, int) for v in settings["d"]["patch_size"])


def test_seeds_default_to_seed(schema):
    assert resolve({"task": "segmentation", "data_dir": "d", "seed": 5}, schema)["d"]["seeds"] == [5]
    assert resolve({"task": "segmentation", "data_dir": "d", "seeds": [1, 2]}, schema)["d"]["seeds"] == [1, 2]


@pytest.mark.parametrize("path", ["config/config.yaml", "tests/workflow/configs/real_data.yaml"])
def test_shipped_configs_are_valid(schema, path):
    config_file = REPO / path
    if not config_file.is_file():
        pytest.skip(f"{path} not present")
    datasets = resolve_datasets(yaml.safe_load(config_file.read_text()), schema, REPO)
    assert datasets


# ---------------------------------------------------------------------------------------------------
# bad configs: one message naming the key, the value received and what is allowed


def error_of(config: dict, schema: dict) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(config, schema)
    return str(info.value)


def test_wrong_type(schema):
    message = error_of({"task": "classification", "data_dir": "d", "batch_size": "eight"}, schema)
    assert "batch_size" in message and "'eight'" in message
    assert "whole number >= 1" in message and "default 16" in message


def test_value_out_of_range(schema):
    message = error_of({"task": "classification", "data_dir": "d", "epochs": 0}, schema)
    assert "epochs: got 0" in message and "whole number >= 1" in message


def test_misspelt_task_suggests_the_right_one(schema):
    message = error_of({"task": "segmentaton", "data_dir": "d"}, schema)
    assert "task: got 'segmentaton'" in message
    assert "Did you mean 'segmentation'?" in message
    assert "classification" in message  # the allowed values are listed


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("epoch", "epochs"), ("batchsize", "batch_size"), ("learningrate", "learning_rate")],
)
def test_unknown_key_suggests_the_right_one(schema, key, suggestion):
    message = error_of({"task": "classification", "data_dir": "d", key: 3}, schema)
    assert f"unknown key '{key}'" in message
    assert f"Did you mean '{suggestion}'?" in message


def test_unknown_key_inside_a_dataset_entry(schema):
    message = error_of({"datasets": {"a": {"task": "segmentation", "data_dir": "d", "epoch": 3}}}, schema)
    assert message.startswith("datasets/a: unknown key 'epoch'. Did you mean 'epochs'?")


def test_unknown_layout_key(schema):
    message = error_of({"task": "classification", "data_dir": "d", "layout": {"filname_column": "x"}}, schema)
    assert "layout: unknown key 'filname_column'. Did you mean 'filename_column'?" in message


def test_misspelt_list_item(schema):
    message = error_of(
        {"task": "classification", "data_dir": "d", "augmentations": ["flip", "rotat90"]}, schema
    )
    assert "augmentations/1: got 'rotat90'" in message and "Did you mean 'rotate90'?" in message


@pytest.mark.parametrize(
    ("config", "missing"), [({"task": "segmentation"}, "`data_dir`"), ({"data_dir": "d"}, "`task`")]
)
def test_missing_required_key(schema, config, missing):
    message = error_of(config, schema)
    assert f"{missing} missing" in message and "datasets" in message


def test_dataset_entry_missing_data_dir(schema):
    message = error_of({"datasets": {"a": {"task": "segmentation"}}}, schema)
    assert "datasets/a: 'data_dir' is a required property" in message


def test_bad_dataset_name(schema):
    message = error_of({"datasets": {"my data": {"task": "segmentation", "data_dir": "d"}}}, schema)
    assert "'my data'" in message and "letters, digits" in message


def test_data_dir_and_datasets_together(schema):
    message = error_of(
        {
            "data_dir": "x",
            "task": "segmentation",
            "datasets": {"a": {"task": "segmentation", "data_dir": "d"}},
        },
        schema,
    )
    assert "either top-level `data_dir` or a `datasets:` mapping, not both" in message


def test_several_errors_reported_together(schema):
    message = error_of(
        {"task": "classification", "data_dir": "d", "epochs": 0, "batch_size": "eight"}, schema
    )
    assert "epochs" in message and "batch_size" in message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"task": "classification", "loss": "dice"}, "loss 'dice' does not suit classification"),
        ({"task": "segmentation", "loss": "mse"}, "loss 'mse' does not suit segmentation"),
        ({"task": "regression", "loss": "cross_entropy"}, "loss 'cross_entropy' does not suit regression"),
        (
            {"task": "segmentation", "threshold": 1.5},
            "threshold must be 'otsu' or a number in (0, 1), got 1.5",
        ),
        ({"task": "segmentation", "threshold": "auto"}, "threshold must be 'otsu'"),
        (
            {"task": "segmentation", "resize": [64, 64], "patch_size": [16, 32, 32]},
            "resize [64, 64] has 2 axes",
        ),
    ],
)
def test_settings_that_do_not_fit_together(schema, extra, expected):
    message = error_of({"data_dir": "d", **extra}, schema)
    assert message.startswith("config: ")
    assert expected in message


def test_data_dir_that_does_not_exist_is_reported_by_convert_not_config(schema, tmp_path):
    # Resolving the config must not need the data (a dry run before the demo data is drawn works);
    # the convert rule reports the missing folder (tests/unit/test_convert.py).
    settings = resolve({"task": "segmentation", "data_dir": str(tmp_path / "missing")}, schema)
    assert settings["missing"]["data_dir"] == str(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------
# per-stage settings


def test_stage_settings_returns_only_that_stages_keys(schema):
    settings = resolve({"task": "classification", "data_dir": "d", "epochs": 5}, schema)["d"]
    for stage, keys in STAGE_KEYS.items():
        subset = stage_settings(settings, stage)
        if stage == "recommend":  # without the values the user set (see test_autoconfig)
            assert set(subset) < set(keys) and "epochs" not in subset
        else:
            assert list(subset) == list(keys)
        assert all(subset[k] == settings.get(k) for k in subset)
    assert "epochs" in stage_settings(settings, "train")
    assert "epochs" not in stage_settings(settings, "convert")
    assert "data_dir" not in stage_settings(settings, "train")


def test_train_config_from_settings(schema):
    settings = resolve({"task": "segmentation", "data_dir": "d", "patch_size": [64, 64]}, schema)["d"]
    cfg = TrainConfig.from_settings(settings, model="unet", seed=3)
    assert cfg.model == "unet" and cfg.seed == 3 and cfg.patch_size == (64, 64)
    assert cfg.augmentations == ("flip", "rotate90") and cfg.device == "auto"
