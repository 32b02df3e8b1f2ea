"""timing: inference speed, peak memory, hardware and software versions of one trained model.

`predict` calls `write_timing` once its predictions are written; the benchmark leaderboard reads the
resulting ``timing.json``. Timing is measured separately from the prediction pass (`time_model`), on
at most `max_images` test images, after one warm-up pass, so the first call's one-off costs (allocator,
lazy kernel selection) do not count; where the network is a small part of the work (instance
post-processing), the prediction pass itself is timed end to end instead (`end_to_end_timing`). Two
figures per model:

* ``seconds_per_image_batch1``: median over images of the time to predict one image alone, the
  latency a user waits for a single image;
* ``seconds_per_image_batched``: median over batches of (batch time / images in the batch), the
  throughput of bulk prediction. Dense images are batched only with images of the same shape.

On CUDA every measured call is followed by `torch.cuda.synchronize()`, or the clock would stop before
the kernels finish.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from snakescope import __version__
from snakescope.io import write_json

log = logging.getLogger(__name__)

PACKAGES = ("torch", "torchvision", "monai", "numpy", "scikit-learn", "snakemake")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict:
    """CPU model and count, and the GPU's name when `device` is CUDA."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu, "device": str(device)}


def software_versions() -> dict:
    """Versions of Python, snakescope and the packages a result depends on (None when not installed)."""
    versions = {"python": platform.python_version(), "snakescope": __version__}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory of this process so far (MB) and, on CUDA, peak allocated GPU memory (MB)."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20  # macOS reports bytes
    gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_cpu_rss_mb": float(rss_mb), "peak_gpu_mb": gpu_mb}


def _timed(call, device: torch.device) -> float:
    started = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


@torch.no_grad()
def measure_inference(
    predict, images: list[np.ndarray], device: torch.device, batch_size: int = 16, max_images: int = 64
) -> dict:
    """Median seconds per image at batch size 1 and at `batch_size`.

    Args:
        predict: callable taking a float32 tensor (N, C, *spatial) on `device` and returning logits.
        images: normalised images, each float32 (C, *spatial), as the model takes them.
        batch_size: images per batched call.
        max_images: the first `max_images` images are timed; the rest are not needed for a median.
    Returns:
        {"seconds_per_image_batch1", "seconds_per_image_batched", "timing_batch_size", "timed_images"};
        the figures are NaN when `images` is empty.
    """
    images = images[:max_images]
    if not images:
        nan = float("nan")
        return {
            "seconds_per_image_batch1": nan,
            "seconds_per_image_batched": nan,
            "timing_batch_size": batch_size,
            "timed_images": 0,
        }
    tensors = [torch.as_tensor(image) for image in images]
    predict(tensors[0][None].to(device))  # warm-up, not timed
    single = [_timed(lambda t=t: predict(t[None].to(device)), device) for t in tensors]
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_shape.setdefault(tuple(tensor.shape), []).append(tensor)
    batched = []
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            chunk = torch.stack(group[start : start + batch_size]).to(device)
            batched.append(_timed(lambda c=chunk: predict(c), device) / len(chunk))
    return {
        "seconds_per_image_batch1": float(np.median(single)),
        "seconds_per_image_batched": float(np.median(batched)),
        "timing_batch_size": batch_size,
        "timed_images": len(tensors),
    }


def time_model(
    model: torch.nn.Module,
    plan: dict,
    items: list[dict],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 16,
    max_images: int = 64,
) -> dict:
    """`measure_inference` of `model` on `items` as `predict` runs it (sliding window for dense tasks,
    autocast when `amp_dtype`).

    Args:
        plan: the augment plan saved with the model (patch size).
        items: dicts with "image" (float32 C+spatial, normalised), as `snakescope.engine.items.load_items`
            returns.
    """
    from snakescope.engine.inference import predict_logits

    def predict(image: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            return predict_logits(model, image, plan)

    model.eval()
    return measure_inference(predict, [item["image"] for item in items], device, batch_size, max_images)


def end_to_end_timing(seconds: list[float]) -> dict:
    """The timing fields from per-image wall times measured during prediction itself (network and
    post-processing: the time to a finished output), at batch size 1; the first image carries the
    warm-up, which the median mostly hides."""
    median = float(np.median(seconds)) if seconds else float("nan")
    return {
        "seconds_per_image_batch1": median,
        "seconds_per_image_batched": median,
        "timing_batch_size": 1,
        "timed_images": len(seconds),
        "includes_postprocessing": True,
    }


def write_timing(model: torch.nn.Module, timing: dict, device: torch.device, out_json: str | Path) -> dict:
    """Write ``timing.json``: parameters, the `timing` fields (from `time_model` or `end_to_end_timing`),
    peak memory of the predict process (whole run, not only the timing), hardware, software versions."""
    record = {
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        **timing,
        **peak_memory(device),
        "hardware": hardware(device),
        "versions": software_versions(),
    }
    write_json(record, out_json)
    log.info(
        "inference %.4f s/image at batch 1, %.4f s/image at batch %d (median over %d images)",
        timing["seconds_per_image_batch1"],
        timing["seconds_per_image_batched"],
        timing["timing_batch_size"],
        timing["timed_images"],
    )
    return record
