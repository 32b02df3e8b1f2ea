"""The linters users and reviewers rely on: ruff, snakefmt and snakemake --lint, all clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "workflow" / "scripts")}
    return subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, env=env)


def test_ruff_check():
    result = _run(str(BIN / "ruff"), "check", "workflow/scripts", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt():
    result = _run(str(BIN / "snakefmt"), "--check", "workflow")
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint():
    result = _run(sys.executable, "-m", "snakemake", "--lint")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Lints for" not in output, output


def test_dry_run_shows_the_seven_rules():
    # The demo config leaves `models` to the planner, so a plain dry run stops at the `recommend`
    # checkpoint; with auto-configuration off, the whole DAG is known before anything runs.
    result = _run(sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--config", "auto_configure=False")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for rule in ("convert", "split", "recommend", "augment", "train", "predict", "evaluate", "uncertainty"):
        assert rule in output, f"rule {rule} missing from the dry run:\n{output}"
    planned = _run(sys.executable, "-m", "snakemake", "-n", "--quiet", "rules")
    assert planned.returncode == 0 and "recommend" in planned.stdout + planned.stderr
