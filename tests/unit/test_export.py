"""Export (issue 13): a trained model of each task as a bioimage.io package that bioimage.io's own test
passes, with ONNX weights whose output equals PyTorch's within 1e-4."""

from __future__ import annotations

import zipfile

import pytest
import yaml
from small_runs import SMALL_RUNS

from snakescope.export import ONNX_TOLERANCE, export_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("task", ["segmentation", "classification", "regression"])
def test_exported_package_passes_bioimageio_test(task, small_run, tmp_path):
    root, _, prepared = small_run(task)
    model = SMALL_RUNS[task][1]
    record = export_model(str(root / "model.pt"), str(prepared / "arrays.zarr"), str(prepared / "splits.json"),
                          {"export_authors": ["A. Biologist"], "export_license": "CC-BY-4.0",
                           "export_cite": [{"text": "Our paper", "url": "https://example.org/paper"}]},
                          str(tmp_path / "export"), run_info={"dataset": "cells", "model": model, "seed": 0})
    assert record["exported"] and record["bioimageio_test"]["status"] == "passed", record
    assert record["onnx_max_abs_difference"] <= ONNX_TOLERANCE
    assert (tmp_path / "export" / "model.onnx").is_file()
    with zipfile.ZipFile(tmp_path / "export" / "package.zip") as package:
        rdf = yaml.safe_load(package.read("rdf.yaml"))
        assert {"weights_torchscript.pt", "model.onnx", "test_input.npy", "test_output.npy", "cover.png",
                "README.md"} <= set(package.namelist())
    assert rdf["format_version"].startswith("0.5") and set(rdf["weights"]) == {"torchscript", "onnx"}
    assert [a["name"] for a in rdf["authors"]] == ["A. Biologist"] and rdf["license"] == "CC-BY-4.0"
    assert rdf["cite"][1] == {"text": "Our paper", "url": "https://example.org/paper"}
    steps = {"segmentation": ("scale_range", "softmax"), "classification": ("scale_range", "softmax"),
             "regression": ("fixed_zero_mean_unit_variance", "scale_linear")}[task]
    pre = [step["id"] for step in rdf["inputs"][0]["preprocessing"]]
    post = [step["id"] for step in rdf["outputs"][0]["postprocessing"]]
    assert steps[0] in pre and steps[1] in post, (pre, post)
