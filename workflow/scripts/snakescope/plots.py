"""plots: small helpers shared by the figures of several rules."""

from __future__ import annotations

import numpy as np


def displayable(image: np.ndarray) -> np.ndarray:
    """CYX (or CZYX: middle slice) -> YX or YXC in 0..1 for imshow."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 4:
        image = image[:, image.shape[1] // 2]
    image = image[0] if image.shape[0] not in (3,) else np.moveaxis(image, 0, -1)
    low, high = np.percentile(image, (1, 99))
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1)
