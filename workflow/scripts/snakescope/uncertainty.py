"""uncertainty: Monte-Carlo dropout (Gal & Ghahramani, ICML 2016), 20 samples by default.

Dropout stays on at test time and the network is sampled repeatedly; the spread of the samples
estimates how unsure the model is. Each task scores it its own way (snakescope.tasks): per image for
classification, per pixel for segmentation and regression, per object for instances. The summary says
whether uncertainty tracks error: the accuracy (or error) of the most certain 20 % against the rest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from snakescope.engine.runtime import select_device
from snakescope.io import read_json, read_samples, write_json, write_table
from snakescope.tasks import get_task, load_trained
from snakescope.tasks.base import InferenceData
from snakescope.uncertainty_measures import calibration_report

log = logging.getLogger(__name__)


def estimate_uncertainty(model_pt: str, arrays_npz: str, samples_tsv: str, split_json: str, out_dir: str,
                         samples: int = 20, seed: int = 0, device: str = "auto", threads: int = 1,
                         threshold: str | float = "otsu") -> dict:
    """Sample the model on the test set; write uncertainty.csv, the task's maps, summary.json and a figure.

    `threshold` matters for instance segmentation only: the objects scored are those `predict` makes
    with the same threshold.
    """
    import matplotlib

    matplotlib.use("Agg")
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    torch_device = select_device(device)
    model, payload = load_trained(model_pt, torch_device)
    task = get_task(payload["plan"]["task"])
    split = read_json(split_json)
    table = read_samples(samples_tsv)
    items = task.load_items(arrays_npz, table, split["test"], payload["plan"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    calibration = calibrate(task, model, payload, arrays_npz, table, split, items, torch_device, out)
    started = time.perf_counter()
    frame, tracking = task.uncertainty(model, payload, items, InferenceData(arrays_npz, table, split), samples,
                                       torch_device, out, threshold)
    seconds = time.perf_counter() - started
    summary = {"mc_samples": samples, "n_images": len(items), "seconds": seconds,
               "mean_uncertainty": float(frame["uncertainty"].mean()), **tracking, **calibration}
    write_table(frame, out / "uncertainty.csv")
    write_json(summary, out / "summary.json")
    log.info("MC dropout, %d samples, %d images in %.1f s: %s", samples, len(items), seconds, summary)
    return summary


def calibrate(task, model, payload: dict, arrays_npz: str, table, split: dict, test_items: list[dict], device,
              out: Path) -> dict:
    """ECE of the network's probabilities on the test set, before and after temperature scaling fitted on
    the validation set, and reliability.png; {} for tasks without class probabilities or without a
    validation set."""
    if not task.calibrated or not split["val"]:
        return {}
    val_items = task.load_items(arrays_npz, table, split["val"], payload["plan"])
    model.eval()
    val = task.calibration_logits(model, payload, val_items, device)
    test = task.calibration_logits(model, payload, test_items, device)
    unit = "images" if not task.dense else "pixels"
    report = calibration_report(val, test, unit, out / "reliability.png")
    log.info("calibration on %d test %s: ECE %.3f, %.3f after temperature scaling (T = %.2f, fitted on %d "
             "validation %s)", len(test[1]), unit, report["ece"], report["ece_temperature_scaled"],
             report["temperature"], len(val[1]), unit)
    return report
