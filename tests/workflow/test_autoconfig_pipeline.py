"""Auto-configuration through the workflow (issue 6): a config of only `task` and `data_dir` runs the plan
derived from the data, with the model recommended from the results library shipped with snakescope, and
adds its own result to the working directory's library; without a library the rules plan alone.

Data: 48 generated demo cells (snakescope.synthetic), 64x64, three-class segmentation; about 2 minutes.
"""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest
from helpers import run_snakemake, write_config

from snakescope.library import SHIPPED_LIBRARY
from snakescope.synthetic import write_demo_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("auto")
    data = write_demo_dataset(workdir / "cells", n_images=48, size=64, seed=0)
    run_snakemake(workdir, write_config(workdir, {"task": "segmentation", "data_dir": str(data)}),
                  "--replace-workflow-config")
    return workdir


def test_only_task_and_data_dir_runs_the_recommended_plan(auto_run):
    plan = json.loads((auto_run / "results/cells/recommend/plan.json").read_text())
    decisions = plan["decisions"]
    assert all(decisions[key]["source"] != "user" for key in decisions)
    # the shipped library holds segmentation results: the model comes from it, with its reasons
    assert decisions["models"]["source"] == "library"
    shipped = pd.read_csv(SHIPPED_LIBRARY, sep="\t")
    neighbours = [n["dataset"] for n in plan["library"]["neighbours"]]
    assert neighbours and set(neighbours) <= set(shipped["dataset"])
    assert all(name in decisions["models"]["reason"] for name in neighbours)
    # the rules sized the rest from the data: 64x64 images -> 64x64 patches; a measured step on the CPU
    assert plan["settings"]["patch_size"] == [64, 64]
    assert plan["measured"]["seconds_per_sample"] > 0
    model = plan["settings"]["models"][0]
    card = json.loads((auto_run / f"results/cells/{model}/seed0/train/model_card.json").read_text())
    used = card["training"]["settings"]
    for key in ("batch_size", "epochs", "patch_size", "augmentations", "normalisation"):
        assert used[key] == plan["settings"][key], key
    metrics = json.loads((auto_run / f"results/cells/{model}/seed0/evaluate/metrics.json").read_text())
    assert metrics["iou"] > metrics["baseline_iou"]
    # the report table lists every planned setting with its source
    table = pd.read_csv(auto_run / "results/cells/recommend/plan.tsv", sep="\t")
    assert set(table["setting"]) == set(decisions) and set(table["source"]) <= {"rules", "library"}


def test_the_run_was_added_to_the_local_library(auto_run):
    with sqlite3.connect(auto_run / "resources/results_library.sqlite") as connection:
        stored = pd.read_sql("SELECT * FROM runs", connection)
    assert stored["dataset"].tolist() == ["cells"]
    assert stored.loc[0, "metric"] == "iou" and 0 < stored.loc[0, "score"] <= 1
    assert stored.loc[0, "log_object_area"] > 0  # features of the fingerprint travel with the row


def test_without_a_library_the_rules_plan_within_the_time_budget(auto_run, tmp_path):
    config = {"task": "segmentation", "data_dir": str(auto_run / "cells"), "results_library": None,
              "time_budget_minutes": 1}
    run_snakemake(tmp_path, write_config(tmp_path, config), "--replace-workflow-config", "recommend_only")
    plan = json.loads((tmp_path / "results/cells/recommend/plan.json").read_text())
    assert plan["decisions"]["models"]["source"] == "rules"
    assert plan["settings"]["models"] == ["unet_small"]  # CPU
    # a minute is less than conversion, planning, prediction and start-ups take on their own: training
    # keeps its floor, a quarter of the budget, the epochs are a bound it reaches first, and the plan says
    # the run will overrun
    budget = plan["time_budget"]
    assert budget["minutes"] == 1 and budget["seconds_per_run"] == 15.0 and budget["rest_seconds"] > 75
    assert "longer than the budget" in budget["reason"]
    assert "in the 15 s of training the budget leaves each run" in plan["decisions"]["epochs"]["reason"]
    assert not (tmp_path / "results/cells/unet_small").exists()  # recommend_only trains nothing


def test_a_dataset_that_cannot_be_planned_does_not_hold_back_the_others(auto_run, tmp_path):
    broken = tmp_path / "broken"
    for folder in ("image", "groundtruth"):
        (broken / folder).mkdir(parents=True)
        (broken / folder / "a.tif").write_bytes(b"not a tiff")
    config = {
        "datasets": {
            "good": {"task": "segmentation", "data_dir": str(auto_run / "cells"), "patch_size": [64, 64]},
            "broken": {"task": "segmentation", "data_dir": str(broken), "patch_size": [32, 32]},
        },
        "epochs": 1,
        "uncertainty": False,
        "export": False,
        "results_library": None,
    }
    process = run_snakemake(tmp_path, write_config(tmp_path, config), "--replace-workflow-config",
                            "--keep-going", check=False)
    assert process.returncode != 0 and "broken" in process.stdout + process.stderr
    assert (tmp_path / "results/good/unet_small/seed0/evaluate/metrics.json").is_file()
