"""The CPU modes of the benchmarks in bench/ run end to end (CI exercises them this way)."""

from __future__ import annotations

import json
import math

from benches import load_bench


def test_train_throughput_cpu_smoke(tmp_path):
    out = tmp_path / "throughput.json"
    result = load_bench("train_throughput").main(["--cpu-smoke", "--json", str(out)])
    rows = {(row["case"].split()[0], row["variant"]): row for row in result["rows"]}
    assert set(rows) == {
        ("unet", "bare"),
        ("unet", "snakescope"),
        ("resnet50", "bare"),
        ("resnet50", "snakescope"),
    }
    for row in rows.values():
        assert row["images_per_s"] > 0 and math.isfinite(row["ratio"])
    assert rows[("unet", "snakescope")]["data_mode"] == "tensor"  # flips and quarter turns batched
    assert json.loads(out.read_text())["environment"]["device"] == "cpu"


def test_budget_estimates_compare_the_planners_inference_estimate_with_measured_passes():
    result = load_bench("budget_estimates").main(["--models", "unet_small", "--side", "96", "--patch", "64",
                                                 "--mc-samples", "2", "--repeats", "1", "--threads", "1"])
    (row,) = result["rows"]
    assert row["windows"] == 4  # per axis a 64 window at 0 and one flush with the end of 96 (step 48)
    # the planner's estimate is windows x (1 + samples) passes x forward x SLIDING_WINDOW_COST
    assert math.isclose(row["estimate_s"], 4 * 3 * row["forward_s"] * result["sliding_window_cost"])
    assert math.isclose(row["predict_factor"], row["predict_s"] / (4 * row["forward_s"]))
    assert math.isclose(row["measured_per_estimate"], (row["predict_s"] + row["mc_s"]) / row["estimate_s"])
