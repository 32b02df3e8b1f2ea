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


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; with `deterministic`, CPU results repeat exactly for the same seed.

    On GPU, deterministic algorithms are requested with warn_only: a few CUDA kernels have no
    deterministic version, and refusing to train would help nobody. GPU results then agree within a
    small tolerance rather than bit for bit.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it; none on the CPU, where it is slower and changes results."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
