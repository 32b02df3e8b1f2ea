"""train: Adam, early stopping on validation loss, best checkpoint kept, resumable.

The loop is a few named steps (`train_epoch`, `validate`) in the manner of Lightning's
build-your-own-trainer example. Every epoch writes a resume checkpoint (a plain dict: weights,
optimiser, counters, history; never a pickled object), so a job killed by SLURM or a time limit
continues from its last finished epoch when it is resubmitted. Random streams are re-seeded from
(seed, epoch) at each epoch, so a resumed run follows the same path as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from snakescope import __version__
from snakescope.config import TrainConfig
from snakescope.data import TrainBatches, load_items, read_samples
from snakescope.io import atomic_path, read_json, write_json, write_table
from snakescope.models import ModelSpec, build_model, load_pretrained
from snakescope.regression import fit_target_normalisation, input_residual, with_input_residual
from snakescope.runtime import autocast_dtype, seed_everything, select_device

log = logging.getLogger(__name__)


def make_loss(task: str, name: str) -> nn.Module:
    """Loss taking (logits, label): label (N,) int for classification, (N, 1, ...) int for segmentation,
    (N, C, ...) float for regression."""
    from monai.losses import DiceCELoss, DiceLoss, FocalLoss

    if task == "classification":
        if name == "focal":
            focal = FocalLoss(to_onehot_y=True, use_softmax=True)
            return _Lambda(lambda logits, label: focal(logits, label[:, None]))
        return _Lambda(lambda logits, label: nn.functional.cross_entropy(logits, label))
    if task == "regression":
        return nn.L1Loss() if name == "l1" else nn.MSELoss()
    losses = {
        "dice": DiceLoss(to_onehot_y=True, softmax=True),
        "dice_cross_entropy": DiceCELoss(to_onehot_y=True, softmax=True),
        "focal": FocalLoss(to_onehot_y=True, use_softmax=True),
    }
    if name in losses:
        return losses[name]
    return _Lambda(lambda logits, label: nn.functional.cross_entropy(logits, label[:, 0]))


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, logits, label):
        return self.fn(logits, label)


def predict_logits(model: nn.Module, image: torch.Tensor, plan: dict, batch_size: int = 4) -> torch.Tensor:
    """Logits for a batch (N, C, *spatial). Dense tasks use a sliding window of the training patch size
    with Gaussian blending, so large images are predicted at full resolution rather than resized."""
    if plan["task"] == "classification" or not plan.get("patch_size"):
        return model(image)
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(
        image, roi_size=plan["patch_size"], sw_batch_size=batch_size, predictor=model, overlap=0.25,
        mode="gaussian", padding_mode="reflect",
    )


def patches_per_image(items: list[dict], plan: dict, cap: int = 16) -> int:
    """How many random patches to draw from each image per epoch: enough to cover the median image
    once (a 512x512 image with 128x128 patches gives 16), so an epoch of a few large images is not a
    handful of steps. 1 for classification, whose images are used whole."""
    if not plan.get("patch_size"):
        return 1
    return patches_for_area(np.median([np.prod(it["image"].shape[1:]) for it in items]), plan["patch_size"], cap)


def patches_for_area(image_area: float, patch_size, cap: int = 16) -> int:
    """Random patches per image and epoch for an image of `image_area` pixels (see patches_per_image)."""
    return int(min(cap, max(1, round(image_area / np.prod(patch_size)))))


def _config_hash(cfg: TrainConfig, split: dict, plan: dict) -> str:
    payload = json.dumps({"cfg": cfg.__dict__, "split": split, "plan": plan}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def resume_run(work_dir: Path, run_hash: str, model: nn.Module, optimizer) -> tuple[dict, dict | None]:
    """The training state and best weights from `work_dir`'s checkpoints when they belong to this run
    (same `run_hash`), loading the model and optimiser in place; a fresh state otherwise."""
    state = {"epoch": 0, "best_val_loss": float("inf"), "best_epoch": 0, "stale_epochs": 0, "history": []}
    checkpoint_path = work_dir / "checkpoint_last.pt"
    if not checkpoint_path.is_file():
        return state, None
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if checkpoint.get("run_hash") != run_hash:
        log.warning("ignoring %s: it belongs to other settings or data", checkpoint_path)
        return state, None
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    state = checkpoint["state"]
    log.info("resuming from %s after epoch %d", checkpoint_path, state["epoch"])
    best_path = work_dir / "checkpoint_best.pt"
    best_state = torch.load(best_path, map_location="cpu", weights_only=True) if state["best_epoch"] and best_path.is_file() else None
    return state, best_state


def finish_epoch(
    work_dir: Path,
    run_hash: str,
    model: nn.Module,
    optimizer,
    state: dict,
    row: dict,
    monitor: str = "val_loss",
    higher_is_better: bool = False,
) -> dict | None:
    """Record one epoch's `row` (needs "epoch" and `monitor`; gets "improved") in `state`, keep the
    weights when the monitored value improved (its best is `state["best_<monitor>"]`), and write the
    resume checkpoint.

    Returns:
        the new best weights (on the CPU), or None when the epoch did not improve.
    """
    best_state = None
    best, value = state.get(f"best_{monitor}"), row[monitor]
    row["improved"] = best is None or (value > best if higher_is_better else value < best)
    if row["improved"]:
        state.update({f"best_{monitor}": row[monitor], "best_epoch": row["epoch"], "stale_epochs": 0})
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        with atomic_path(work_dir / "checkpoint_best.pt") as tmp:
            torch.save(best_state, tmp)
    else:
        state["stale_epochs"] += 1
    state["history"].append(row)
    state["epoch"] = row["epoch"]
    with atomic_path(work_dir / "checkpoint_last.pt") as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                    "run_hash": run_hash}, tmp)
    return best_state


def fit(
    arrays_npz: str,
    samples_tsv: str,
    split_json: str,
    plan_json: str,
    fingerprint_json: str,
    cfg: TrainConfig,
    model_out: str,
    history_out: str,
    card_out: str,
    work_dir: str | None = None,
    threads: int = 1,
) -> dict:
    """Train one model and write the best weights, the per-epoch history and a model card.

    Args:
        work_dir: where the resume checkpoint and TensorBoard logs live (default: beside `model_out`).
            It is deliberately not a declared Snakemake output, so a failed job's partial progress
            survives for the retry.
    Returns:
        the model card dict.
    """
    from snakescope.instances import fit_maskrcnn, is_detector

    if cfg.task == "instance_segmentation" and is_detector(cfg.model):  # learns from boxes + masks per image
        return fit_maskrcnn(arrays_npz, samples_tsv, split_json, plan_json, fingerprint_json, cfg, model_out,
                            history_out, card_out, work_dir, threads)
    torch.set_num_threads(max(1, threads))
    device = select_device(cfg.device)
    seed_everything(cfg.seed, device)
    plan = read_json(plan_json)
    fingerprint = read_json(fingerprint_json)
    split = read_json(split_json)
    if cfg.task == "regression":
        # Target scaling from the training split only; it travels in the saved plan, so predict and
        # uncertainty map outputs back to the target's units (snakescope.regression).
        plan = {**plan, "target_normalisation": fit_target_normalisation(arrays_npz, split["train"],
                                                                         plan["spatial_dims"])}
        # None unless input ~ target units (and the config allows it)
        plan["input_residual"] = input_residual(plan, fingerprint) if cfg.residual_learning else None
    samples = read_samples(samples_tsv)
    work_dir = Path(work_dir or Path(model_out).parent)

    task = cfg.task
    out_channels = len(fingerprint["classes"]) if task == "classification" else (
        fingerprint["num_classes"] if task != "regression" else fingerprint.get("target_channels", 1))
    image_size = fingerprint.get("resized_to") or plan.get("patch_size")
    spec = ModelSpec(cfg.model, task, fingerprint["channels"], out_channels, fingerprint["spatial_dims"], cfg.dropout,
                     image_size=tuple(image_size) if image_size else None)
    model = build_model(spec)
    if cfg.pretrained_weights:
        load_pretrained(model, cfg.pretrained_weights)
    model = with_input_residual(model, plan)  # regression: learn the correction to the input
    model.to(device)
    if device.type == "cuda" and spec.spatial_dims == 2:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    loss_fn = make_loss(task, cfg.loss)
    amp_dtype = autocast_dtype(device)

    train_items = load_items(arrays_npz, samples, split["train"], plan)
    val_items = load_items(arrays_npz, samples, split["val"], plan)
    if task == "instance_segmentation":  # U-Net + watershed: learn background / interior / boundary
        from snakescope.instances import to_class_items

        train_items, val_items = to_class_items(train_items), to_class_items(val_items)
    loader_generator = torch.Generator()
    # The training set is held as tensors (on the GPU when it fits); flips and quarter turns run there
    # in batch, other augmentations per image in `threads`-sized DataLoader workers (snakescope.data).
    loader = TrainBatches(train_items * patches_per_image(train_items, plan), plan, cfg.batch_size, device,
                          threads=threads, generator=loader_generator)

    run_hash = _config_hash(cfg, split, plan)
    state, best_state = resume_run(work_dir, run_hash, model, optimizer)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(work_dir / "tensorboard"))
    log.info("training %s on %s: %d train / %d val images, %d parameters", cfg.model, device,
             len(train_items), len(val_items), sum(p.numel() for p in model.parameters()))

    while state["epoch"] < cfg.epochs and state["stale_epochs"] < cfg.patience:
        epoch = state["epoch"] + 1
        epoch_seed = cfg.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)
        loader_generator.manual_seed(epoch_seed)
        started = time.perf_counter()
        train_loss, n_images = train_epoch(model, loader, optimizer, loss_fn, device, amp_dtype, cfg.max_batches_per_epoch)
        val_loss, val_score = validate(model, val_items, plan, loss_fn, device, amp_dtype)
        seconds = time.perf_counter() - started
        score_name = "val_accuracy" if task == "classification" else ("val_dice" if task != "regression" else "val_mae")
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, score_name: val_score,
               "seconds": seconds, "images_per_second": n_images / max(seconds, 1e-9)}
        best_state = finish_epoch(work_dir, run_hash, model, optimizer, state, row) or best_state
        for key in ("train_loss", "val_loss", score_name, "images_per_second"):
            writer.add_scalar(key, row[key], epoch)
        log.info("epoch %d/%d train_loss %.4f val_loss %.4f %s %.4f (%.1fs, %.1f img/s)%s", epoch, cfg.epochs,
                 train_loss, val_loss, score_name, val_score, seconds, row["images_per_second"],
                 " *best*" if row["improved"] else "")
    writer.close()
    if state["stale_epochs"] >= cfg.patience:
        log.info("early stop: no lower validation loss for %d epochs; best epoch %d", cfg.patience, state["best_epoch"])

    payload = {
        "model": best_state if best_state is not None else model.state_dict(),
        "spec": spec.to_dict(),
        "plan": plan,
        "classes": fingerprint.get("classes", []),
        "mask_values": fingerprint.get("mask_values", []),
        "best_epoch": state["best_epoch"],
    }
    with atomic_path(model_out) as tmp:
        torch.save(payload, tmp)
    write_table(pd.DataFrame(state["history"]), history_out)
    card = {
        "model": spec.to_dict(),
        "input": {"axes": "CYX" if spec.spatial_dims == 2 else "CZYX", "dtype": "float32",
                  "channels": spec.in_channels, "normalisation": plan["normalisation"],
                  "size": fingerprint.get("resized_to") or plan.get("patch_size")},
        "output": {"classes": fingerprint.get("classes") or fingerprint.get("mask_values"),
                   "kind": "logits" if task != "regression" else "target scaled by target_normalisation",
                   "target_normalisation": plan.get("target_normalisation"),
                   "input_residual": plan.get("input_residual")},
        "training": {"seed": cfg.seed, "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
                     "best_val_loss": state["best_val_loss"], "early_stopped": state["stale_epochs"] >= cfg.patience,
                     "train_seconds": float(sum(r["seconds"] for r in state["history"])),
                     "seconds_per_epoch": float(np.mean([r["seconds"] for r in state["history"]] or [0])),
                     "settings": cfg.__dict__, "device": str(device),
                     "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                     "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None},
        "versions": {"snakescope": __version__, "torch": torch.__version__},
        "dataset": {"name": fingerprint["dataset"], "n_train": len(train_items), "n_val": len(val_items)},
    }
    write_json(card, card_out)
    return card


def train_epoch(model, loader, optimizer, loss_fn, device, amp_dtype, max_batches=None) -> tuple[float, int]:
    """One pass over the training loader; returns (mean loss, images seen)."""
    model.train()
    total, n_images = torch.zeros((), dtype=torch.float64, device=device), 0
    for batch_index, batch in enumerate(loader):
        if max_batches and batch_index >= max_batches:
            break
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        if device.type == "cuda" and image.ndim == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(image)
        loss = loss_fn(logits.float(), label)
        loss.backward()
        optimizer.step()
        total += loss.detach().double() * image.shape[0]  # summed on the device: no sync per step
        n_images += image.shape[0]
    return total.item() / max(n_images, 1), n_images


@torch.no_grad()
def validate(model, items, plan, loss_fn, device, amp_dtype) -> tuple[float, float]:
    """Validation loss and score (accuracy; mean foreground Dice; MAE for regression) on whole images."""
    model.eval()
    losses, scores = [], []
    task = plan["task"]
    batch_size = 32 if task == "classification" else 1  # dense images may differ in size
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        image = torch.as_tensor(np.stack([it["image"] for it in chunk])).to(device)
        label = torch.as_tensor(np.stack([it["label"] for it in chunk])).to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = predict_logits(model, image, plan)
        logits = logits.float()
        losses.append(loss_fn(logits, label).item() * len(chunk))
        if task == "classification":
            scores.append((logits.argmax(1) == label).float().sum().item())
        elif task == "regression":
            scores.append((logits - label).abs().mean().item() * len(chunk))
        else:
            scores.append(_mean_foreground_dice(logits.argmax(1), label[:, 0], logits.shape[1]) * len(chunk))
    return sum(losses) / len(items), sum(scores) / len(items)


def _mean_foreground_dice(pred: torch.Tensor, truth: torch.Tensor, n_classes: int) -> float:
    dices = []
    for c in range(1, n_classes):
        p, t = pred == c, truth == c
        denominator = p.sum() + t.sum()
        if denominator > 0:
            dices.append((2 * (p & t).sum() / denominator).item())
    return float(np.mean(dices)) if dices else 1.0


def load_trained(model_pt: str, device: torch.device) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by `fit` (weights_only load) and return it with its saved metadata."""
    payload = torch.load(model_pt, map_location="cpu", weights_only=True)
    model = with_input_residual(build_model(ModelSpec(**payload["spec"])), payload["plan"])
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return model, payload
