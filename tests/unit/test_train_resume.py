"""Training resumes from its last checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

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
    convert_dataset(stage_settings(settings, "convert"), out / "arrays.zarr", out / "samples.tsv", out / "fingerprint.json")
    write_split(str(out / "samples.tsv"), stage_settings(settings, "split"), str(out / "splits.json"))
    write_json(make_plan(settings, read_json(out / "fingerprint.json")), out / "plan.json")
    return settings, out


def _fit(settings, prepared_dir: Path, run_dir: Path, epochs: int, train_seconds: float | None = None) -> dict:
    cfg = TrainConfig.from_settings({**settings, "epochs": epochs, "device": "cpu", "train_seconds": train_seconds},
                                    model="unet", seed=0)
    return fit(
        arrays_store=str(prepared_dir / "arrays.zarr"), samples_tsv=str(prepared_dir / "samples.tsv"),
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
    first_two = pd.read_csv(interrupted / "history.tsv", sep="\t")
    for name in ("model.pt", "history.tsv", "model_card.json"):  # Snakemake deletes a failed job's outputs
        (interrupted / name).unlink()
    card = _fit(settings, prepared_dir, interrupted, epochs=4)

    assert card["training"]["epochs_run"] == 4
    history = pd.read_csv(interrupted / "history.tsv", sep="\t")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    # epochs 1-2 were resumed, not trained again: their rows, measured seconds included, are the first run's
    pd.testing.assert_frame_equal(history.iloc[:2], first_two)
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


def test_training_stops_when_its_time_budget_is_spent_counting_a_killed_attempt(prepared, tmp_path, monkeypatch):
    """With a clock where every epoch's training and validation last 1 s each and a budget of 7.5 s, a
    fourth epoch would overrun: after three, two of them from an earlier attempt, a last epoch trains
    half its steps (0.5 s of training and 1 s of validation fit), then the run stops and keeps its best
    checkpoint."""
    from snakescope.engine import trainer

    monkeypatch.setattr(trainer, "time", SimpleNamespace(perf_counter=itertools.count().__next__))
    settings, prepared_dir = prepared
    _fit(settings, prepared_dir, tmp_path, epochs=2)  # an attempt that ended (was killed) after two epochs
    for name in ("model.pt", "history.tsv", "model_card.json"):
        (tmp_path / name).unlink()

    card = _fit(settings, prepared_dir, tmp_path, epochs=50, train_seconds=7.5)
    history = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert list(history["epoch"]) == [1, 2, 3, 4] and list(history["seconds"]) == [2.0] * 4
    assert list(history["validation_seconds"]) == [1.0] * 4
    full, last = history["images_per_second"].iloc[2:]
    assert last == full / 2  # the last epoch's half of the steps
    assert card["training"]["stopped_by"] == "time budget" and card["training"]["time_limit_seconds"] == 7.5
    best = int(history["val_loss"].idxmin()) + 1
    assert card["training"]["best_epoch"] == best
    saved = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert saved["best_epoch"] == best
    for name, tensor in torch.load(tmp_path / "checkpoint_best.pt", map_location="cpu", weights_only=True).items():
        torch.testing.assert_close(saved["model"][name], tensor)

    unlimited = _fit(settings, prepared_dir, tmp_path / "unlimited", epochs=4)
    assert unlimited["training"]["stopped_by"] == "epochs" and unlimited["training"]["epochs_run"] == 4


def _bare_trainer(network, **cfg):
    from snakescope.engine import distributed
    from snakescope.engine.trainer import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.model, trainer.train_model, trainer.device = network, network, torch.device("cpu")
    trainer.cfg = SimpleNamespace(**{"max_batches_per_epoch": 0, "learning_rate": 0.4, **cfg})
    trainer.group = distributed.SINGLE
    trainer.step_loss = lambda batch: (network(batch).sum(), len(batch))
    trainer.clip_gradients = lambda: None
    return trainer


def _bare_trainer_recording_rates():
    """A bare trainer of a linear layer, its SGD optimiser at rate 0.4, and the list of each step's rate."""
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.4)
    rates = []
    step = optimizer.step
    optimizer.step = lambda: rates.append(optimizer.param_groups[0]["lr"]) or step()
    return _bare_trainer(network), optimizer, rates


@pytest.mark.parametrize(("batches", "expected"), [(6, [1 / 4, 2 / 4, 3 / 4, 1, 1, 1]), (2, [1 / 4, 2 / 4])])
def test_a_warm_up_raises_the_learning_rate_step_by_step_and_leaves_it_at_its_value(batches, expected):
    """Mask R-CNN's first epoch starts at a fraction of the rate (DetectorTrainer.warmup_steps); an epoch
    shorter than the warm-up still hands the full rate to the next."""
    trainer, optimizer, rates = _bare_trainer_recording_rates()
    trainer.train_epoch([torch.ones(1, 2)] * batches, optimizer, warmup=3)
    assert rates == pytest.approx([0.4 * f for f in expected])
    assert optimizer.param_groups[0]["lr"] == 0.4


@pytest.mark.parametrize(("seconds", "expected"), [
    ([], (0.0, 0.1)),  # no epoch yet: the planned epochs are the only estimate
    ([10.0], (0.1, 0.2)),  # as fast as planned: progress by epochs
    ([30.0, 20.0], (0.5, 0.8)),  # slower than planned: 50 s of 100 spent, the slowest epoch took 30
    ([60.0, 30.0], (0.9, 1.0)),  # the estimate passes the budget's end: cut at 1
])
def test_under_a_time_budget_an_epochs_progress_is_the_larger_of_epochs_and_seconds(seconds, expected):
    trainer = _bare_trainer(torch.nn.Linear(2, 1), epochs=10, train_seconds=100.0)
    assert trainer.annealing_span([{"seconds": s} for s in seconds]) == pytest.approx(expected)
    assert trainer.annealing_span([{"seconds": 20.0}], last=True) == pytest.approx((0.2, 1.0))  # a last epoch ends at 1
    assert _bare_trainer(torch.nn.Linear(2, 1), epochs=10, train_seconds=None).annealing_span([]) is None


def test_annealing_lowers_the_rate_along_a_half_cosine_within_the_epoch_and_restores_it():
    """The second half of training in four steps: from the full rate's half towards zero."""
    import math

    trainer, optimizer, rates = _bare_trainer_recording_rates()
    trainer.train_epoch([torch.ones(1, 2)] * 4, optimizer, anneal=(0.5, 1.0))
    expected = [0.4 * (1 + math.cos(math.pi * (0.5 + 0.5 * i / 4))) / 2 for i in range(4)]
    assert rates == pytest.approx(expected) and rates[0] == pytest.approx(0.2)
    assert optimizer.param_groups[0]["lr"] == 0.4
