"""Instance segmentation through the real workflow: Snakemake, all seven rules, CPM-15 H&E nuclei, both
methods (tests/workflow/configs/cpm15.yaml). One run, shared by the tests of this module.

What it asserts: U-Net + watershed and Mask R-CNN (ResNet-18 FPN, from scratch) each beat the trivial
baseline (connected components of an Otsu threshold) on AJI and on F1 at IoU 0.5, after a few CPU
epochs; both write valid instance images, the field's metrics and per-object uncertainty.

Cost, measured on the 2-core development machine: about 7 minutes of wall time, most of it the
detector's 40 training steps (4 epochs; with 8 the best checkpoint was the 4th epoch's, so the result is
the same). Reached there: U-Net AJI 0.33 and F1@0.5 0.33, Mask R-CNN AJI 0.23 and F1@0.5 0.24,
against the baseline's 0.002 and 0.008. These are CI budgets, not a comparison of the methods: see
bench/instances for that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from snakescope.store import open_store
from snakescope.tasks.instance_segmentation import detector

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "workflow" / "configs" / "cpm15.yaml"
RUNS = {"unet": ("cpm15", "unet"), "maskrcnn": ("cpm15_maskrcnn", "maskrcnn_resnet18")}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(shared_data, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cpm15_workflow")
    config = yaml.safe_load(CONFIG.read_text())
    for entry in config["datasets"].values():
        entry["data_dir"] = str(shared_data / "cpm15_he_nuclei")
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "workflow" / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(work / "config.yaml"),
        "--replace-workflow-config",
        "--cores",
        "2",
        "--show-failed-logs",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    assert done.returncode == 0, f"snakemake failed:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
    return work / "results"


def run_dir(results: Path, method: str) -> Path:
    dataset, model = RUNS[method]
    return results / dataset / model / "seed0"


def metrics(results: Path, method: str) -> dict:
    return json.loads((run_dir(results, method) / "evaluate" / "metrics.json").read_text())


def test_convert_keeps_instances_and_fingerprints_objects(results):
    fingerprint = json.loads((results / "cpm15" / "convert" / "fingerprint.json").read_text())
    assert fingerprint["n_objects"] == 2337
    assert fingerprint["objects_per_image"] == {"median": 253.0, "min": 97, "max": 351}
    assert 100 < fingerprint["median_object_area"] < 300
    assert not fingerprint["instances_derived_from_binary"]
    with open_store(results / "cpm15" / "convert" / "arrays.zarr") as arrays:
        target = arrays["target/image01"]
    assert len(np.unique(target)) - 1 == 351  # instance ids, not class indices


@pytest.mark.parametrize("method", sorted(RUNS))
def test_predictions_are_valid_instance_images(results, method):
    import tifffile

    predict = run_dir(results, method) / "predict"
    table = pd.read_csv(predict / "predictions.csv", dtype={"id": str})
    split = json.loads((results / RUNS[method][0] / "split" / "splits.json").read_text())
    assert sorted(table["id"]) == sorted(split["test"]) and len(table) == 2
    with open_store(results / RUNS[method][0] / "convert" / "arrays.zarr") as arrays:
        shapes = {i: arrays[f"target/{i}"].shape for i in table["id"]}
    for _, row in table.iterrows():
        labels = tifffile.imread(predict / row["instances"])
        assert labels.dtype in (np.uint16, np.uint32)
        assert labels.shape == shapes[row["id"]]
        ids = np.unique(labels)
        assert ids[0] == 0 or ids.size == 0
        assert int(labels.max()) == row["n_objects"] == ids.size - 1  # ids 1..n, each used
    timing = json.loads((predict / "timing.json").read_text())
    assert timing["seconds_per_image_batch1"] > 0


@pytest.mark.parametrize("method", sorted(RUNS))
def test_each_method_beats_the_otsu_baseline(results, method):
    m = metrics(results, method)
    assert m["aji"] > m["baseline_aji"] + 0.05, m
    assert m["f1_50"] > m["baseline_f1_50"] + 0.05, m


def test_maskrcnn_is_scored_like_the_unet(results):
    m, u = metrics(results, "maskrcnn"), metrics(results, "unet")
    assert set(u) - {"dataset", "model"} <= set(m)
    for key in ("aji", "f1_50", "ap_50", "ap_50_95", "pq", "baseline_aji"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["baseline_aji"] == pytest.approx(u["baseline_aji"])  # same split, same baseline
    threshold = pd.read_csv(run_dir(results, "maskrcnn") / "predict" / "predictions.csv")["threshold"]
    assert set(threshold) <= set(detector.SCORE_THRESHOLDS)  # the score threshold tuned on validation


@pytest.mark.parametrize("method", sorted(RUNS))
def test_uncertainty_has_one_row_per_predicted_object(results, method):
    folder = run_dir(results, method) / "uncertainty"
    table = pd.read_csv(folder / "uncertainty.csv", dtype={"id": str})
    summary = json.loads((folder / "summary.json").read_text())
    predictions = pd.read_csv(run_dir(results, method) / "predict" / "predictions.csv")
    assert len(table) == predictions["n_objects"].sum() == summary["n_objects"]
    assert set(table["method"]) <= {"mc_dropout" if method == "unet" else "detector_score"}
    if method == "unet":
        assert table["uncertainty"].between(0, 1).all()
        assert summary["unit"] == "objects" and summary["mc_samples"] == 2
        assert (folder / "uncertainty_vs_error.png").is_file()


def test_figures_and_summary(results):
    figures = run_dir(results, "unet") / "evaluate" / "figures"
    assert {"overlay.png", "ap_vs_iou.png", "per_image_boxplot.png"} <= {p.name for p in figures.iterdir()}
    assert (results / "summary" / "leaderboard.tsv").is_file()
