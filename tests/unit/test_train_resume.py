"""Training resumes from its last checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from snakescope.augment import make_plan
from snakescope.config import TrainConfig, resolve_datasets, stage_settings
from snakescope.convert import convert_dataset
from snakescope.io import read_json, write_json
from snakescope.split import write_split
from snakescope.synthetic import write_demo_dataset
from snakescope.train import fit

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny segmentation dataset taken through convert, split and the augmentation plan."""
    root = tmp_path_factory.mktemp("resume")
    data = write_demo_dataset(root / "cells", n_images=16, size=32, seed=1)
    settings = resolve_datasets(
        {"task": "segmentation", "data_dir": str(data), "patch_size": [32, 32], "batch_size": 4,
         "epochs": 4, "patience": 10, "augmentations": ["flip"], "dropout": 0.1},
    )["cells"]
    out = root / "prepared"
    convert_dataset(stage_settings(settings, "convert"), out / "arrays.npz", out / "samples.tsv", out / "fingerprint.json")
    write_split(str(out / "samples.tsv"), stage_settings(settings, "split"), str(out / "splits.json"))
    write_json(make_plan(settings, read_json(out / "fingerprint.json")), out / "plan.json")
    return settings, out


def _fit(settings, prepared_dir: Path, run_dir: Path, epochs: int) -> dict:
    cfg = TrainConfig.from_settings({**settings, "epochs": epochs, "device": "cpu"}, model="unet", seed=0)
    return fit(
        arrays_npz=str(prepared_dir / "arrays.npz"), samples_tsv=str(prepared_dir / "samples.tsv"),
        split_json=str(prepared_dir / "splits.json"), plan_json=str(prepared_dir / "plan.json"),
        fingerprint_json=str(prepared_dir / "fingerprint.json"), cfg=cfg,
        model_out=str(run_dir / "model.pt"), history_out=str(run_dir / "history.tsv"),
        card_out=str(run_dir / "model_card.json"), work_dir=str(run_dir), threads=1,
    )


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resumed_run_equals_uninterrupted_run(prepared, tmp_path):
    settings, prepared_dir = prepared
    straight = tmp_path / "straight"
    _fit(settings, prepared_dir, straight, epochs=4)

    interrupted = tmp_path / "interrupted"
    _fit(settings, prepared_dir, interrupted, epochs=2)
    for name in ("model.pt", "history.tsv", "model_card.json"):  # Snakemake deletes a failed job's outputs
        (interrupted / name).unlink()
    card = _fit(settings, prepared_dir, interrupted, epochs=4)

    assert card["training"]["epochs_run"] == 4
    history = pd.read_csv(interrupted / "history.tsv", sep="\t")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    expected = pd.read_csv(straight / "history.tsv", sep="\t")
    pd.testing.assert_series_equal(history["val_loss"], expected["val_loss"], rtol=1e-6)
    resumed_weights, straight_weights = _weights(interrupted / "model.pt"), _weights(straight / "model.pt")
    for name, tensor in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=1e-5, atol=1e-6)


def test_killed_process_resumes_from_last_epoch(prepared, tmp_path):
    """SIGKILL the training process mid-run (as scancel or a time limit does); the rerun continues."""
    settings, prepared_dir = prepared
    run_dir = tmp_path / "killed"
    script = f"""
import sys; sys.path.insert(0, {str(PROJECT / 'tests' / 'unit')!r}); sys.path.insert(0, {str(PROJECT / 'workflow' / 'scripts')!r})
from pathlib import Path
from test_train_resume import _fit
import json
settings = json.loads({__import__('json').dumps(__import__('json').dumps(settings))})
_fit(settings, Path({str(prepared_dir)!r}), Path({str(run_dir)!r}), epochs=200)
"""
    process = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT)
    checkpoint = run_dir / "checkpoint_last.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["state"]["epoch"] >= 2:
            break
        time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = torch.load(checkpoint, weights_only=True)["state"]["epoch"]
    assert killed_at >= 2, "training did not reach epoch 2 in time"
    assert not (run_dir / "model.pt").exists()

    card = _fit(settings, prepared_dir, run_dir, epochs=killed_at + 1)
    history = pd.read_csv(run_dir / "history.tsv", sep="\t")
    assert card["training"]["epochs_run"] == killed_at + 1
    assert list(history["epoch"]) == list(range(1, killed_at + 2)), "resumed run restarted from epoch 0"
