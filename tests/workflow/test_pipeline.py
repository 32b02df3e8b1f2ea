"""The whole pipeline, end to end, through snakemake, on real images and on the built-in demo."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import read_metrics, run_snakemake, wbc_dataset, write_config

from snakescope.synthetic import write_demo_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, shared_data):
    """WBC classification (Zheng 2018, Dataset 1) and ISBI 2012 membranes, a few CPU epochs each."""
    workdir = tmp_path_factory.mktemp("real")
    config = {
        "datasets": {
            # 6 epochs: with 8, the best validation loss came at the 6th (CI, 2026-12-03), the same model
            "wbc": wbc_dataset(shared_data, resize=[64, 64], epochs=6, models=["resnet50"]),
            "isbi": {
                "task": "segmentation",
                "data_dir": str(shared_data / "isbi2012_em_membranes"),
                "layout": {"images": "train/image/*.png", "masks": "train/label/*.png"},
                "models": ["unet"],
                "patch_size": [128, 128],
                "batch_size": 8,
                "epochs": 6,
                "max_batches_per_epoch": 12,
            },
        },
        "seed": 0,
        "patience": 4,
        "learning_rate": 0.001,
        "augmentations": ["flip", "rotate90"],
        "mc_samples": 10,
        "export": False,  # exported (and tested) on the demo job below
    }
    config_path = write_config(workdir, config)
    run_snakemake(workdir, config_path)
    return workdir


def test_classification_beats_majority_class(real_run):
    metrics = read_metrics(real_run, "wbc", "resnet50")
    assert metrics["n_test"] >= 50
    assert metrics["accuracy"] > metrics["baseline_accuracy"] + 0.05
    assert metrics["balanced_accuracy"] > metrics["baseline_balanced_accuracy"] + 0.2
    assert metrics["auc_ovr_macro"] > 0.75


def test_segmentation_beats_all_background(real_run):
    metrics = read_metrics(real_run, "isbi", "unet")
    assert metrics["iou"] > metrics["baseline_iou"] + 0.15
    assert metrics["pixel_accuracy"] > metrics["baseline_pixel_accuracy"]
    assert metrics["dice"] > metrics["baseline_dice"]


def test_every_stage_left_its_outputs(real_run):
    run = real_run / "results/isbi/unet/seed0"
    assert (real_run / "results/isbi/convert/fingerprint.json").is_file()
    split = json.loads((real_run / "results/isbi/split/splits.json").read_text())
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 30
    assert (real_run / "results/isbi/augment/preview.png").stat().st_size > 10_000
    history = pd.read_csv(run / "train/history.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(1, len(history) + 1))
    predictions = pd.read_csv(run / "predict/predictions.csv")
    assert len(predictions) == len(split["test"])
    for name in predictions["mask"]:
        assert (run / "predict" / name).is_file()
    uncertainty = json.loads((run / "uncertainty/summary.json").read_text())
    assert uncertainty["mc_samples"] == 10
    assert 0 <= uncertainty["mean_uncertainty"] <= 1
    summary = pd.read_csv(real_run / "results/summary/leaderboard.tsv", sep="\t")
    assert set(summary["dataset"]) == {"wbc", "isbi"}


def test_uncertainty_tracks_error_on_classification(real_run):
    run = real_run / "results/wbc/resnet50/seed0/uncertainty"
    table = pd.read_csv(run / "uncertainty.csv")
    assert table["uncertainty"].between(0, 1).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["accuracy_most_certain_20pct"] >= summary["accuracy_rest"]


def test_report_builds(real_run):
    config_path = real_run / "config.yaml"
    run_snakemake(real_run, config_path, "--report", str(real_run / "report.html"))
    html = (real_run / "report.html").read_text(errors="ignore")
    assert "confusion_matrix" in html and "preview" in html


def test_rerun_does_nothing(real_run):
    process = run_snakemake(real_run, real_run / "config.yaml", "-n")
    assert "Nothing to be done" in process.stdout + process.stderr


def class_folders(data, out):
    """The demo cells sorted into one folder per class (torchvision's ImageFolder layout)."""
    labels = pd.read_csv(data / "groundtruth/groundtruth.csv")
    for filename, label in zip(labels["filename"], labels["label"], strict=True):
        (out / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "image" / filename, out / label / filename)
    return out


def test_demo_default_job(tmp_path):
    """The job `make run` runs, on the project's own generated cells, shortened to two epochs, and beside it
    a class-per-folder dataset given by `task` and `data_dir` alone; then `snakemake apply` on new images."""
    data = write_demo_dataset(tmp_path / "cells", n_images=48, size=64, seed=0)
    by_class = class_folders(write_demo_dataset(tmp_path / "small", n_images=16, size=32, seed=1),
                             tmp_path / "cells_by_class")
    config = {
        "datasets": {
            "demo_classification": {"task": "classification", "data_dir": str(data), "resize": [64, 64]},
            "demo_segmentation": {"task": "segmentation", "data_dir": str(data), "patch_size": [64, 64]},
            "by_class": {"task": "classification", "data_dir": str(by_class)},  # the layout is recognised
        },
        "epochs": 2,
        "mc_samples": 4,
    }
    config_path = write_config(tmp_path, config)
    run_snakemake(tmp_path, config_path)
    models = {}
    for name in config["datasets"]:  # the demo leaves the models to the planner
        models[name] = json.loads((tmp_path / f"results/{name}/recommend/plan.json").read_text())["settings"]["models"][0]
        assert read_metrics(tmp_path, name, models[name])["n_test"] > 0
        # every trained model leaves as a bioimage.io package that bioimage.io's test passed, with ONNX weights
        export = json.loads((tmp_path / f"results/{name}/{models[name]}/seed0/export/export.json").read_text())
        assert export["bioimageio_test"]["status"] == "passed" and export["onnx_max_abs_difference"] <= 1e-4
        # and its calibration: ECE before and after temperature scaling, a reliability diagram for the report
        run = tmp_path / f"results/{name}/{models[name]}/seed0/uncertainty"
        calibration = json.loads((run / "summary.json").read_text())
        assert calibration["calibration_unit"] == ("pixels" if name == "demo_segmentation" else "images")
        assert 0 <= calibration["ece_temperature_scaled"] <= 1 and (run / "reliability.png").is_file()
        # the test images ranked for annotation, with their thumbnails for the report
        ranking = pd.read_csv(run / "annotate_next.tsv", sep="\t")
        assert len(ranking) == calibration["n_images"] and ranking["uncertainty"].is_monotonic_decreasing
        assert (run / "annotate_next.png").is_file()
    fingerprint = json.loads((tmp_path / "results/by_class/convert/fingerprint.json").read_text())
    assert fingerprint["classes"] == sorted(p.name for p in by_class.iterdir())  # named after the folders
    package = tmp_path / f"results/demo_segmentation/{models['demo_segmentation']}/seed0/export/package.zip"
    test = subprocess.run([str(Path(sys.executable).parent / "bioimageio"), "test", str(package)],
                          capture_output=True, text=True)
    assert test.returncode == 0 and re.search(r"status\s+passed", test.stdout), test.stdout[-3000:]

    # `snakemake apply`, as the README shows it: the config's apply entries, on a folder of new images
    new = tmp_path / "new_images"
    new.mkdir()
    for path in sorted((data / "image").glob("*.tif"))[:5]:
        shutil.copy(path, new / path.name)
    applications = {
        "new_cells": {"model": f"demo_segmentation/{models['demo_segmentation']}/seed0", "images": str(new)},
        "new_cells_package": {"model": f"by_class/{models['by_class']}/seed0/export/package.zip",
                              "images": str(new)},
    }
    process = run_snakemake(tmp_path, write_config(tmp_path, {**config, "apply": applications}), "apply")
    assert re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", process.stderr).count("apply_model") == 2
    assert set(re.findall(r"Rule: (\w+)\)", process.stderr)) == {"apply_model", "apply"}  # nothing retrained
    for name in applications:
        ranking = pd.read_csv(tmp_path / f"results/apply/{name}/ranking.tsv", sep="\t")
        assert sorted(ranking["filename"]) == sorted(p.name for p in new.iterdir())
        assert ranking["uncertainty"].is_monotonic_decreasing and (tmp_path / f"results/apply/{name}/ranking.png").is_file()
    masks = pd.read_csv(tmp_path / "results/apply/new_cells/predictions/predictions.csv")["mask"]
    assert all((tmp_path / "results/apply/new_cells/predictions" / m).is_file() for m in masks)
