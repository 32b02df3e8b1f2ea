"""trainer: one training loop for every task and model, with hooks where they differ.

The loop is a few named steps (`step_loss`, `validate`, `finish_epoch`) in the manner of Lightning's
build-your-own-trainer example; a variant overrides a hook, as nnU-Net's trainer variants do (the
Mask R-CNN detector of snakescope.tasks.instances.detector overrides how a network is built, what a
step's loss is and how it is validated). The task (snakescope.tasks) supplies what differs between
tasks: its loss, its validation score, how it reads labels and prepares the plan.

Adam, early stopping on the monitored validation value, the best weights kept, resumable: random
streams are re-seeded from (seed, epoch) at each epoch, so a resumed run follows the same path as an
uninterrupted one.

Data parallel (snakescope.engine.distributed): started as one of several processes, the trainer joins
their group, wraps the network in DistributedDataParallel (BatchNorm synchronised across GPUs; on CPUs
each process normalises its own slice, as PyTorch's SyncBatchNorm needs GPUs), trains on its slice of each
global batch, validates on its share of the validation images, and sums losses and scores over the
processes, so every process takes the same early-stopping decisions. The first process alone writes the
checkpoints, history, TensorBoard logs, model and card; every process resumes from the same checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from snakescope import __version__
from snakescope.engine import checkpoint, distributed
from snakescope.engine.data import TrainBatches
from snakescope.engine.inference import predict_logits
from snakescope.engine.items import StoredItems, choose_data_path, image_shapes, load_items
from snakescope.engine.models import ModelSpec, build_model
from snakescope.engine.runtime import autocast_dtype, seed_everything, select_device
from snakescope.io import read_json, read_samples, write_json, write_table
from snakescope.logs import PROGRESS

log = logging.getLogger(__name__)

# temperature_scaling: auto trusts a validation ECE from this many images (ten bins; fewer is noise)
CALIBRATION_MIN_IMAGES = 30

VALIDATION_BATCH = 32  # images per validation pass when they are used whole (same size)


def patches_per_image(items, plan: dict, cap: int = 16) -> int:
    """How many random patches to draw from each image per epoch: enough to cover the median image
    once (a 512x512 image with 128x128 patches gives 16), so an epoch of a few large images is not a
    handful of steps. 1 when the images are used whole (no patch size)."""
    if not plan.get("patch_size"):
        return 1
    return patches_for_area(np.median([np.prod(shape[1:]) for shape in image_shapes(items)]), plan["patch_size"], cap)


def patches_for_area(image_area: float, patch_size, cap: int = 16) -> int:
    """Random patches per image and epoch for an image of `image_area` pixels (see patches_per_image)."""
    return int(min(cap, max(1, round(image_area / np.prod(patch_size)))))


@dataclass(frozen=True)
class TrainingData:
    """The files one training run reads (outputs of convert, split and augment)."""

    arrays_store: str
    samples_tsv: str
    split_json: str
    plan_json: str
    fingerprint_json: str


class Trainer:
    """Trains one model of one task and writes the best weights, the per-epoch history and a model card.

    Args:
        task: the task (snakescope.tasks.base.Task) supplying the loss, validation score and labels.
        cfg: the training settings (snakescope.config.TrainConfig).
        threads: CPU threads of the job (torch threads, DataLoader workers).
    """

    monitor = "val_loss"  # the history column that picks the best epoch and stops early
    higher_is_better = False
    channels_last = True  # 2D networks on a GPU in channels-last memory order (faster convolutions)
    find_unused_parameters = False  # DistributedDataParallel: every parameter gets a gradient each step
    warmup_steps = 0  # the first epoch's first steps raise the learning rate linearly to its value
    group = distributed.SINGLE  # this process's place among the training processes (set by `fit`)

    def __init__(self, task, cfg, threads: int = 1):
        self.task = task
        self.cfg = cfg
        self.threads = threads

    # -- hooks: what a variant may override ------------------------------------------------------------

    def build_network(self) -> tuple[ModelSpec, torch.nn.Module]:
        """The network with fresh (or local pretrained) weights and the spec that rebuilds it."""
        fingerprint, plan, cfg = self.fingerprint, self.plan, self.cfg
        image_size = fingerprint.get("resized_to") or plan.get("patch_size")
        spec = ModelSpec(cfg.model, cfg.task, fingerprint["channels"], self.task.out_channels(fingerprint),
                         fingerprint["spatial_dims"], cfg.dropout,
                         image_size=tuple(image_size) if image_size else None)
        model = build_model(spec)
        if cfg.pretrained_weights:
            from snakescope.engine.networks import load_pretrained

            load_pretrained(model, cfg.pretrained_weights)
        return spec, self.task.wrap_network(model, plan)

    def prepare_items(self, items: list[dict]) -> list[dict]:
        """Training and validation items as the network learns them (the task's, by default)."""
        return self.task.training_items(items)

    def step_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        """The loss of one training batch (before backward) and the number of images in it."""
        device = self.device
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        if device.type == "cuda" and image.ndim == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            logits = self.train_model(image)
        return self.loss_fn(logits.float(), label), image.shape[0]

    def clip_gradients(self) -> None:
        """Called between backward and the optimiser step; nothing by default."""

    @torch.no_grad()
    def validate(self) -> dict:
        """{"val_loss": ..., <task score>: ...} on the whole validation images."""
        model, plan, device, amp_dtype = self.model, self.plan, self.device, self.amp_dtype
        items = self.val_items[self.group.rank::self.group.world]
        model.eval()
        losses, scores = [], []
        batch_size = 1 if self.task.dense else VALIDATION_BATCH  # dense images may differ in size
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            image = torch.as_tensor(np.stack([it["image"] for it in chunk])).to(device)
            label = torch.as_tensor(np.stack([it["label"] for it in chunk])).to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = predict_logits(model, image, plan)
            logits = logits.float()
            losses.append(self.loss_fn(logits, label).item() * len(chunk))
            scores.append(self.task.validation_score(logits, label))
        loss, score, n = distributed.sum_over_processes([sum(losses), sum(scores), len(items)], self.group)
        return {"val_loss": loss / n, self.task.score_name: score / n}

    def payload_extras(self) -> dict:
        """Entries added to the saved model beside weights, spec and plan."""
        return {}

    def card_sections(self) -> dict:
        """The model card's "model", "input" and "output" sections."""
        spec, plan, fingerprint = self.spec, self.plan, self.fingerprint
        return {
            "model": spec.to_dict(),
            "input": {"axes": "CYX" if spec.spatial_dims == 2 else "CZYX", "dtype": "float32",
                      "channels": spec.in_channels, "normalisation": plan["normalisation"],
                      "size": fingerprint.get("resized_to") or plan.get("patch_size")},
            "output": {"classes": fingerprint.get("classes") or fingerprint.get("mask_values"),
                       "kind": self.task.output_kind,
                       "target_normalisation": plan.get("target_normalisation"),
                       "input_residual": plan.get("input_residual")},
        }

    # -- the loop --------------------------------------------------------------------------------------

    def fit(self, data: TrainingData, model_out: str, history_out: str, card_out: str,
            work_dir: str | None = None) -> dict:
        """Train, then write the best weights (`model_out`), `history_out` and the model card.

        Args:
            work_dir: where the resume checkpoint and TensorBoard logs live (default: beside `model_out`).
                It is deliberately not a declared Snakemake output, so a failed job's partial progress
                survives for the retry.
        Returns:
            the model card dict.
        """
        cfg = self.cfg
        self.group = group = distributed.from_environment() or distributed.SINGLE
        torch.set_num_threads(max(1, self.threads // group.world))
        device = select_device(cfg.device)
        if device.type == "cuda" and group.world > 1:
            device = torch.device("cuda", group.local_rank)
        self.device = device
        if group.world > 1:
            distributed.setup(group, cuda=device.type == "cuda")
        try:
            return self._fit(data, model_out, history_out, card_out, work_dir)
        finally:
            distributed.teardown()

    def _fit(self, data: TrainingData, model_out: str, history_out: str, card_out: str, work_dir: str | None):
        cfg, group, device = self.cfg, self.group, self.device
        seed_everything(cfg.seed, device)
        self.fingerprint = read_json(data.fingerprint_json)
        split = read_json(data.split_json)
        self.plan = self.task.prepare_plan(read_json(data.plan_json), self.fingerprint, data.arrays_store, split, cfg)
        samples = read_samples(data.samples_tsv)
        work_dir = Path(work_dir or Path(model_out).parent)

        self.spec, model = self.build_network()
        model.to(device)
        if self.channels_last and device.type == "cuda" and self.spec.spatial_dims == 2:
            model.to(memory_format=torch.channels_last)
        if group.world > 1 and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = self.train_model = model
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
        self.loss_fn = self.task.loss(cfg.loss)
        self.amp_dtype = autocast_dtype(device)

        read_label = self.task.label_reader(samples, self.plan)
        self.data_path = choose_data_path(self.plan)

        def items_of(ids: list[str]):
            if self.data_path[0] == "stream":
                return StoredItems(data.arrays_store, ids, self.plan, read_label, self.prepare_items)
            return self.prepare_items(load_items(data.arrays_store, ids, self.plan, read_label))

        train_items, self.val_items = items_of(split["train"]), items_of(split["val"])
        generator = torch.Generator()
        # The training set is held as tensors (on the GPU when it fits); flips and quarter turns run there
        # in batch, other augmentations per image in `threads`-sized DataLoader workers (engine.data).
        loader = TrainBatches(train_items * patches_per_image(train_items, self.plan), self.plan, cfg.batch_size,
                              device, threads=self.threads, generator=generator, shard=(group.rank, group.world))

        hash_ = checkpoint.run_hash(cfg, split, self.plan)
        state, best_state = checkpoint.resume_run(work_dir, hash_, model, optimizer, max_epochs=cfg.epochs)
        if group.world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters)

        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(work_dir / "tensorboard")) if group.is_main else None
        log.info("training %s on %s: %d train images (%d samples per epoch) / %d val, %d parameters", cfg.model,
                 device, len(train_items), loader.n, len(self.val_items), sum(p.numel() for p in model.parameters()))
        log.info("training data %s: %s", *self.data_path, extra=PROGRESS)

        out_of_time = False
        steps_per_epoch = min(len(loader), cfg.max_batches_per_epoch or len(loader))
        while state["epoch"] < cfg.epochs and state["stale_epochs"] < cfg.patience and not out_of_time:
            steps = self.steps_in_budget(state["history"], steps_per_epoch)
            out_of_time = steps is not None
            if steps == 0:
                break
            if steps:
                log.info("time budget: a last epoch of %d of %d steps fits", steps, steps_per_epoch, extra=PROGRESS)
            epoch = state["epoch"] + 1
            epoch_seed = cfg.seed * 100_003 + epoch
            # dropout draws its own masks in every process; the batches' generator is the same in all
            torch.manual_seed(epoch_seed + 7_919 * group.rank)
            generator.manual_seed(epoch_seed)
            started = time.perf_counter()
            train_loss, n_images = self.train_epoch(loader, optimizer, warmup=self.warmup_steps if epoch == 1 else 0,
                                                    anneal=self.annealing_span(state["history"], last=out_of_time),
                                                    max_steps=steps)
            validating = time.perf_counter()
            row = {"epoch": epoch, "train_loss": train_loss, **self.validate()}
            finished = time.perf_counter()
            seconds = finished - started
            row.update({"seconds": seconds, "validation_seconds": finished - validating,
                        "images_per_second": n_images / max(seconds, 1e-9)})
            best_state = checkpoint.finish_epoch(work_dir, hash_, model, optimizer, state, row, self.monitor,
                                                 self.higher_is_better, save=group.is_main) or best_state
            values = {k: v for k, v in row.items() if k not in ("epoch", "seconds", "validation_seconds", "improved")}
            for key, value in values.items():
                if writer:
                    writer.add_scalar(key, value, epoch)
            log.info("epoch %d/%d %s (%.1fs)%s", epoch, cfg.epochs,
                     " ".join(f"{k} {v:.4f}" for k, v in values.items()), seconds,
                     " *best*" if row["improved"] else "", extra=PROGRESS)
        if writer:
            writer.close()
        if out_of_time:
            log.info("time budget: stopped after epoch %d, %.0f s of %.0f s; best epoch %d", state["epoch"],
                     _seconds_spent(state["history"]), cfg.train_seconds, state["best_epoch"], extra=PROGRESS)
        elif state["stale_epochs"] >= cfg.patience:
            log.info("early stop: no better %s for %d epochs; best epoch %d", self.monitor, cfg.patience,
                     state["best_epoch"])
        stopped_by = ("time budget" if out_of_time else "early stopping"
                      if state["stale_epochs"] >= cfg.patience else "epochs")
        if not group.is_main:
            return None
        payload = {
            "model": best_state if best_state is not None else model.state_dict(),
            "spec": self.spec.to_dict(),
            "plan": self.plan,
            "classes": self.fingerprint.get("classes", []),
            "mask_values": self.fingerprint.get("mask_values", []),
            "input_size": self.fingerprint.get("resized_to"),  # images are resized to it (snakescope.apply)
            "best_epoch": state["best_epoch"],
            **self.payload_extras(),
        }
        calibration = self.fit_temperature(payload)
        if calibration:
            payload["temperature"] = calibration["temperature"]
        checkpoint.save_model(payload, model_out)
        write_table(pd.DataFrame(state["history"]), history_out)
        card = self._card(state, device, len(train_items), len(self.val_items), stopped_by)
        if calibration:
            card["calibration"] = calibration
        write_json(card, card_out)
        return card

    def fit_temperature(self, payload: dict) -> dict:
        """Temperature scaling of the best weights, fitted on the validation set (`cfg.temperature_scaling`;
        see config/config.yaml): {"temperature": the T that `load_trained` applies (1 = none), what was
        fitted and measured}; {} where it is not applied: no class probabilities, no validation set, or
        segmentation under auto (its binary masks are cut from the unscaled probability maps; the
        uncertainty rule still measures what scaling would do)."""
        from snakescope.uncertainty_measures import fit_temperature, reliability_bins, softmax

        mode = self.cfg.temperature_scaling
        if mode is False or not self.task.calibrated or not self.val_items or (mode == "auto" and self.task.dense):
            return {}
        self.model.load_state_dict(payload["model"])
        self.model.eval()
        logits, labels = self.task.calibration_logits(self.model, payload, self.val_items, self.device)
        fitted = fit_temperature(logits, labels)
        before, after = (reliability_bins(softmax(logits, t), labels)["ece"] for t in (1.0, fitted))
        enough = len(labels) >= CALIBRATION_MIN_IMAGES
        applied = mode is True or (enough and after < before)
        reason = ("temperature_scaling: true" if mode is True else f"auto: validation ECE {before:.3f} -> {after:.3f}"
                  if enough else f"auto: {len(labels)} validation images, fewer than {CALIBRATION_MIN_IMAGES}")
        log.info("temperature scaling: T = %.2f fitted on %d validation %s, ECE %.3f -> %.3f; %s (%s)", fitted,
                 len(labels), "pixels" if self.task.dense else "images", before, after,
                 "applied" if applied else "not applied", reason, extra=PROGRESS)
        return {"temperature": fitted if applied else 1.0, "temperature_fitted": fitted, "applied": applied,
                "reason": reason, "val_ece": before, "val_ece_temperature_scaled": after}

    def steps_in_budget(self, history: list[dict], steps_per_epoch: int) -> int | None:
        """None while one more epoch, as slow as the slowest so far, fits in `cfg.train_seconds` (or
        there is no budget); else the training steps that fit before the budget's end with a validation
        as slow as the slowest, for a last, shorter epoch that spends the budget instead of leaving up to
        an epoch of it unused; 0 when under a tenth of an epoch fits. The epochs of an earlier, killed
        attempt count; every process gets the same answer."""
        if not self.cfg.train_seconds or not history:
            return None
        spent, budget = _seconds_spent(history), self.cfg.train_seconds
        (over,) = distributed.sum_over_processes([float(spent + max(row["seconds"] for row in history) > budget)],
                                                 self.group)
        if not over:
            return None
        validation = max(row.get("validation_seconds", 0.0) for row in history)
        step = max(row["seconds"] - row.get("validation_seconds", 0.0) for row in history) / steps_per_epoch
        (steps,) = distributed.sum_over_processes([(budget - spent - validation) / max(step, 1e-9)], self.group)
        steps = int(steps / self.group.world)
        return steps if steps >= max(1, steps_per_epoch // 10) else 0

    def annealing_span(self, history: list[dict], last: bool = False) -> tuple[float, float] | None:
        """Under a time budget (`cfg.train_seconds`) the learning rate falls along a half cosine to zero
        at the end of training, the planned epochs or the budget, whichever comes first: a run the budget
        stops ends on small steps instead of at its full rate. Returns the training's progress (0 to 1)
        at this epoch's start and end, the time share estimated from the slowest epoch so far as in
        `steps_in_budget` (a killed attempt's epochs count), the end 1 for the `last` epoch; None
        without a budget (a constant rate: early stopping ends such a run, so its end is not known in
        advance)."""
        cfg = self.cfg
        if not cfg.train_seconds:
            return None
        done = len(history)
        start, end = done / cfg.epochs, (done + 1) / cfg.epochs
        if history:
            spent, slowest = _seconds_spent(history), max(row["seconds"] for row in history)
            start, end = max(start, spent / cfg.train_seconds), max(end, (spent + slowest) / cfg.train_seconds)
        if last:
            end = 1.0
        if self.group.world > 1:  # the processes' clocks differ slightly; their weights must not
            start, end = (value / self.group.world for value in distributed.sum_over_processes([start, end], self.group))
        return min(start, 1.0), min(end, 1.0)

    def train_epoch(self, loader, optimizer, warmup: int = 0, anneal: tuple[float, float] | None = None,
                    max_steps: int | None = None) -> tuple[float, int]:
        """One pass over the training batches, at most `max_steps` (and `cfg.max_batches_per_epoch`) of
        them; returns (mean loss, images seen). The first `warmup` steps take the learning rate times
        (step + 1) / (warmup + 1); with `anneal` (progress at the epoch's start and end,
        `annealing_span`) each step takes it times (1 + cos(pi * progress)) / 2."""
        self.model.train()
        total, n_images = torch.zeros((), dtype=torch.float64, device=self.device), 0
        steps = min(len(loader), self.cfg.max_batches_per_epoch or len(loader), max_steps or len(loader))
        for batch_index, batch in enumerate(loader):
            if batch_index >= steps:
                break
            loss, n = self.step_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.clip_gradients()
            if warmup or anneal:
                rate = self.cfg.learning_rate * min(1.0, (batch_index + 1) / (warmup + 1))
                if anneal:
                    progress = anneal[0] + (anneal[1] - anneal[0]) * batch_index / steps
                    rate *= (1 + math.cos(math.pi * progress)) / 2
                _set_learning_rate(optimizer, rate)
            optimizer.step()
            total += loss.detach().double() * n  # summed on the device: no sync per step
            n_images += n
        if warmup or anneal:  # an epoch shorter than the warm-up leaves the next at the full rate
            _set_learning_rate(optimizer, self.cfg.learning_rate)
        total, n_images = distributed.sum_over_processes([total.item(), n_images], self.group)
        return total / max(n_images, 1), int(n_images)

    def _card(self, state: dict, device: torch.device, n_train: int, n_val: int, stopped_by: str) -> dict:
        cfg, history = self.cfg, state["history"]
        cuda = device.type == "cuda"
        return {
            **self.card_sections(),
            "training": {"seed": cfg.seed, "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
                         f"best_{self.monitor}": state.get(f"best_{self.monitor}"),
                         "early_stopped": state["stale_epochs"] >= cfg.patience,
                         "stopped_by": stopped_by, "time_limit_seconds": cfg.train_seconds,
                         "train_seconds": _seconds_spent(history),
                         "seconds_per_epoch": float(np.mean([r["seconds"] for r in history] or [0])),
                         "settings": cfg.__dict__, "device": str(device),
                         "data_path": self.data_path[0], "data_path_reason": self.data_path[1],
                         "gpu": torch.cuda.get_device_name() if cuda else None,
                         "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None},
            "versions": {"snakescope": __version__, "torch": torch.__version__},
            "dataset": {"name": self.fingerprint["dataset"], "n_train": n_train, "n_val": n_val},
            "processes": self.group.world,
        }


def _set_learning_rate(optimizer, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def _seconds_spent(history: list[dict]) -> float:
    """Training time of the epochs in `history` (training and validation, not the set-up)."""
    return float(sum(row["seconds"] for row in history))
