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
