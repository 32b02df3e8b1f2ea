"""Auto-configuration (issue 6): fingerprint features, the results library, the nearest-neighbour
meta-learner and the rule-based planner (snakescope.library, snakescope.planner)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from snakescope.config import ConfigError, resolve_datasets
from snakescope.library import (
    FEATURES,
    fingerprint_features,
    library_rows,
    load_library,
    read_sqlite,
    recommend_model,
    record,
)
from snakescope.planner import (
    Resources,
    StepCost,
    apply_plan,
    inference_seconds,
    make_plan,
    measure_step,
    overhead_seconds_per_run,
    pin_plan,
    plan_batch_size,
    plan_epochs,
    plan_patch_size,
)

CPU = Resources("cpu", None, None, 2, None)
GPU = Resources("cuda", "Test GPU", 16.0, 8, None)


def fingerprint(name="a", task="classification", n_images=100, side=64, **extra) -> dict:
    fp = {
        "dataset": name,
        "task": task,
        "n_images": n_images,
        "n_by_subset": {"unsplit": n_images},
        "spatial_dims": 2,
        "channels": 3,
        "source_dtypes": {"uint8": n_images},
        "shape_median": [side, side],
        "resized_to": [side, side] if task == "classification" else None,
        "intensity": [{"mean": 100.0, "std": 20.0}],
        "brightness_spread": 0.05,
        "checksums": {f"{name}{i}": str(i) for i in range(3)},
    }
    if task == "classification":
        fp["classes"] = ["x", "y"]
        fp["class_counts"] = {"x": n_images // 2, "y": n_images - n_images // 2}
    else:
        fp["num_classes"] = 2
        fp["class_fraction"] = {"0": 0.8, "1": 0.2}
        fp["median_object_area"] = 50.0
    return {**fp, **extra}


def settings_for(config: dict) -> dict:
    return next(iter(resolve_datasets(config).values()))


def test_features_are_finite_numbers_for_every_task():
    for task in ("classification", "segmentation"):
        features = fingerprint_features(fingerprint(task=task))
        assert list(features) == FEATURES
        assert all(isinstance(v, float) for v in features.values())
    seg = fingerprint_features(fingerprint(task="segmentation"))
    assert seg["foreground_fraction"] == pytest.approx(0.2)
    assert seg["log_object_area"] == pytest.approx(1.69897, abs=1e-4)
    # 50/50 classes: no imbalance; 16-bit source: bit depth 16
    assert fingerprint_features(fingerprint())["imbalance"] == 0.0
    assert fingerprint_features(fingerprint(source_dtypes={"uint16": 3}))["bit_depth"] == 16.0


def _library(scores: dict[str, dict[str, float]], fps: dict[str, dict]) -> pd.DataFrame:
    """A library from {dataset: {model: score}}."""
    rows = [
        {"dataset": d, "task": fps[d]["task"], "model": m, "seed": 0, "accuracy": s, "baseline_accuracy": 0.5,
         "seconds_per_image_batch1": 0.01 if m == "fast" else 0.1, "config_hash": f"{d}{m}",
         "dataset_checksum": f"sum-{d}", "iou": s}
        for d, models in scores.items() for m, s in models.items()
    ]
    return library_rows(pd.DataFrame(rows), fps)


def test_meta_learner_follows_the_most_similar_dataset_and_names_it():
    fps = {
        "small_a": fingerprint("small_a", n_images=100, side=64),
        "small_b": fingerprint("small_b", n_images=120, side=64),
        "large": fingerprint("large", n_images=10000, side=512),
    }
    library = _library(
        {"small_a": {"fast": 0.90, "slow": 0.80}, "small_b": {"fast": 0.88, "slow": 0.85},
         "large": {"fast": 0.70, "slow": 0.95}},
        fps,
    )
    new_small = fingerprint_features(fingerprint("new", n_images=110, side=64))
    choice = recommend_model(new_small, "classification", library, ["fast", "slow"], k=2)
    assert choice.model == "fast"
    assert {n["dataset"] for n in choice.neighbours} == {"small_a", "small_b"}
    assert choice.predicted_regret == pytest.approx(0.0)
    assert "small_a" in " ".join(choice.reasons())
    new_large = fingerprint_features(fingerprint("new", n_images=9000, side=512))
    assert recommend_model(new_large, "classification", library, ["fast", "slow"], k=1).model == "slow"
    # nothing for this task, or none of the candidates: no recommendation
    assert recommend_model(new_small, "regression", library, ["fast"]) is None
    assert recommend_model(new_small, "classification", library, ["other"]) is None
    # leave-one-dataset-out: the held-out dataset is never a neighbour
    held_out = recommend_model(new_small, "classification", library, ["fast", "slow"], k=3, exclude_dataset="small_a")
    assert "small_a" not in {n["dataset"] for n in held_out.neighbours}


def test_record_accumulates_and_replaces_the_same_run(tmp_path):
    fps = {"a": fingerprint("a"), "b": fingerprint("b")}
    path = tmp_path / "lib" / "results.sqlite"
    assert record(_library({"a": {"fast": 0.5}}, fps), path) == 1
    assert record(_library({"b": {"fast": 0.6}}, fps), path) == 2
    # the same run recorded again (a rerun) replaces its row instead of adding one
    assert record(_library({"a": {"fast": 0.7}}, fps), path) == 2
    stored = read_sqlite(path)
    assert stored.set_index("dataset").loc["a", "score"] == 0.7
    shipped = tmp_path / "shipped.tsv"
    _library({"c": {"slow": 0.9}}, {"c": fingerprint("c")}).to_csv(shipped, sep="\t", index=False)
    assert set(load_library(path, shipped)["dataset"]) == {"a", "b", "c"}
    assert load_library(tmp_path / "absent.sqlite", None).empty


def test_patch_size_fits_the_median_image_and_the_hardware():
    assert plan_patch_size(fingerprint(task="segmentation", side=512), "cuda") == [256, 256]
    assert plan_patch_size(fingerprint(task="segmentation", side=512), "cpu") == [128, 128]
    assert plan_patch_size(fingerprint(task="segmentation", side=100), "cpu") == [64, 64]
    assert plan_patch_size(fingerprint(task="segmentation", side=20), "cpu") == [32, 32]


def test_batch_size_fills_the_measured_gpu_memory():
    cost = StepCost(0.01, bytes_per_sample=512 * 2**20, fixed_bytes=1 * 2**30)
    # 0.8 * 16 GiB - 1 GiB = 11.8 GiB -> 23 samples of 512 MiB -> 16 (power of two)
    assert plan_batch_size("segmentation", cost, GPU, n_train=1000)[0] == 16
    assert plan_batch_size("segmentation", cost, GPU, n_train=20)[0] == 4  # a quarter of the images
    assert plan_batch_size("classification", StepCost(0.01, 1e6, 1e9), GPU, n_train=10_000)[0] == 64
    assert plan_batch_size("segmentation", cost, CPU, n_train=1000)[0] == 8


def test_under_a_time_budget_the_epochs_are_a_bound_the_budget_reaches_first():
    # 0.01 s x 100 samples = 1 s per epoch: about 180 epochs in 180 s, bounded at twice that
    assert plan_epochs(0.01, 100, 180.0, configured_max=100)[0] == 360
    assert plan_epochs(0.1, 100, 180.0, configured_max=100)[0] == 100  # about 18: the configured maximum
    assert plan_epochs(10.0, 100, None, configured_max=50)[0] == 50  # no budget: early stopping decides


def test_inference_is_estimated_from_windows_passes_and_test_images(tmp_path):
    cost = StepCost(0.01, None, None, forward_seconds_per_sample=0.002)
    settings = settings_for({"task": "segmentation", "data_dir": str(tmp_path)})
    # 20 of 100 test images of 256^2, windows of 128^2 overlapping by a quarter: 3 x 3 (x 1.5 for the
    # blending); 1 + 20 MC passes
    segmentation = fingerprint(task="segmentation", side=256)
    assert inference_seconds(cost, segmentation, settings, [128, 128]) == pytest.approx(20 * 9 * 1.5 * 21 * 0.002)
    assert inference_seconds(cost, segmentation, {**settings, "uncertainty": False}, [128, 128]) == pytest.approx(
        20 * 9 * 1.5 * 0.002)
    given_test_set = fingerprint(task="segmentation", side=256, n_by_subset={"train": 95, "test": 5})
    assert inference_seconds(cost, given_test_set, settings, [128, 128]) == pytest.approx(5 * 9 * 1.5 * 21 * 0.002)
    # a classifier's MC samples reuse the backbone's features: one more pass
    classification = fingerprint(task="classification", side=64)
    assert inference_seconds(cost, classification, settings, [64, 64]) == pytest.approx(20 * 2 * 0.002)
    # a network that samples only its head: one pass, then the head's time per sample
    head_only = StepCost(0.01, None, None, forward_seconds_per_sample=0.002, head_seconds_per_sample=0.0005)
    assert inference_seconds(head_only, segmentation, settings, [128, 128]) == pytest.approx(
        20 * 9 * 1.5 * (0.002 + 0.002 + 20 * 0.0005))


def test_the_time_budget_is_shared_between_the_trainings_and_reaches_each(tmp_path):
    settings = settings_for({"task": "segmentation", "data_dir": str(tmp_path), "time_budget_minutes": 10,
                             "seeds": [0, 1], "models": ["unet_small", "segresnet"]})
    plan = make_plan(settings, fingerprint(task="segmentation", side=256), Resources("cpu", None, None, 2, 10.0),
                     library=None, measure=fake_measure)
    budget = plan["time_budget"]
    assert budget["runs"] == 4 and budget["inference_seconds_per_run"] == pytest.approx(11.34)  # as above
    # 600 s less 25 s for the dataset and 4 x (50 s fixed + 11.34 s inference), over 2 seeds x 2 models
    assert budget["seconds_per_run"] == pytest.approx((600 - 25 - 4 * (50 + 11.34)) / 4)
    # 64 training images x 4 patches x 0.01 s = 2.56 s an epoch: about 32 in 82 s; the bound is the maximum
    assert plan["settings"]["epochs"] == 100
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert apply_plan(settings, str(tmp_path / "plan.json"))["train_seconds"] == pytest.approx(budget["seconds_per_run"])
    # a budget shorter than the rest: training keeps a quarter of it, and the plan says the run will overrun
    short = make_plan({**settings, "time_budget_minutes": 1}, fingerprint(task="segmentation", side=256),
                      Resources("cpu", None, None, 2, 1.0), library=None, measure=fake_measure)
    assert short["time_budget"]["seconds_per_run"] == pytest.approx(60 * 0.25 / 4)
    assert "longer than the budget" in short["time_budget"]["reason"]

    unlimited = make_plan(settings_for({"task": "segmentation", "data_dir": str(tmp_path)}),
                          fingerprint(task="segmentation", side=256), CPU, library=None, measure=fake_measure)
    assert unlimited["time_budget"] is None


def test_a_runs_fixed_costs_count_only_the_jobs_it_runs():
    assert overhead_seconds_per_run({}) == 50.0  # train, predict, evaluate, uncertainty and export
    assert overhead_seconds_per_run({"uncertainty": False, "export": False}) == 25.0
    assert overhead_seconds_per_run({"uncertainty": True, "export": False}) == 37.0


def test_measure_step_times_a_real_training_step():
    cost = measure_step("unet_small", fingerprint(task="segmentation"), [32, 32], "cpu")
    assert 0 < cost.seconds_per_sample < 5
    assert 0 < cost.forward_seconds_per_sample < cost.seconds_per_sample  # no backward pass, no optimiser
    assert cost.bytes_per_sample is None  # memory is measured on a GPU only
    assert cost.head_seconds_per_sample is None  # MC dropout samples the whole U-Net
    head_only = measure_step("segresnet", fingerprint(task="segmentation"), [32, 32], "cpu")
    assert 0 < head_only.head_seconds_per_sample < head_only.forward_seconds_per_sample


def fake_measure(model, fp, shape, device):
    return StepCost(0.01, None, None, forward_seconds_per_sample=0.002)


def test_plan_keeps_what_the_user_set_and_plans_the_rest(tmp_path):
    settings = settings_for({"task": "segmentation", "data_dir": str(tmp_path), "epochs": 7})
    assert "epochs" not in settings["auto_keys"] and "models" in settings["auto_keys"]
    plan = make_plan(settings, fingerprint(task="segmentation", side=256), CPU, library=None, measure=fake_measure)
    assert plan["settings"]["epochs"] == 7 and plan["decisions"]["epochs"]["source"] == "user"
    assert plan["settings"]["models"] == ["unet_small"] and plan["decisions"]["models"]["source"] == "rules"
    assert plan["settings"]["patch_size"] == [128, 128]
    plan_json = tmp_path / "plan.json"
    plan_json.write_text(json.dumps(plan))
    applied = apply_plan(settings, str(plan_json))
    assert applied["epochs"] == 7 and applied["models"] == ["unet_small"] and applied["batch_size"] == 8
    # auto_configure: false plans nothing
    fixed = settings_for({"task": "segmentation", "data_dir": str(tmp_path), "auto_configure": False})
    assert fixed["auto_keys"] == []


def test_plan_takes_the_model_from_the_library_with_reasons(tmp_path):
    fps = {"a": fingerprint("a"), "b": fingerprint("b", n_images=5000)}
    library = _library({"a": {"resnet50": 0.9, "mobilenet_v2": 0.7}, "b": {"resnet50": 0.6, "mobilenet_v2": 0.8}}, fps)
    settings = settings_for({"task": "classification", "data_dir": str(tmp_path)})
    plan = make_plan(settings, fingerprint("new", n_images=90), CPU, library=library, measure=fake_measure)
    assert plan["settings"]["models"] == ["resnet50"]
    assert plan["decisions"]["models"]["source"] == "library"
    assert "a (distance" in plan["decisions"]["models"]["reason"]
    assert plan["library"]["neighbours"][0]["dataset"] == "a"


def test_brightness_spread_adds_intensity_augmentations(tmp_path):
    settings = settings_for({"task": "segmentation", "data_dir": str(tmp_path)})
    plan = make_plan(settings, fingerprint(task="segmentation", brightness_spread=0.3), CPU, measure=fake_measure)
    assert plan["settings"]["augmentations"] == ["flip", "rotate90", "brightness", "contrast"]


def test_a_pinned_plan_is_checked_and_wins(tmp_path):
    pinned = tmp_path / "my_plan.json"
    pinned.write_text("{}")
    settings = settings_for({"task": "segmentation", "data_dir": str(tmp_path), "plan": str(pinned), "batch_size": 4})
    plan = pin_plan(settings, {"settings": {"models": ["segresnet"], "batch_size": 2}}, fingerprint(task="segmentation"))
    assert plan["settings"]["models"] == ["segresnet"] and plan["decisions"]["batch_size"]["source"] == "pinned plan"
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert apply_plan(settings, str(tmp_path / "plan.json"))["batch_size"] == 2
    with pytest.raises(ConfigError, match="batch_size = 0 is not allowed"):
        pin_plan(settings, {"settings": {"batch_size": 0}}, fingerprint(task="segmentation"))
    with pytest.raises(ConfigError, match="cannot be planned"):
        pin_plan(settings, {"settings": {"seed": 3}}, fingerprint(task="segmentation"))


def test_denoising_gets_a_dataset_wide_normalisation_for_residual_learning():
    from snakescope.planner import plan_normalisation

    denoising = fingerprint(task="regression", channels=1, target_channels=1)
    assert plan_normalisation(denoising)[0] == "dataset_zscore"
    label_free = fingerprint(task="regression", channels=13, target_channels=1)
    assert plan_normalisation(label_free)[0] == "percentile"
    assert plan_normalisation(fingerprint(source_dtypes={"float32": 3}))[0] == "zscore"


def test_models_that_needed_more_gpu_memory_are_not_recommended():
    from snakescope.planner import too_large_for

    library = pd.DataFrame({"model": ["big", "big", "small"], "train_peak_gpu_mb": [20_000, None, 3_000]})
    assert too_large_for(library, GPU) == {"big"}  # 16 GB x 0.8 = 13,107 MB
    assert too_large_for(library, CPU) == set()


def test_recommend_reruns_only_for_what_the_plan_depends_on(tmp_path):
    from snakescope.config import stage_settings

    fixed = settings_for({"task": "segmentation", "data_dir": str(tmp_path), "models": ["unet"], "epochs": 5,
                          "batch_size": 4})
    keys = stage_settings(fixed, "recommend")
    # epochs, batch size and models were set: changing them (or adding a model) must not re-plan
    assert not {"models", "epochs", "batch_size", "seeds"} & set(keys)
    measured = settings_for({"task": "segmentation", "data_dir": str(tmp_path), "models": ["unet"]})
    # batch size and epochs are planned from a measured step of the user's model and patch
    assert {"models", "patch_size", "batch_size", "epochs"} <= set(stage_settings(measured, "recommend"))
