"""The CPU mode of bench/train_throughput.py runs end to end (CI exercises the benchmark this way)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_throughput.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_throughput_cpu_smoke(tmp_path):
    out = tmp_path / "throughput.json"
    result = _load_bench().main(["--cpu-smoke", "--json", str(out)])
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
