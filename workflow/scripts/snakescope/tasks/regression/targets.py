"""targets: regression targets in the network's units, and the input residual.

Target normalisation. Inputs are normalised per the config's `normalisation` (per image by default).
Targets cannot be: a per-image statistic of the target is unknown at prediction time, so it could not
be inverted. Targets are therefore scaled per channel with the 1st and 99th percentile of the
*training* targets only (``t' = (t - p1) / (p99 - p1)``), the network learns ``t'``, and predictions
are mapped back with the inverse, so every TIFF and metric is in the target's own units (e.g. grey
values of the 50-frame average). The two numbers per channel are computed in `train` from the
training split and saved in the model's plan (``plan["target_normalisation"]``); `predict` and
`uncertainty` read them from there, so validation and test data never influence them.

Residual learning. When input and target have the same channels (denoising, restoration) and the
input is normalised with fixed numbers (normalisation `dataset_zscore` or `none`), the input mapped
into target units is a known affine function of the normalised input. The network then learns only
the correction to it (residual learning, Zhang et al., IEEE TIP 2017, "DnCNN"):
``output = scale * x + shift + gain * net(x)`` with a per-channel `gain` that starts at 0 (as in
ReZero, Bachlechner et al., 2020), so an untrained model reproduces the input exactly and training
starts from the trivial baseline; `scale` and `shift` start as the identity in raw units and are
learned as well. On the full FMD subset (GPU, 40 epochs) this gave 37.2 dB against 33.3 dB for the
same U-Net learning the whole mapping from per-image normalised input. The affine map is saved in the plan
(``plan["input_residual"]``) and the model is rebuilt with it. With per-image normalisations
(percentile, minmax, zscore) the map differs per image and the network learns the whole mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from snakescope.images import to_channels_first
from snakescope.io import InputError, read_image
from snakescope.store import StoredArrays, open_store

log = logging.getLogger(__name__)

TARGET_PERCENTILES = (1.0, 99.0)


def read_target(path: str, spatial_shape: tuple[int, ...], spatial_dims: int) -> np.ndarray:
    """A regression target: float32 with the image's spatial shape (YX/ZYX, or CYX/CZYX when multichannel)."""
    target = to_channels_first(read_image(path), path, spatial_dims)
    if target.shape[1:] != tuple(spatial_shape):
        raise InputError(
            f"{path}: target shape {target.shape[1:]} differs from its image's {tuple(spatial_shape)}. "
            "The target must have the same height and width (and depth) as the image."
        )
    return target[0] if target.shape[0] == 1 else target


def target_statistics(
    targets: Sequence[np.ndarray],
    percentiles: tuple[float, float] = TARGET_PERCENTILES,
    max_pixels: int = 200_000,
    seed: int = 0,
) -> dict:
    """Per-channel percentiles of the (training) targets, for `normalise_target`.

    Args:
        targets: float32 arrays C+spatial (CYX or CZYX) in the target's units, all with the same C.
    Returns:
        ``{"method": "percentile", "percentiles": [1, 99], "low": [per channel], "high": [per channel]}``.
    """
    if not targets:
        raise ValueError("no training targets to compute the target normalisation from")
    rng = np.random.default_rng(seed)
    channels = targets[0].shape[0]
    per_image = max(1, max_pixels // len(targets))
    low, high = [], []
    for c in range(channels):
        values = np.concatenate(
            [rng.choice(t[c].ravel(), size=min(t[c].size, per_image), replace=False) for t in targets]
        )
        p_low, p_high = np.percentile(values, percentiles)
        if p_high - p_low < 1e-6:  # a near-constant target: fall back to its full range, then to 1
            p_low, p_high = float(values.min()), float(max(values.max(), values.min() + 1.0))
        low.append(float(p_low))
        high.append(float(p_high))
    return {"method": "percentile", "percentiles": list(percentiles), "low": low, "high": high}


def _scale(stats: dict, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (-1,) + (1,) * (ndim - 1)
    low = np.asarray(stats["low"], np.float32).reshape(shape)
    span = np.asarray(stats["high"], np.float32).reshape(shape) - low
    return low, span


def normalise_target(target: np.ndarray, stats: dict) -> np.ndarray:
    """Target (C+spatial, target units) -> network units; float32, same shape."""
    low, span = _scale(stats, target.ndim)
    return ((target.astype(np.float32) - low) / span).astype(np.float32)


def denormalise_target(output: np.ndarray, stats: dict, samples_first: bool = False) -> np.ndarray:
    """Network output C+spatial (or S+C+spatial with `samples_first`, MC samples) -> target units; float32."""
    low, span = _scale(stats, output.ndim - 1 if samples_first else output.ndim)
    if samples_first:
        low, span = low[None], span[None]
    return (output.astype(np.float32) * span + low).astype(np.float32)


def as_channels_first(target: np.ndarray, spatial_dims: int) -> np.ndarray:
    """A target as `convert` stores it (YX/ZYX for one channel, CYX/CZYX for several) -> C+spatial."""
    return target[None] if target.ndim == spatial_dims else target


def fit_target_normalisation(arrays_store: str, train_ids: list[str], spatial_dims: int) -> dict:
    """`target_statistics` of the training split's targets in a packed `arrays.zarr`."""
    with open_store(arrays_store) as arrays:
        keys = [f"target/{i}" for i in train_ids if f"target/{i}" in arrays]
        targets = StoredArrays(arrays, keys, lambda target: as_channels_first(target, spatial_dims))
        stats = target_statistics(targets)
    log.info("target normalisation from %d training targets: %s", len(targets), stats)
    return stats


def input_residual(plan: dict, fingerprint: dict) -> dict | None:
    """The identity in raw units, as an affine map from the normalised input to the normalised target.

    Returns:
        ``{"scale": [per channel], "shift": [per channel]}``, or None when there is none (input and
        target channels differ, or the input normalisation depends on the image).
    """
    if fingerprint["channels"] != fingerprint.get("target_channels", 1):
        return None
    stats = plan["target_normalisation"]
    low = np.asarray(stats["low"], np.float64)
    span = np.asarray(stats["high"], np.float64) - low
    if plan["normalisation"] == "dataset_zscore":
        mean = np.asarray(plan["dataset_mean"], np.float64)
        std = np.maximum(np.asarray(plan["dataset_std"], np.float64), 1e-6)  # as augment.normalise
        scale, shift = std / span, (mean - low) / span
    elif plan["normalisation"] == "none":
        scale, shift = 1.0 / span, -low / span
    else:
        return None
    return {"scale": scale.tolist(), "shift": shift.tolist()}


def with_input_residual(model, plan: dict):
    """Wrap `model` as ``scale * x + shift + gain * model(x)`` when the plan has an ``input_residual``."""
    if not plan.get("input_residual"):
        return model
    import torch
    from torch import nn

    class InputResidual(nn.Module):
        """(N, C, *spatial) -> (N, C, *spatial): the affinely mapped input plus a learned correction."""

        def __init__(self, net: nn.Module, scale: list[float], shift: list[float], spatial_dims: int):
            super().__init__()
            self.net = net
            shape = (1, -1) + (1,) * spatial_dims
            # learned too, from the identity in raw units: an input in other units than the target
            # (a different stain, say) is then not forced through
            self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float32).view(shape))
            self.shift = nn.Parameter(torch.tensor(shift, dtype=torch.float32).view(shape))
            self.gain = nn.Parameter(torch.zeros_like(self.scale))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scale * x + self.shift + self.gain * self.net(x)

    residual = plan["input_residual"]
    return InputResidual(model, residual["scale"], residual["shift"], plan["spatial_dims"])
