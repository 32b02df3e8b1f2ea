"""fingerprint: what the planner and a later reader need to know of a dataset, computed once.

Counts, shapes, dtypes, channels, intensity statistics and a SHA-256 per input file (so a changed
input is noticed), in the manner of nnU-Net's dataset fingerprint; each task adds its own entries
(classes and their balance, object sizes, target channels).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

from snakescope.convert.read import sample_checksum
from snakescope.convert.samples import Sample

MAX_INTENSITY_VALUES = 10_000_000  # pixel values per channel sampled for the intensity statistics


def dataset_fingerprint(settings: dict, samples: list[Sample], images: Mapping[str, np.ndarray], raw_dtypes: Counter) -> dict:
    """What every task records of a dataset: counts, shapes, dtypes, channels, intensity statistics,
    brightness spread and a SHA-256 per input file (the task adds its own entries)."""
    shapes = np.array([img.shape for img in images.values()])
    n_channels = int(shapes[0, 0])
    # Intensity statistics from a bounded random subset of pixels per image (10,000, fewer beyond 1,000
    # images so that all of them stay within MAX_INTENSITY_VALUES): exact enough for normalisation and
    # planning, and bounded memory whatever the dataset size.
    rng = np.random.default_rng(0)
    per_image = min(10_000, max(1_000, MAX_INTENSITY_VALUES // max(len(images), 1)))
    per_channel = []
    for c in range(n_channels):
        values = np.concatenate(
            [
                rng.choice(img[c].ravel(), size=min(img[c].size, per_image), replace=False)
                for img in images.values()
            ]
        )
        per_channel.append(
            {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "percentiles": {
                    str(q): float(v)
                    for q, v in zip(
                        (0.5, 1, 50, 99, 99.5), np.percentile(values, (0.5, 1, 50, 99, 99.5)), strict=True
                    )
                },
            }
        )
    fingerprint = {
        "dataset": settings["name"],
        "task": settings["task"],
        "data_dir": settings["data_dir"],
        "n_images": len(samples),
        "n_by_subset": dict(Counter(s.subset or "unsplit" for s in samples)),
        "spatial_dims": int(shapes.shape[1] - 1),
        "channels": n_channels,
        "source_dtypes": dict(raw_dtypes),
        "shape_min": shapes[:, 1:].min(axis=0).tolist(),
        "shape_median": np.median(shapes[:, 1:], axis=0).tolist(),
        "shape_max": shapes[:, 1:].max(axis=0).tolist(),
        "resized_to": settings.get("resize"),
        "intensity": per_channel,
        # How much the mean brightness varies between images (std / mean of per-image means): the
        # planner adds brightness and contrast augmentations when it is large.
        "brightness_spread": _brightness_spread(images),
        "checksums": {s.id: sample_checksum(s.image) for s in samples},
    }
    fingerprint["checksums"].update({f"{s.id}:target": sample_checksum(s.target) for s in samples if s.target})
    return fingerprint


def _brightness_spread(images: Mapping[str, np.ndarray]) -> float:
    means = np.array([float(img.mean()) for img in images.values()])
    return float(means.std() / abs(means.mean())) if means.size and means.mean() else 0.0
