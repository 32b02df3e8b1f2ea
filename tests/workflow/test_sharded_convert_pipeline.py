"""A dataset larger than convert_shard_size converts in convert_shard jobs gathered by convert, and each
shard is cached on its own: a changed image re-reads its shard only (snakescope.convert.shards; that
the gathered outputs equal one job's is tests/unit/test_convert_shards.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tifffile
from helpers import PROJECT, run_snakemake, write_config

from snakescope.synthetic import write_demo_dataset

PROFILE = str(PROJECT / "profiles" / "local")
pytestmark = pytest.mark.slow

FINGERPRINT = "results/cells/convert/fingerprint.json"


def jobs(output: str) -> dict[str, int]:
    """rule -> job count from the `Job stats` table of a (dry-)run's output."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def run(workdir: Path, data: Path, *extra: str) -> str:
    config = {"datasets": {"cells": {"task": "segmentation", "data_dir": str(data), "convert_shard_size": 5}}}
    process = run_snakemake(workdir, write_config(workdir, config), "--profile", PROFILE, FINGERPRINT, *extra)
    return process.stdout + process.stderr


def test_shards_convert_in_parallel_jobs_and_are_cached_one_by_one(tmp_path, monkeypatch):
    data = write_demo_dataset(tmp_path / "cells", n_images=12, size=32)  # shards of 5, 5 and 2 images
    monkeypatch.setenv("SNAKEMAKE_OUTPUT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()

    first = run(tmp_path / "a", data)

    assert jobs(first) == {"convert": 1, "convert_shard": 3}
    gathered = (tmp_path / "a" / "results/cells/convert/samples.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in gathered[1:]] == [f"cell_{i:03d}" for i in range(12)]

    # one image of the second shard changes: a fresh run takes the other two shards from the cache
    image = data / "image" / "cell_006.tif"
    tifffile.imwrite(image, 255 - tifffile.imread(image))
    second = run(tmp_path / "b", data, "--dry-run")

    cache_use = dict(re.findall(
        r"Output file results/cells/convert/shards/(\d+) will be (obtained from|written to) global", second
    ))
    assert cache_use == {"0": "obtained from", "1": "written to", "2": "obtained from"}
