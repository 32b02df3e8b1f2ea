"""Data-parallel training through snakemake (issue 17): two processes started by torchrun (gloo on the
CPU) train the same U-Net as one process with the same global batch, on ISBI 2012 membranes.

Each process takes half of every global batch of 8, gradients are averaged over the two, so a step is a
step on the whole batch; the runs differ only by floating-point rounding (sums in another order: the
all-reduce, the per-process means, convolutions on half batches), which the tolerances below cover. Dropout is off here: with dropout the two runs
draw different masks (each process its own), which is an equally valid but different random run.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import read_metrics, run_snakemake, write_config

pytestmark = pytest.mark.slow

# Largest differences measured between the 1- and 2-process runs of this config (2 CPU cores,
# 2026-12-03): train loss 4.1e-5, validation loss 9.1e-5 (of about 1.1), validation Dice 2.4e-4; test IoU
# 8.5e-5, Dice 1.6e-4, pixel accuracy 6.4e-4. The convolutions' sums run in another order on batches of 4
# than of 8, and Adam carries such differences on. The bounds leave a margin of about 10x and stay well
# below what another seed changes (the ISBI IoU's std over two seeds in the benchmark matrix: 0.003-0.026).
LOSS_TOLERANCE = 1e-3
METRIC_TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    workdir = tmp_path_factory.mktemp("ddp")
    isbi = {
        "task": "segmentation",
        "data_dir": str(shared_data / "isbi2012_em_membranes"),
        "layout": {"images": "train/image/*.png", "masks": "train/label/*.png"},
        "resize": [128, 128],
    }
    config = {
        "datasets": {"one": {**isbi, "train_processes": 1}, "two": {**isbi, "train_processes": 2}},
        "models": ["unet_small"],
        "patch_size": [64, 64],
        "batch_size": 8,
        "epochs": 3,
        "patience": 3,
        "max_batches_per_epoch": 4,
        "learning_rate": 0.001,
        "dropout": 0.0,
        "augmentations": ["flip", "rotate90"],
        "normalisation": "percentile",
        "uncertainty": False,
        "export": False,
        "results_library": None,
        "device": "cpu",
    }
    run_snakemake(workdir, write_config(workdir, config))
    return workdir


def history(workdir, dataset) -> pd.DataFrame:
    return pd.read_csv(workdir / f"results/{dataset}/unet_small/seed0/train/history.tsv", sep="\t")


def test_distributed_training_ran_in_two_processes(runs):
    cards = {d: json.loads((runs / f"results/{d}/unet_small/seed0/train/model_card.json").read_text())
             for d in ("one", "two")}
    assert cards["one"]["processes"] == 1 and cards["two"]["processes"] == 2
    log = (runs / "logs/two/unet_small/seed0/train.log").read_text()
    assert "starting 2 training processes" in log and "torch.distributed.run" in log
    assert "process 0 of 2 joined (gloo" in log
    assert "starting" not in (runs / "logs/one/unet_small/seed0/train.log").read_text()


def test_ddp_matches_one_process_with_the_same_global_batch(runs):
    one, two = history(runs, "one"), history(runs, "two")
    assert list(one["epoch"]) == list(two["epoch"]) == [1, 2, 3]
    assert (one["val_loss"] - two["val_loss"]).abs().max() < LOSS_TOLERANCE
    assert (one["train_loss"] - two["train_loss"]).abs().max() < LOSS_TOLERANCE
    assert (one["val_dice"] - two["val_dice"]).abs().max() < METRIC_TOLERANCE
    a, b = read_metrics(runs, "one", "unet_small"), read_metrics(runs, "two", "unet_small")
    for key in ("iou", "dice", "pixel_accuracy"):
        assert abs(a[key] - b[key]) < METRIC_TOLERANCE, (key, a[key], b[key])
    assert a["iou"] > a["baseline_iou"]  # both learned: the comparison is not of two untrained nets
