"""The CPU mode of bench/train_throughput.py runs end to end (CI exercises the benchmark this way)."""

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
