"""runtime: device choice and seeding, shared by every torch rule."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def select_device(requested: str = "auto") -> torch.device:
    """"auto" takes CUDA when present, else the CPU; "cuda" without a GPU is an error, not a silent fallback."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA GPU is visible. Use device: auto or cpu.")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    """Seed Python, NumPy and torch. On the CPU (or with no device given), deterministic algorithms
    are switched on, so a run repeats exactly for the same seed.

    On a GPU they are not: a few CUDA kernels (segmentation cross-entropy among them) have no
    deterministic version anyway, and the deterministic ones cost 2-15 % of training throughput
    (docs/performance.md). GPU results therefore agree within a small tolerance, not bit for bit.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    deterministic = device is None or device.type == "cpu"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it; none on the CPU, where it is slower and changes results."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
