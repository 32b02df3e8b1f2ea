"""base: the interface every task implements, and the defaults most tasks share.

A stage asks its task, never the task's name: `convert` reads and fingerprints ground truth through it,
the planner asks for its cold-start model and output channels, `train` for its loss, labels and
validation score, `predict`, `uncertainty` and `evaluate` for what to write and how to score it. The
shared machinery (training loop, sliding window, MC-dropout sampler, checkpoints) sits below in
snakescope.engine and is handed what it needs.

Methods that need torch import it when they run: this module and the task modules import without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` consecutive items (the last may be shorter); `items` may be a generator, so test
    images and new images (snakescope.apply) stream through the same loops."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@dataclass(frozen=True)
class InferenceData:
    """What prediction and uncertainty read besides the model: the packed arrays of `convert`, its
    samples table and the split (tasks that tune post-processing on the validation images use them)."""

    arrays_store: str
    samples: pd.DataFrame
    split: dict


class Predictor:
    """Applies one trained model to test images for the `predict` rule.

    `predict` hands it `batch_size` items at a time (dicts with "id" and a normalised "image") and writes
    the rows it returns to predictions.csv. When `times_itself` is True, the rule times each call and
    reports those end-to-end times (post-processing included) instead of timing the network alone.
    """

    batch_size: ClassVar[int] = 1
    times_itself: ClassVar[bool] = False

    def __init__(self, task: Task, model, payload: dict, data: InferenceData, threshold: str | float, device):
        self.task, self.model, self.payload, self.data = task, model, payload, data
        self.plan = payload["plan"]
        self.threshold = threshold
        self.device = device

    def predict(self, items: list[dict], out: Path) -> list[dict]:
        """Write the outputs of `items` under `out`; one row per item, its "id" first."""
        raise NotImplementedError

    predicts_in_blocks: ClassVar[bool] = False

    def predict_large(self, image, sample_id: str, out: Path, uncertainty_dir: Path) -> tuple[dict, dict | None]:
        """For a task whose outputs are per pixel (`predicts_in_blocks`): an image too large for memory
        (a `lazy_images.LazyImage`), predicted block by block; returns its predictions.csv row and its
        uncertainty.csv row (one pass, None where one pass has no spread)."""
        raise NotImplementedError


class Task:
    """What differs between tasks; one subclass per task, one instance (`TASK`) per task module.

    Attributes:
        name: the task's name in the config.
        dense: ground truth and predictions are per pixel (masks, targets); False: one label per image,
            read from a CSV, images used whole (resized) rather than in patches.
        label_is_class_map: a per-pixel label holds classes (drawn as outlines, followed by nearest
            neighbour), not continuous values.
        default_model, losses: the model without a config or plan, and the losses the task takes (the
            first is the default).
        headline_metric: the test metric leaderboards rank by (higher is better).
        score_name: the validation score's column in history.tsv.
        output_kind: what the network outputs, for the model card.
        rule_models: the planner's cold-start model per device ("cpu", "cuda"), and why.
        max_batch, cpu_batch: the planner's batch-size cap and its fixed CPU batch size.
        default_resize: the image size used when the config sets none (None: native size).
        mc_rows_per_pass: images (or windows) per MC-dropout pass.
        calibrated: the network predicts class probabilities whose calibration is measured
            (`calibration_logits`).
    """

    name: ClassVar[str]
    dense: ClassVar[bool] = True
    label_is_class_map: ClassVar[bool] = True
    default_model: ClassVar[str] = "unet"
    losses: ClassVar[tuple[str, ...]]
    headline_metric: ClassVar[str]
    score_name: ClassVar[str]
    output_kind: ClassVar[str] = "logits"
    rule_models: ClassVar[dict[str, str]] = {"cpu": "unet_small", "cuda": "unet"}
    rule_model_reason: ClassVar[str] = "U-Net family"
    max_batch: ClassVar[int] = 32
    cpu_batch: ClassVar[int] = 8
    default_resize: ClassVar[list[int] | None] = None
    mc_rows_per_pass: ClassVar[int] = 16
    calibrated: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # -- convert: ground truth and fingerprint ---------------------------------------------------------

    def read_target(self, path: str, spatial_shape: tuple[int, ...], settings: dict) -> np.ndarray:
        """One ground-truth image, checked against its image's spatial shape (dense tasks)."""
        raise NotImplementedError(f"{self.name} reads no ground-truth images")

    def read_target_region(self, target, region: tuple[slice, ...], settings: dict) -> np.ndarray:
        """One spatial `region` of a ground-truth image opened lazily (a `lazy_images.LazyImage`), as
        `read_target` would give that region of the whole image; for images too large to read whole,
        which are never resized."""
        raise NotImplementedError(f"{self.name} reads no ground-truth images")

    def check_targets(self, samples: list, targets: dict[str, np.ndarray], settings: dict) -> list[str]:
        """Problems of the ground truth as a whole that would train on wrong data without an error (lossy
        or implausible masks): one message each, naming a file and the fix."""
        return []

    def prepare_targets(self, targets: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
        """All targets after reading, before the fingerprint: (targets, fingerprint facts learned here)."""
        return targets, {}

    def fingerprint(self, settings: dict, samples: list, targets: dict[str, np.ndarray], spatial_dims: int) -> dict:
        """The task's fingerprint entries (classes, class balance, object sizes, target channels...) from the
        dataset's samples (snakescope.convert.discover.Sample) and targets (as `prepare_targets` left them)."""
        return {}

    def encode_target(self, target: np.ndarray, fingerprint: dict) -> np.ndarray:
        """One target as it is packed for training (e.g. mask values to class indices)."""
        return target

    # -- planning --------------------------------------------------------------------------------------

    def out_channels(self, fingerprint: dict) -> int:
        """Channels of the network's output: classes, or target channels."""
        raise NotImplementedError

    def planned_normalisation(self, fingerprint: dict) -> tuple[str, str] | None:
        """(normalisation, reason) where the task decides it; None leaves it to the bit depth rule."""
        return None

    def dummy_target(self, batch: int, out_channels: int, shape: list[int], generator) -> torch.Tensor:
        """A target of the right kind and shape for timing a training step on `batch` images."""
        import torch

        return torch.zeros((batch, 1, *shape), dtype=torch.long)

    # -- training --------------------------------------------------------------------------------------

    def label_reader(self, samples: pd.DataFrame, plan: dict):
        """A function (open arrays, sample id) -> the label as training takes it, or None.

        Dense default: the packed class map as int64 (1, *spatial).
        """

        def read(arrays, sample_id: str):
            key = f"target/{sample_id}"
            return arrays[key][None].astype(np.int64) if key in arrays else None

        return read

    def load_items(self, arrays_store: str, samples: pd.DataFrame, ids: list[str], plan: dict) -> list[dict]:
        """The samples `ids`, normalised, with their labels (snakescope.engine.items.load_items)."""
        from snakescope.engine.items import load_items

        return load_items(arrays_store, ids, plan, self.label_reader(samples, plan))

    def stored_items(self, arrays_store: str, samples: pd.DataFrame, ids: list[str], plan: dict):
        """The items `load_items` gives, read from the store one at a time as they are used (StoredItems),
        for a pass over a split that need not hold it."""
        from snakescope.engine.items import StoredItems

        return StoredItems(arrays_store, ids, plan, self.label_reader(samples, plan))

    def prepare_plan(self, plan: dict, fingerprint: dict, arrays_store: str, split: dict, cfg) -> dict:
        """The augment plan with what training learns from the training split (saved with the model)."""
        return plan

    def wrap_network(self, model, plan: dict):
        """The registry's network as this task trains and loads it (e.g. with an input residual)."""
        return model

    def loss(self, name: str):
        """The loss module `name` taking (logits, label)."""
        raise NotImplementedError

    def training_items(self, items: list[dict]) -> list[dict]:
        """Items as the network learns them (e.g. instance labels as three classes)."""
        return items

    def validation_score(self, logits: torch.Tensor, label: torch.Tensor) -> float:
        """The batch's validation score summed over its images (the trainer divides by their number)."""
        raise NotImplementedError

    def trainer(self, cfg, threads: int = 1):
        """The trainer of model `cfg.model` (snakescope.engine.trainer.Trainer or a variant)."""
        from snakescope.engine.trainer import Trainer

        return Trainer(self, cfg, threads)

    # -- inference and evaluation ----------------------------------------------------------------------

    def predictor(self, model, payload: dict, data: InferenceData, threshold: str | float, device) -> Predictor:
        raise NotImplementedError

    def calibration_logits(self, model, payload: dict, items: list[dict], device):
        """((n, K) logits, (n,) true classes) of the network on `items`, per image or per sampled pixel, to
        judge whether its probabilities can be trusted (`snakescope.uncertainty`); tasks with `calibrated`."""
        raise NotImplementedError

    def uncertainty(
        self, model, payload: dict, items: list[dict], data: InferenceData, samples: int, device, out: Path,
        threshold: str | float,
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """MC-dropout uncertainty of `items` (a list or a generator, read once; items without "label" are new
        images): (one row per image or object, with its "id" and an "uncertainty" column; summary fields,
        whether it tracks error among them when labels are known). Writes maps, and with labels a figure,
        to `out`. `data` may be None (new images without the run's data)."""
        raise NotImplementedError

    # -- export (bioimage.io) ----------------------------------------------------------------------------

    def output_names(self, payload: dict) -> list[str]:
        """Names of the network's output channels (classes by default)."""
        names = payload.get("classes") or payload.get("mask_values") or range(payload["spec"]["out_channels"])
        return [str(name) for name in names]

    def export_output(self, logits: torch.Tensor, payload: dict) -> torch.Tensor:
        """What an exported package gives for these raw network outputs: class probabilities by default."""
        import torch

        return torch.softmax(logits.float(), dim=1)

    def export_postprocessing(self, payload: dict, v0_5) -> tuple[list, list[str]]:
        """(postprocessing steps in bioimage.io's terms, output channel names) matching `export_output`."""
        return [v0_5.SoftmaxDescr(kwargs=v0_5.SoftmaxKwargs(axis=v0_5.AxisId("channel")))], self.output_names(payload)

    def export_settings(self, arrays_store: str, split: dict) -> dict:
        """Post-processing settings learned from the run's data that an exported package keeps, so that
        snakescope.apply applies the package as it applies the run."""
        return {}

    def export_notes(self, payload: dict) -> list[str]:
        """README lines on what the package does not do that snakescope does."""
        return []

    def evaluate(
        self, predictions: pd.DataFrame, predict_dir: Path, arrays_store: str, samples: pd.DataFrame, split: dict,
        fingerprint: dict, figures: Path,
    ) -> tuple[dict, pd.DataFrame]:
        """(mean test metrics with their trivial baseline's as ``baseline_<metric>``, one row per image);
        writes the task's figures into `figures`."""
        raise NotImplementedError
