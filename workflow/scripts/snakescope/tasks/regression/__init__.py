"""regression: pixel-wise regression in 2D and 3D (denoising, label-free prediction of a stain).

* convert: targets are read as float32 with the image's spatial shape; PSNR's data range is recorded.
* train: targets are learned in network units scaled from the training split, and the network learns the
  correction to its input where input and target share units (snakescope.tasks.regression.targets).
* predict -> per image ``<id>_pred.tif`` (float32, in the target's units: YX, or CYX for several target
  channels; ZYX/CZYX for volumes), plus ``predictions.csv``. Regression runs in float32 on GPUs too:
  bf16 keeps about three significant digits, visible in PSNR.
* uncertainty: Monte-Carlo dropout (Gal & Ghahramani, ICML 2016); the per-pixel standard deviation of the
  de-normalised samples is the uncertainty map, their mean the prediction; the summary reports whether
  the std tracks the absolute error of the mean.
* evaluate: snakescope.tasks.regression.metrics.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.images import resize_image
from snakescope.io import InputError, save_figure, write_tiff
from snakescope.store import open_store
from snakescope.tasks.base import Predictor, Task
from snakescope.tasks.regression import metrics
from snakescope.tasks.regression.targets import (
    as_channels_first,
    denormalise_target,
    fit_target_normalisation,
    input_residual,
    normalise_target,
    read_target,
    with_input_residual,
)
from snakescope.uncertainty_measures import most_certain

log = logging.getLogger(__name__)

PIXEL_SAMPLE = 20_000  # pixels per image for the uncertainty-vs-error statistics


def write_regression(sample_id: str, prediction: np.ndarray, out: Path) -> dict:
    """Write one prediction (C+spatial, target units) as ``<id>_pred.tif``: YX/ZYX for one channel."""
    spatial_axes = "YX" if prediction.ndim == 3 else "ZYX"
    if prediction.shape[0] == 1:
        write_tiff(prediction[0].astype(np.float32), out / f"{sample_id}_pred.tif", axes=spatial_axes)
    else:
        write_tiff(prediction.astype(np.float32), out / f"{sample_id}_pred.tif", axes="C" + spatial_axes)
    return {"id": sample_id, "prediction": f"{sample_id}_pred.tif"}


class RegressionPredictor(Predictor):
    predicts_in_blocks = True

    def predict(self, items: list[dict], out: Path) -> list[dict]:
        return [write_regression(item["id"], self.values(item), out) for item in items]

    def predict_large(self, image, sample_id, out, uncertainty_dir):
        from snakescope.engine.tiled import predict_large_regression

        row = predict_large_regression(image, self.plan, self.payload["spec"]["out_channels"],
                                       lambda block: self.values({"image": block}), sample_id, out)
        return row, None  # one pass of a regression network has no spread

    def values(self, item: dict) -> np.ndarray:
        """(C, *spatial) predicted target of one item, in target units."""
        import torch

        from snakescope.engine.inference import predict_logits

        image = torch.as_tensor(item["image"][None]).to(self.device)
        with torch.no_grad():
            logits = predict_logits(self.model, image, self.plan).float()
        return denormalise_target(logits[0].cpu().numpy(), self.plan["target_normalisation"])


class Regression(Task):
    name = "regression"
    label_is_class_map = False
    losses = ("mse", "l1")
    headline_metric = "pearson_r"
    score_name = "val_mae"
    output_kind = "target scaled by target_normalisation"
    mc_rows_per_pass = 8

    def read_target(self, path: str, spatial_shape: tuple[int, ...], settings: dict) -> np.ndarray:
        spatial_dims = len(spatial_shape)
        target = read_target(path, spatial_shape, spatial_dims)
        if settings.get("resize"):
            channels_first = target if target.ndim > spatial_dims else target[None]
            target = resize_image(channels_first, settings["resize"])
            target = target[0] if target.shape[0] == 1 else target
        return target

    def read_target_region(self, target, region: tuple[slice, ...], settings: dict) -> np.ndarray:
        values = target.read(region)
        return values[0] if values.shape[0] == 1 else values

    def fingerprint(self, settings: dict, samples: list, targets: dict, spatial_dims: int) -> dict:
        target_channels = {t.shape[0] if t.ndim > spatial_dims else 1 for t in targets.values()}
        if len(target_channels) > 1:
            raise InputError(
                f"{settings['data_dir']}: the regression targets have different channel counts "
                f"{sorted(target_channels)}. Save every target with the same channels."
            )
        return {
            "target_channels": target_channels.pop() if target_channels else 1,
            "target_data_range": metrics.target_data_range([s.target for s in samples if s.target], spatial_dims),
        }

    def planned_normalisation(self, fingerprint: dict) -> tuple[str, str] | None:
        if fingerprint["channels"] == fingerprint.get("target_channels", 1):
            return "dataset_zscore", (
                "input and target share channels and units (e.g. denoising): one scaling for every image keeps "
                "the identity learnable, so the network learns the correction to the input"
            )
        return None

    def out_channels(self, fingerprint: dict) -> int:
        return int(fingerprint.get("target_channels", 1))

    def dummy_target(self, batch: int, out_channels: int, shape: list[int], generator):
        import torch

        return torch.rand((batch, out_channels, *shape), generator=generator)

    def label_reader(self, samples: pd.DataFrame, plan: dict):
        def read(arrays, sample_id: str):
            key = f"target/{sample_id}"
            if key not in arrays:
                return None
            target = as_channels_first(arrays[key], plan["spatial_dims"])
            return normalise_target(target, plan["target_normalisation"])

        return read

    def prepare_plan(self, plan: dict, fingerprint: dict, arrays_store: str, split: dict, cfg) -> dict:
        # Target scaling from the training split only; it travels in the saved plan, so predict and
        # uncertainty map outputs back to the target's units.
        plan = {**plan, "target_normalisation": fit_target_normalisation(arrays_store, split["train"],
                                                                         plan["spatial_dims"])}
        # None unless input ~ target units (and the config allows it)
        plan["input_residual"] = input_residual(plan, fingerprint) if cfg.residual_learning else None
        return plan

    def wrap_network(self, model, plan: dict):
        return with_input_residual(model, plan)  # learn the correction to the input, where there is one

    def loss(self, name: str):
        from torch import nn

        return nn.L1Loss() if name == "l1" else nn.MSELoss()

    def validation_score(self, logits, label) -> float:
        return (logits - label).abs().mean().item() * len(label)

    def predictor(self, model, payload, data, threshold, device) -> Predictor:
        return RegressionPredictor(self, model, payload, data, threshold, device)

    def output_names(self, payload: dict) -> list[str]:
        return [f"target{c}" for c in range(payload["spec"]["out_channels"])]

    def export_output(self, logits, payload: dict):
        import torch

        low, span = _scale_of(payload["plan"]["target_normalisation"])
        shape = (1, -1) + (1,) * (logits.ndim - 2)
        return logits.float() * torch.tensor(span).view(shape) + torch.tensor(low).view(shape)

    def export_postprocessing(self, payload: dict, v0_5) -> tuple[list, list[str]]:
        low, span = _scale_of(payload["plan"]["target_normalisation"])  # back to the target's units
        kwargs = v0_5.ScaleLinearAlongAxisKwargs(axis=v0_5.AxisId("channel"), gain=span, offset=low)
        return [v0_5.ScaleLinearDescr(kwargs=kwargs)], self.output_names(payload)

    def uncertainty(self, model, payload, items, data, samples, device, out, threshold):
        """Sample every test image; write ``<id>_std.tif`` (uncertainty) and ``<id>_mean.tif`` (MC mean).

        Returns:
            (one row per image: id, uncertainty = mean std, mae of the MC mean, map names;
             summary: Spearman rho of per-pixel std vs |error|, MAE of the 20 % most certain pixels vs the
             rest).
        """
        import torch
        from scipy.stats import spearmanr

        from snakescope.engine.inference import sample_dropout

        plan = payload["plan"]
        rng = np.random.default_rng(0)
        rows, stds, errors = [], [], []
        with open_store(data.arrays_store) if data else nullcontext({}) as arrays:  # no data: new images
            for item in items:
                image = torch.as_tensor(item["image"][None]).to(device)
                draws = sample_dropout(model, image, plan, samples, self.mc_rows_per_pass)[:, 0].numpy()
                draws = denormalise_target(draws, plan["target_normalisation"], samples_first=True)
                mean, std = draws.mean(0), draws.std(0)
                axes = "CYX" if mean.ndim == 3 else "CZYX"
                if mean.shape[0] == 1:
                    axes = axes[1:]
                write_tiff(np.squeeze(std, 0) if mean.shape[0] == 1 else std, out / f"{item['id']}_std.tif", axes=axes)
                write_tiff(np.squeeze(mean, 0) if mean.shape[0] == 1 else mean, out / f"{item['id']}_mean.tif",
                           axes=axes)
                row = {
                    "id": item["id"],
                    "uncertainty": float(std.mean()),
                    "map": f"{item['id']}_std.tif",
                    "mean": f"{item['id']}_mean.tif",
                }
                key = f"target/{item['id']}"
                if key in arrays:
                    error = np.abs(mean - as_channels_first(arrays[key], plan["spatial_dims"]))
                    row["mae"] = float(error.mean())
                    pick = rng.choice(error.size, size=min(error.size, PIXEL_SAMPLE), replace=False)
                    stds.append(std.ravel()[pick])
                    errors.append(error.ravel()[pick])
                rows.append(row)
        frame = pd.DataFrame(rows)
        summary: dict = {"unit": "pixels", "uncertainty_kind": "std of MC-dropout samples, target units"}
        if errors:
            std_all, error_all = np.concatenate(stds), np.concatenate(errors)
            certain, rest = most_certain(std_all)
            summary["mae_most_certain_20pct"] = float(error_all[certain].mean())
            summary["mae_rest"] = float(error_all[rest].mean())
            summary["spearman_std_vs_abs_error"] = float(spearmanr(std_all, error_all).statistic)
            if len(frame) > 2 and frame["uncertainty"].nunique() > 1:
                summary["spearman_image_std_vs_mae"] = float(spearmanr(frame["uncertainty"], frame["mae"]).statistic)
            summary["tracks_error"] = bool(
                summary["spearman_std_vs_abs_error"] > 0
                and summary["mae_most_certain_20pct"] < summary["mae_rest"]
            )
            _uncertainty_figure(std_all, error_all, out / "uncertainty_vs_error.png")
        return frame, summary

    def evaluate(self, predictions, predict_dir, arrays_store, samples, split, fingerprint, figures):
        return metrics.evaluate(predictions, predict_dir, arrays_store, split, fingerprint, figures)


def _scale_of(stats: dict) -> tuple[list[float], list[float]]:
    """(low, span) per channel of a target normalisation: target = span * output + low."""
    low = [float(v) for v in stats["low"]]
    return low, [float(h) - v for h, v in zip(stats["high"], low, strict=True)]


def _uncertainty_figure(std: np.ndarray, error: np.ndarray, path: Path, bins: int = 10) -> None:
    import matplotlib.pyplot as plt

    edges = np.unique(np.quantile(std, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, std, side="right") - 1, 0, len(edges) - 2)
    centres = [std[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
    mean_error = [error[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
    figure, axis = plt.subplots(figsize=(5, 3.8))
    axis.plot(centres, mean_error, "o-")
    axis.set_xlabel("MC-dropout std of the pixel (target units), decile means")
    axis.set_ylabel("mean |MC mean - target|")
    axis.set_title("Does uncertainty track error?")
    save_figure(figure, path)


TASK = Regression()
