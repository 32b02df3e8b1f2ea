"""How long `snakemake -n` takes on a 3 datasets x 6 models x 3 seeds benchmark matrix (issue 5: < 10 s).

Writes the synthetic demo cells (120 images, 64x64) into a temporary folder, a config with three
datasets on them (two classifications, one segmentation), six models each and seeds 0-2, i.e. 54 runs
and about 230 jobs, and times a dry run from a fresh working directory (nothing built yet: the whole
DAG is planned), a few times. `snakemake --version` is timed too: the start-up cost of Python and
Snakemake that every call pays.

    .venv/bin/python bench/dryrun_speed.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))

N_MODELS = 6
SEEDS = [0, 1, 2]


def matrix_config(data_dir: Path) -> dict:
    from snakescope.engine.models import models_for

    classifiers = models_for("classification")[:N_MODELS]
    dense = models_for("segmentation", spatial_dims=2)[:N_MODELS]
    common = {"data_dir": str(data_dir), "seeds": SEEDS}
    return {
        "datasets": {
            "cells_class64": {**common, "task": "classification", "resize": [64, 64], "models": classifiers},
            "cells_class32": {**common, "task": "classification", "resize": [32, 32], "models": classifiers},
            "cells_segmentation": {**common, "task": "segmentation", "patch_size": [64, 64], "models": dense},
        },
        "epochs": 1,
    }


def time_command(command: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
    started = time.perf_counter()
    process = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}")
    return seconds, process.stdout + process.stderr


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="dry runs to time (default 3)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    from snakescope.synthetic import write_demo_dataset

    with tempfile.TemporaryDirectory(prefix="snakescope-dryrun-") as tmp:
        tmp = Path(tmp)
        data_dir = write_demo_dataset(tmp / "cells", n_images=120, size=64)
        config = matrix_config(data_dir)
        config_path = tmp / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        snakemake = [sys.executable, "-m", "snakemake"]
        startup, _ = time_command([*snakemake, "--version"], ROOT)
        command = [
            *snakemake,
            "--snakefile",
            str(ROOT / "workflow" / "Snakefile"),
            "--directory",
            str(tmp / "work"),
            "--configfile",
            str(config_path),
            "--replace-workflow-config",
            "--cores",
            "2",
            "-n",
        ]
        times, output = [], ""
        for _ in range(args.repeats):
            seconds, output = time_command(command, ROOT)
            times.append(seconds)
        match = re.search(r"^total\s+(\d+)", output, flags=re.MULTILINE)
        n_jobs = int(match.group(1)) if match else None

    n_runs = sum(len(d["models"]) * len(d["seeds"]) for d in config["datasets"].values())
    result = {
        "datasets": len(config["datasets"]),
        "models_per_dataset": N_MODELS,
        "seeds": len(SEEDS),
        "runs": n_runs,
        "jobs": n_jobs,
        "dry_run_seconds": times,
        "dry_run_median_seconds": statistics.median(times),
        "snakemake_version_seconds": startup,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(
        f"snakemake -n, {result['datasets']} datasets x {N_MODELS} models x {len(SEEDS)} seeds = {n_runs} runs, "
        f"{n_jobs} jobs: median {result['dry_run_median_seconds']:.2f} s over {len(times)} runs "
        f"({', '.join(f'{t:.2f}' for t in times)} s); `snakemake --version` alone {startup:.2f} s; "
        f"{os.cpu_count()} CPUs, 1-min load average {result['load_average_1min']:.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
