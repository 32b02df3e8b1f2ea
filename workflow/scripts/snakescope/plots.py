"""plots: small helpers shared by the figures of several rules: images for display, views of volumes."""

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


def orthogonal_views(volume: np.ndarray) -> np.ndarray:
    """ZYX (or CZYX: each channel separately) -> one 2D mosaic of three orthogonal central slices.

    Layout (Y+Z rows, X+Z columns): the XY slice at the middle Z top left, the ZY slice at the middle X
    to its right (Z along the columns), the ZX slice at the middle Y below it (Z along the rows); the
    corner is filled with the volume's minimum. A YX (or CYX) image is returned unchanged.
    """
    volume = np.asarray(volume)
    if volume.ndim == 4:
        return np.stack([orthogonal_views(channel) for channel in volume])
    if volume.ndim != 3:
        return volume
    z, y, x = volume.shape
    mosaic = np.full((y + z, x + z), volume.min(), dtype=volume.dtype)
    mosaic[:y, :x] = volume[z // 2]
    mosaic[:y, x:] = volume[:, :, x // 2].T
    mosaic[y:, :x] = volume[:, y // 2, :]
    return mosaic


def display_2d(array: np.ndarray) -> np.ndarray:
    """C+spatial target/prediction/error -> a 2D array for imshow: first channel, orthogonal views in 3D."""
    array = np.asarray(array)
    return orthogonal_views(array[0]) if array.ndim >= 3 else array
