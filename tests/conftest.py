"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public datasets in ../shared/data (see its README).

    Skipped where the folder is absent, except on CI (CI=true), where a missing folder must fail loudly
    rather than silently skip the real-data tests.
    """
    if not SHARED_DATA.is_dir():
        message = f"shared data folder {SHARED_DATA} not found"
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"{message}; CI=true requires it (mount or copy ../shared/data beside the repository)"
            )
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """small_run(task) -> (folder with model.pt, the data folder, its prepared/ arrays.zarr, samples.tsv and
    splits.json): a small model of `task` (tests/unit/small_runs.py), trained once per session."""
    from small_runs import SMALL_RUNS, regression_data, train_small  # torch: only when a test asks

    from snakescope.synthetic import write_demo_dataset

    runs = {}

    def get(task: str):
        if task not in runs:
            config, model, data = SMALL_RUNS[task]
            root = tmp_path_factory.mktemp(task)
            folder = (write_demo_dataset(root / "cells", n_images=16, size=32, seed=0) if data == "demo"
                      else regression_data(root / "denoise"))
            _, prepared = train_small(root, {**config, "data_dir": str(folder)}, model)
            runs[task] = (root, folder, prepared)
        return runs[task]

    return get
