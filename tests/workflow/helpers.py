"""Run the real workflow from tests: one snakemake process per call, in its own working directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[2]
SNAKEFILE = PROJECT / "workflow" / "Snakefile"


def write_config(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_snakemake(
    workdir: Path, config_path: Path, *extra: str, check: bool = True, snakefile: Path = SNAKEFILE
) -> subprocess.CompletedProcess:
    """Run snakemake on `config_path` with results under `workdir`; returns the finished process.

    `snakefile`: another copy of the workflow to run (its package is the one imported).
    """
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(snakefile),
        "--directory", str(workdir),
        "--configfile", str(config_path),
        "--cores", "2",
        "--show-failed-logs",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(snakefile).parent / "scripts")}
    process = subprocess.run(command, capture_output=True, text=True, env=env)
    if check and process.returncode != 0:
        raise AssertionError(f"snakemake failed ({process.returncode}):\n{process.stdout[-6000:]}\n{process.stderr[-6000:]}")
    return process


def workflow_copy(directory: Path) -> Path:
    """A copy of the workflow (and of the envs its rules name) under `directory`; returns its Snakefile."""
    shutil.copytree(PROJECT / "workflow", directory / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT / "envs", directory / "envs")
    return directory / "workflow" / "Snakefile"


def read_metrics(workdir: Path, dataset: str, model: str, seed: int = 0) -> dict:
    return json.loads((workdir / f"results/{dataset}/{model}/seed{seed}/evaluate/metrics.json").read_text())


def wbc_dataset(shared_data: Path, part: int = 1, **settings) -> dict:
    """The WBC classification set (Zheng et al. 2018) as its authors published it: Dataset_1 (300 images)
    or Dataset_2 (100), labels in their own CSV, `settings` added to (or overriding) the entry."""
    return {
        "task": "classification",
        "data_dir": str(shared_data / "wbc_zheng2018"),
        "layout": {
            "images": f"Dataset_{part}/*.bmp",
            "labels_csv": f"Class_Labels_of_Dataset_{part}.csv",
            "filename_column": "image ID",
            "label_column": "class label" if part == 1 else "class",
            "filename_format": "{:03d}",
        },
        **settings,
    }
