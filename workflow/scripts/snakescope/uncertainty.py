"""uncertainty: Monte-Carlo dropout (Gal & Ghahramani, ICML 2016), 20 samples by default.

Dropout stays on at test time and the network is sampled repeatedly; the spread of the samples
estimates how unsure the model is. Each task scores it its own way (snakescope.tasks): per image for
classification, per pixel for segmentation and regression, per object for instances. The summary says
whether uncertainty tracks error: the accuracy (or error) of the most certain 20 % against the rest.
The test images, treated as if unlabelled, are ranked for annotation: the most uncertain first
(annotate_next.tsv, annotate_next.png), as `apply` ranks new images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from snakescope.engine.networks import TemperatureScaled
from snakescope.engine.runtime import select_device
from snakescope.io import read_json, read_samples, save_figure, write_json, write_table
from snakescope.plots import displayable
from snakescope.tasks import get_task, load_trained
from snakescope.tasks.base import InferenceData
from snakescope.uncertainty_measures import calibration_report

log = logging.getLogger(__name__)

RANKING_SHOWN = 8  # images drawn in a ranking figure


def estimate_uncertainty(model_pt: str, arrays_store: str, samples_tsv: str, split_json: str, out_dir: str,
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
    # read from the store as they are sampled, so that memory does not grow with the test set
    items = task.stored_items(arrays_store, table, split["test"], payload["plan"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    calibration = calibrate(task, model, payload, arrays_store, table, split, items, torch_device, out)
    started = time.perf_counter()
    frame, tracking = task.uncertainty(model, payload, items, InferenceData(arrays_store, table, split), samples,
                                       torch_device, out, threshold)
    seconds = time.perf_counter() - started
    ranking = rank_images(frame, pd.DataFrame({"id": items.ids}))
    write_table(ranking, out / "annotate_next.tsv")
    ranking_figure(ranking, lambda sample_id: items.with_ids([sample_id])[0]["image"], out, out / "annotate_next.png")
    summary = {"mc_samples": samples, "n_images": len(items), "seconds": seconds,
               "mean_uncertainty": float(frame["uncertainty"].mean()), **tracking, **calibration}
    write_table(frame, out / "uncertainty.csv")
    write_json(summary, out / "summary.json")
    log.info("MC dropout, %d samples, %d images in %.1f s: %s", samples, len(items), seconds, summary)
    return summary


def calibrate(task, model, payload: dict, arrays_store: str, table, split: dict, test_items, device,
              out: Path) -> dict:
    """ECE of the network's probabilities on the test set, before and after temperature scaling (with the
    temperature the outputs use, else one fitted on the validation set), and reliability.png; {} for
    tasks without class probabilities or without a validation set."""
    if not task.calibrated or not split["val"]:
        return {}
    val_items = task.stored_items(arrays_store, table, split["val"], payload["plan"])
    applied = payload.get("temperature", 1.0)  # the temperature training fitted and the outputs use
    network = model.network if isinstance(model, TemperatureScaled) else model  # before scaling
    network.eval()
    val = task.calibration_logits(network, payload, val_items, device)
    test = task.calibration_logits(network, payload, test_items, device)
    unit = "images" if not task.dense else "pixels"
    report = calibration_report(val, test, unit, out / "reliability.png", applied if applied != 1.0 else None)
    report["temperature_applied"] = applied
    log.info("calibration on %d test %s: ECE %.3f, %.3f after temperature scaling (T = %.2f, fitted on %d "
             "validation %s)", len(test[1]), unit, report["ece"], report["ece_temperature_scaled"],
             report["temperature"], len(val[1]), unit)
    return report


def rank_images(uncertainty: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per image of `predictions`, most uncertain first: its mean uncertainty (over objects, for
    instances; an image without objects has none and goes last) beside its prediction."""
    per_image = uncertainty.groupby("id", sort=False)["uncertainty"].mean()
    ranking = predictions.copy()
    ranking.insert(min(2, ranking.shape[1]), "uncertainty", ranking["id"].map(per_image).astype(float))
    ranking = ranking.sort_values("uncertainty", ascending=False, na_position="last", kind="stable")
    ranking.insert(0, "rank", np.arange(1, len(ranking) + 1))
    return ranking.reset_index(drop=True)


def ranking_figure(ranking: pd.DataFrame, image_of: Callable[[str], np.ndarray], uncertainty_dir: Path,
                   path: Path) -> None:
    """The most uncertain images of `ranking` (`image_of(id)`: channels first), each beside its
    uncertainty map when the task writes one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tifffile

    shown = ranking.head(RANKING_SHOWN)
    figure, axes = plt.subplots(len(shown), 2, figsize=(5, 2.4 * len(shown)), squeeze=False)
    for row, (_, entry) in enumerate(shown.iterrows()):
        axes[row, 0].imshow(displayable(image_of(entry["id"])), cmap="gray")
        name = entry.get("filename", entry["id"])
        axes[row, 0].set_title(f"#{entry['rank']} {name}: {entry['uncertainty']:.3f}", fontsize=8)
        maps = [uncertainty_dir / f"{entry['id']}_{suffix}" for suffix in
                ("uncertainty.tif", "std.tif", "uncertainty.ome.zarr")]  # the last: an image predicted in blocks
        found = next((m for m in maps if m.exists()), None)
        if found is not None:
            uncertainty_map = tifffile.imread(found) if found.is_file() else _map_thumbnail(found)
            while uncertainty_map.ndim > 2:  # a volume or several channels: the middle plane
                uncertainty_map = uncertainty_map[len(uncertainty_map) // 2]
            axes[row, 1].imshow(uncertainty_map, cmap="magma")
            axes[row, 1].set_title("uncertainty map", fontsize=8)
        for axis in axes[row]:
            axis.set_axis_off()
    figure.suptitle("Most uncertain first: check (or annotate) these before trusting the rest", fontsize=9)
    save_figure(figure, path)


def _map_thumbnail(path: Path) -> np.ndarray:
    """An OME-Zarr uncertainty map too large for memory, subsampled (`LazyImage.thumbnail`)."""
    from snakescope.io import ome_zarr_axes
    from snakescope.lazy_images import LazyImage

    with LazyImage(path, spatial_dims=len(ome_zarr_axes(path).replace("C", ""))) as image:
        return image.thumbnail()[0]
