"""fingerprint: what the planner and a later reader need to know of a dataset, computed once.

Counts, shapes, dtypes, channels, intensity statistics and a SHA-256 per input file (so a changed
input is noticed), in the manner of nnU-Net's dataset fingerprint; each task adds its own entries
(classes and their balance, object sizes, target channels).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from snakescope.convert.read import sample_checksum
from snakescope.convert.samples import Sample
from snakescope.logs import PROGRESS

MAX_INTENSITY_VALUES = 10_000_000  # pixel values per channel sampled for the intensity statistics
PROGRESS_EVERY = 500  # images between progress lines of a pass over the dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSummary:
    """What the checks and the fingerprint need of one image as a whole, from one read of it."""

    shape: tuple[int, ...]
    mean: float
    constant: bool  # every pixel has one value
    first_value: float


def summarise_images(images: Mapping[str, np.ndarray]) -> dict[str, ImageSummary]:
    """Each image's summary, in `images`' order, reading each image once (a mapping on disk reads it
    from there)."""
    summaries = {}
    for index, (key, image) in enumerate(images.items()):
        # in float64 over a C-ordered copy: a float32 sum's rounding depends on the memory layout, which
        # differs between an image as read (often a transposed view) and one read back from disk
        mean = float(np.ascontiguousarray(image).mean(dtype=np.float64))
        summaries[key] = ImageSummary(image.shape, mean, bool(np.ptp(image) == 0), float(image.flat[0]))
        if (index + 1) % PROGRESS_EVERY == 0:
            log.info("checked %d/%d images", index + 1, len(images), extra=PROGRESS)
    return summaries


def dataset_fingerprint(
    settings: dict, samples: list[Sample], images: Mapping[str, np.ndarray], summaries: Mapping[str, ImageSummary],
    raw_dtypes: Counter, checksums: dict[str, str] | None = None,
) -> dict:
    """What every task records of a dataset: counts, shapes, dtypes, channels, intensity statistics,
    brightness spread and a SHA-256 per input file (the task adds its own entries); `summaries` as
    `summarise_images` gives them; `checksums` as `sample_checksums` gives them, computed here when not
    given (convert's shards compute their own)."""
    shapes = np.array([summary.shape for summary in summaries.values()])
    n_channels = int(shapes[0, 0])
    values = _intensity_samples(images, [int(np.prod(shape[1:])) for shape in shapes], n_channels)
    per_channel = []
    for channel_values in values:
        per_channel.append(
            {
                "mean": float(channel_values.mean()),
                "std": float(channel_values.std()),
                "percentiles": {
                    str(q): float(v)
                    for q, v in zip(
                        (0.5, 1, 50, 99, 99.5), np.percentile(channel_values, (0.5, 1, 50, 99, 99.5)), strict=True
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
        "brightness_spread": _brightness_spread(summaries),
        "checksums": sample_checksums(samples) if checksums is None else checksums,
    }
    return fingerprint


def _intensity_samples(images: Mapping[str, np.ndarray], sizes: list[int], n_channels: int) -> list[np.ndarray]:
    """Per channel, the pixel values of a bounded random subset of each image's pixels (10,000, fewer
    beyond 1,000 images so that all of them stay within MAX_INTENSITY_VALUES): exact enough for
    normalisation and planning, in bounded memory whatever the dataset size.

    One generator draws the subsets channel by channel, image by image; the images are read once each,
    so each channel gets a generator of its own started where drawing the channels before it leaves the
    one generator (found by drawing without reading anything): the same values as reading every
    image once per channel.
    """
    per_image = min(10_000, max(1_000, MAX_INTENSITY_VALUES // max(len(sizes), 1)))
    rng = np.random.default_rng(0)
    starts = []
    for channel in range(n_channels):
        starts.append(rng.bit_generator.state)
        for size in sizes if channel < n_channels - 1 else ():
            rng.choice(size, size=min(size, per_image), replace=False)
    generators = []
    for state in starts:
        generator = np.random.Generator(np.random.PCG64())
        generator.bit_generator.state = state
        generators.append(generator)
    # filled in place: the values of every channel at once, and nothing more
    values: list[np.ndarray] = []
    filled = 0
    for image, size in zip(images.values(), sizes, strict=True):
        if not values:
            values = [np.empty(sum(min(n, per_image) for n in sizes), image.dtype) for _ in range(n_channels)]
        count = min(size, per_image)
        for channel, generator in enumerate(generators):
            picked = generator.choice(size, size=count, replace=False)
            values[channel][filled : filled + count] = image[channel].ravel()[picked]
        filled += count
    return values


def sample_checksums(samples: list[Sample]) -> dict[str, str]:
    """SHA-256 of each sample's image file(s) (key: its id) and ground-truth file (key: ``<id>:target``)."""
    checksums = {s.id: sample_checksum(s.image) for s in samples}
    checksums.update({f"{s.id}:target": sample_checksum(s.target) for s in samples if s.target})
    return checksums


def _brightness_spread(summaries: Mapping[str, ImageSummary]) -> float:
    means = np.array([summary.mean for summary in summaries.values()])
    return float(means.std() / abs(means.mean())) if means.size and means.mean() else 0.0
