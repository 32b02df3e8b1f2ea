"""convert and split are Snakemake between-workflow cache candidates (`cache: True`).

With $SNAKEMAKE_OUTPUT_CACHE set, `--profile profiles/local` (and profiles/slurm) turn on `--cache`: a
second run in a fresh working directory over the same data takes convert's and split's outputs from
the cache instead of running them, and a config change recomputes only what it touches. Local only
(no SLURM), on a small real dataset (WBC, Zheng 2018, Dataset 2).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import PROJECT, run_snakemake, wbc_dataset, workflow_copy, write_config

pytestmark = pytest.mark.slow

PROFILE = str(PROJECT / "profiles" / "local")
SPLIT = "results/wbc/split/splits.json"
CONVERT_OUTPUTS = ["arrays.zarr", "samples.tsv", "fingerprint.json"]


def wbc_config(shared_data: Path, **changes) -> dict:
    settings = {"resize": [32, 32], "models": ["mobilenet_v2"], "batch_size": 8, "epochs": 1,
                "max_batches_per_epoch": 2}
    dataset = wbc_dataset(shared_data, part=2, **{**settings, **changes})
    return {"datasets": {"wbc": dataset}, "seed": 0, "augmentations": ["flip"]}


def run(workdir: Path, config: dict, *extra: str) -> str:
    process = run_snakemake(workdir, write_config(workdir, config), "--profile", PROFILE, *extra)
    return process.stdout + process.stderr


def planned(output: str) -> dict[str, int]:
    """rule -> job count from the `Job stats` table of a (dry-)run's output."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def cache_use(output: str) -> dict[str, str]:
    """Cached output file -> 'obtained from' / 'written to', as a dry-run announces it."""
    pattern = (
        r"Output file results/wbc/(\w+)/\S+ will be (obtained from|written to) global between-workflow cache"
    )
    return {rule: verb for rule, verb in re.findall(pattern, output)}


@pytest.fixture(scope="module")
def cached_runs(shared_data, tmp_path_factory):
    """Run A converts and splits into an empty cache; run B, in a fresh directory, trains on top."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SNAKEMAKE_OUTPUT_CACHE", str(root / "cache"))
        (root / "cache").mkdir()
        config = wbc_config(shared_data)
        first = run(root / "a", config, SPLIT)
        second = run(root / "b", config, "train_only")
        yield {"root": root, "config": config, "first": first, "second": second, "shared_data": shared_data}


def test_first_run_fills_the_cache(cached_runs):
    a = cached_runs["root"] / "a"
    assert planned(cached_runs["first"]) == {"convert": 1, "split": 1}
    assert "Moving output file results/wbc/convert/arrays.zarr to cache" in cached_runs["first"]
    assert (a / "logs/wbc/convert.log").is_file()
    cache = cached_runs["root"] / "cache"
    for name in [*CONVERT_OUTPUTS, "splits.json"]:
        output = next(a.glob(f"results/wbc/*/{name}"))
        assert output.is_symlink() and Path(os.readlink(output)).parent == cache


def test_second_run_takes_convert_and_split_from_the_cache(cached_runs):
    a, b = cached_runs["root"] / "a", cached_runs["root"] / "b"
    output = cached_runs["second"]
    # recommend is not cached: it measures the hardware of the machine the workflow runs on
    planned_jobs = {"convert": 1, "split": 1, "recommend": 1, "augment": 1, "train": 1, "train_only": 1}
    assert planned(output) == planned_jobs
    for name in CONVERT_OUTPUTS:
        # a cached folder (the store) comes back as a new folder of links to the cached folder's entries
        entry = f"{name}/zarr.json" if name == "arrays.zarr" else name
        assert f"Symlinking output file results/wbc/convert/{entry} from cache" in output
        assert (b / f"results/wbc/convert/{entry}").resolve() == (a / f"results/wbc/convert/{entry}").resolve()
    assert f"Symlinking output file {SPLIT} from cache" in output
    # neither ran: their logs stayed empty (Snakemake only creates them), nothing new went into the cache
    for rule in ("convert", "split"):
        log = b / f"logs/wbc/{rule}.log"
        assert not log.exists() or log.read_text() == "", log.read_text()
    assert "Moving output file results/wbc/convert" not in output
    assert (b / "results/wbc/mobilenet_v2/seed0/train/model.pt").is_file()


def test_config_change_recomputes_only_what_it_touches(cached_runs):
    root, shared_data = cached_runs["root"], cached_runs["shared_data"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SNAKEMAKE_OUTPUT_CACHE", str(root / "cache"))
        # same directory, more epochs: only train re-runs
        more_epochs = run(root / "b", wbc_config(shared_data, epochs=2), "train_only", "-n")
        assert planned(more_epochs) == {"train": 1, "train_only": 1}
        # a fresh directory, more epochs: convert and split still come from the cache
        fresh = run(root / "c", wbc_config(shared_data, epochs=2), "train_only", "-n")
        assert cache_use(fresh) == {"convert": "obtained from", "split": "obtained from"}
        # another split: convert from the cache, split computed (and cached)
        other_split = run(root / "d", wbc_config(shared_data, val_fraction=0.25), "train_only", "-n")
        assert cache_use(other_split) == {"convert": "obtained from", "split": "written to"}
        # another image size: both recomputed, as convert's settings are part of the cache key
        other_size = run(root / "e", wbc_config(shared_data, resize=[48, 48]), "train_only", "-n")
        assert cache_use(other_size) == {"convert": "written to", "split": "written to"}


def test_code_change_in_an_imported_module_is_not_served_from_the_cache(cached_runs):
    """The cache key covers every module convert imports, also one reached only through the task
    registry and inside functions (instance label images); an unchanged copy still hits the cache."""
    root, config = cached_runs["root"], cached_runs["config"]
    same = workflow_copy(root / "same_code")
    changed = workflow_copy(root / "changed_code")
    module = changed.parent / "scripts/snakescope/tasks/instance_segmentation/labels.py"
    module.write_text(module.read_text() + "\n# a change that convert's outputs may depend on\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SNAKEMAKE_OUTPUT_CACHE", str(root / "cache"))
        runs = {}
        for name, snakefile in (("same", same), ("changed", changed)):
            workdir = root / f"code_{name}"
            process = run_snakemake(workdir, write_config(workdir, config), "--profile", PROFILE, SPLIT, "-n",
                                    snakefile=snakefile)
            runs[name] = cache_use(process.stdout + process.stderr)
    assert runs["same"] == {"convert": "obtained from", "split": "obtained from"}
    assert runs["changed"] == {"convert": "written to", "split": "written to"}
