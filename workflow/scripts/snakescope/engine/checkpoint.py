"""checkpoint: resume state and best weights of a training run, and the saved model.

Every epoch writes a resume checkpoint (a plain dict: weights, optimiser, counters, history; never a
pickled object), so a job killed by SLURM or a time limit continues from its last finished epoch when it
is resubmitted. A checkpoint carries the hash of the run's settings, split and plan, so a changed run
starts afresh instead of resuming someone else's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from snakescope.io import atomic_path

log = logging.getLogger(__name__)


# Settings that do not change what a run computes: a run resumes whatever the number of processes (the
# global batch, and so each step, is the same).
# When to stop does not change what an epoch does: a run given more epochs, patience or time continues.
# Temperature scaling is fitted after the last epoch.
NOT_HASHED = ("processes", "epochs", "patience", "train_seconds", "temperature_scaling")


def run_hash(cfg, split: dict, plan: dict) -> str:
    """16 hex digits over the training settings (a dataclass), the split and the plan."""
    settings = {k: v for k, v in cfg.__dict__.items() if k not in NOT_HASHED}
    payload = json.dumps({"cfg": settings, "split": split, "plan": plan}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def fresh_state() -> dict:
    return {"epoch": 0, "best_val_loss": float("inf"), "best_epoch": 0, "stale_epochs": 0, "history": []}


def resume_run(work_dir: Path, run_hash: str, model: nn.Module, optimizer,
               max_epochs: int | None = None) -> tuple[dict, dict | None]:
    """The training state and best weights from `work_dir`'s checkpoints when they belong to this run
    (same `run_hash`, at most `max_epochs` trained), loading the model and optimiser in place; a fresh
    state otherwise."""
    checkpoint_path = work_dir / "checkpoint_last.pt"
    if not checkpoint_path.is_file():
        return fresh_state(), None
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if checkpoint.get("run_hash") != run_hash:
        log.warning("ignoring %s: it belongs to other settings or data", checkpoint_path)
        return fresh_state(), None
    if max_epochs is not None and checkpoint["state"]["epoch"] > max_epochs:
        log.warning("ignoring %s: it trained %d epochs, more than epochs = %d", checkpoint_path,
                    checkpoint["state"]["epoch"], max_epochs)
        return fresh_state(), None
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
    save: bool = True,
) -> dict | None:
    """Record one epoch's `row` (needs "epoch" and `monitor`; gets "improved") in `state`, keep the
    weights when the monitored value improved (its best is `state["best_<monitor>"]`), and write the
    resume checkpoint. With `save` False (a data-parallel process other than the first) only `state` is
    kept up to date.

    Returns:
        the new best weights (on the CPU), or None when the epoch did not improve or nothing is saved.
    """
    best_state = None
    best, value = state.get(f"best_{monitor}"), row[monitor]
    row["improved"] = best is None or (value > best if higher_is_better else value < best)
    if row["improved"]:
        state.update({f"best_{monitor}": row[monitor], "best_epoch": row["epoch"], "stale_epochs": 0})
    else:
        state["stale_epochs"] += 1
    state["history"].append(row)
    state["epoch"] = row["epoch"]
    if not save:
        return None
    if row["improved"]:
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        with atomic_path(work_dir / "checkpoint_best.pt") as tmp:
            torch.save(best_state, tmp)
    with atomic_path(work_dir / "checkpoint_last.pt") as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                    "run_hash": run_hash}, tmp)
    return best_state


def save_model(payload: dict, path: str | Path) -> None:
    """Write a trained model (weights, spec, plan and metadata; plain types only) atomically."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_model(path: str | Path) -> dict:
    """A saved model's payload, weights on the CPU; loaded with weights_only, so a file cannot run code."""
    return torch.load(path, map_location="cpu", weights_only=True)
