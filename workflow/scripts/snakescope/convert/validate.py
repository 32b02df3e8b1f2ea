"""validate: checks across the whole dataset, and one error listing every problem found.

Every problem is collected before anything is raised, so a user fixes the data in one pass rather than
one file per run.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from snakescope.io import InputError

MAX_ERRORS_SHOWN = 20


def raise_if_any(errors: list[str]) -> None:
    if errors:
        shown = "\n  - ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise InputError(f"{len(errors)} problem(s) in the input data:\n  - {shown}{more}")


def channel_count_errors(samples: list, images: dict[str, np.ndarray]) -> list[str]:
    """One message per image whose channel count differs from most images'."""
    channel_counts = Counter(img.shape[0] for img in images.values())
    if len(channel_counts) <= 1:
        return []
    majority = channel_counts.most_common(1)[0][0]
    return [
        f"{sample.image}: {images[sample.id].shape[0]} channel(s) where most images have "
        f"{majority}. Save all images with the same channels."
        for sample in samples
        if sample.id in images and images[sample.id].shape[0] != majority
    ]
