"""Adding a model is one registry entry: a copy of the workflow whose only change is one more entry in
snakescope.engine.models.MODELS trains, predicts, evaluates and samples that network through snakemake,
with no schema, planner or stage edited, and exports it as a bioimage.io package."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import run_snakemake, workflow_copy, write_config

from snakescope.synthetic import write_demo_dataset

pytestmark = pytest.mark.slow

# A two-layer network for class maps, with the dropout MC sampling needs; (N, C, H, W) -> (N, K, H, W).
NEW_ENTRY = '''

def _tiny_cnn(spec):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(spec.in_channels, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(spec.dropout),
        nn.Conv2d(8, spec.out_channels, 1),
    )


MODELS["tiny_cnn"] = ModelEntry(_tiny_cnn, ("segmentation",), (2,), "two convolutions, a registry test")
'''


def test_a_registered_model_runs_through_the_workflow(tmp_path):
    snakefile = workflow_copy(tmp_path / "project")
    registry = snakefile.parent / "scripts" / "snakescope" / "engine" / "models.py"
    registry.write_text(registry.read_text() + NEW_ENTRY)

    data = write_demo_dataset(tmp_path / "cells", n_images=24, size=32, seed=0)
    config = {
        "task": "segmentation",
        "data_dir": str(data),
        "models": ["tiny_cnn"],
        "patch_size": [32, 32],
        "epochs": 15,
        "patience": 15,
        "batch_size": 4,
        "learning_rate": 0.01,
        "mc_samples": 4,
        "results_library": None,
        "device": "cpu",
    }
    config_path = write_config(tmp_path, config)
    run_snakemake(tmp_path, config_path, snakefile=snakefile)

    run = tmp_path / "results" / "cells" / "tiny_cnn" / "seed0"
    card = json.loads((run / "train/model_card.json").read_text())
    assert card["model"]["name"] == "tiny_cnn" and card["training"]["epochs_run"] == 15
    timing = json.loads((run / "predict/timing.json").read_text())
    assert timing["n_parameters"] == (3 * 8 * 9 + 8) + (8 * 3 + 3)  # RGB in, 3 classes out
    metrics = json.loads((run / "evaluate/metrics.json").read_text())
    assert metrics["model"] == "tiny_cnn" and metrics["n_test"] == len(
        json.loads((tmp_path / "results/cells/split/splits.json").read_text())["test"]
    )
    assert metrics["iou"] > metrics["baseline_iou"]  # a few epochs learn something on the demo cells
    uncertainty = pd.read_csv(run / "uncertainty/uncertainty.csv")
    assert len(uncertainty) == metrics["n_test"] and uncertainty["uncertainty"].between(0, 1).all()
    export = json.loads((run / "export/export.json").read_text())  # and it leaves as a bioimage.io package
    assert export["bioimageio_test"]["status"] == "passed" and export["onnx_max_abs_difference"] <= 1e-4
    run_snakemake(tmp_path, config_path, "--report", "results/report.html", snakefile=snakefile)
    report = (tmp_path / "results/report.html").read_text()
    assert 'href=\\"cells/tiny_cnn/seed0/export/package.zip\\"' in report  # relative to report.html
    leaderboard = pd.read_csv(tmp_path / "results/summary/leaderboard.tsv", sep="\t")
    assert list(leaderboard["model"]) == ["tiny_cnn"]
