"""Seconds per Mask R-CNN training step on this machine, by backbone and by proposals sampled per image.

The box and mask heads run on every sampled proposal, and on a CPU they, not the backbone, dominate a
step; this is the measurement behind snakescope.engine.networks.MASKRCNN_ROIS_PER_IMAGE. One step: forward,
backward and Adam on a batch of 2 random 256x256 RGB patches, each with 150 box-shaped objects of about
12 px (the size of CPM-15 nuclei); the median of 3 steps after one warm-up.

    .venv/bin/python bench/maskrcnn_step.py            # two threads, as a train job on two cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from snakescope.engine import networks
from snakescope.tasks.instance_segmentation.detector import maskrcnn_target


def objects(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    labels = np.zeros((size, size), np.int32)
    for object_id in range(1, count + 1):
        y, x = rng.integers(8, size - 8, 2)
        labels[y - 5 : y + 5, x - 6 : x + 6] = object_id
    return labels


def seconds_per_step(backbone: str, rois: int, size: int = 256, batch: int = 2, steps: int = 3) -> float:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = networks.build_maskrcnn(3, 2, networks.anchor_sizes(150.0), size, backbone)
    model.roi_heads.fg_bg_sampler.batch_size_per_image = rois
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    images = [torch.rand(3, size, size) for _ in range(batch)]
    targets = [maskrcnn_target(objects(rng, size, 150)) for _ in range(batch)]
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'backbone':<10} {'proposals/image':>15} {'s/step':>8}")
    for backbone in ("resnet18", "resnet50"):
        for rois in (64, 128, 256):
            print(f"{backbone:<10} {rois:>15} {seconds_per_step(backbone, rois):>8.2f}", flush=True)
