"""transforms: intensity normalisation and the random training augmentations (MONAI dict transforms).

Deterministic steps (normalisation) are applied once when the data is loaded; random steps run on the
fly in the training loader only, so validation, testing and prediction see the data unaltered, as in
MONAI's bundles.
"""

from __future__ import annotations

import numpy as np

# Parameter choices follow InstantDL's defaults where it had them; each is mild enough not to change
# what a biologist would call the image's class or mask.
AUGMENTATION_DEFAULTS: dict[str, dict] = {
    "flip": {"prob": 0.5},
    "rotate90": {"prob": 0.5},
    "rotate": {"prob": 0.5, "max_degrees": 20},
    "zoom": {"prob": 0.5, "min_zoom": 0.85, "max_zoom": 1.15},
    "contrast": {"prob": 0.5, "factor": 0.25},
    "brightness": {"prob": 0.5, "offset": 0.1},
    "gamma": {"prob": 0.5, "gamma": [0.7, 1.5]},
    "poisson_noise": {"prob": 0.3, "peak": [20.0, 200.0]},
    "gaussian_noise": {"prob": 0.3, "std": 0.05},
    "blur": {"prob": 0.3, "sigma": [0.25, 1.0]},
}
INTENSITY_AUGMENTATIONS = {"contrast", "brightness", "gamma", "poisson_noise", "gaussian_noise", "blur"}


def normalise(image: np.ndarray, plan: dict, statistics: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Scale a float32 C+spatial image per channel as the plan says; returns float32, same shape.

    percentile maps the 1st..99th percentile to 0..1 (robust to hot pixels, InstantDL's choice);
    minmax maps min..max to 0..1; zscore gives zero mean and unit variance per image;
    dataset_zscore uses the training set's mean and std from the fingerprint. `statistics` (from
    `normalisation_statistics`) replaces the image's own, for an image normalised part by part.
    """
    image = image.astype(np.float32, copy=True)
    statistics = statistics if statistics is not None else normalisation_statistics(image, plan)
    if statistics is None:
        return image
    shape = (-1,) + (1,) * (image.ndim - 1)
    offset, scale = (np.asarray(value).reshape(shape) for value in statistics)
    return ((image - offset) / scale).astype(np.float32, copy=False)


def normalisation_statistics(image: np.ndarray, plan: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """Per channel (offset, scale) of the plan's normalisation for a C+spatial image, or for a (C, N)
    sample of an image's pixels; None for "none"."""
    method = plan["normalisation"]
    axes = tuple(range(1, image.ndim))
    if method == "percentile":
        low, high = np.percentile(image, (1, 99), axis=axes)
        return low, np.maximum(high - low, 1e-6)
    if method == "minmax":
        low, high = image.min(axis=axes), image.max(axis=axes)
        return low, np.maximum(high - low, 1e-6)
    if method == "zscore":
        return image.mean(axis=axes), np.maximum(image.std(axis=axes), 1e-6)
    if method == "dataset_zscore":
        return (np.asarray(plan["dataset_mean"], np.float32),
                np.maximum(np.asarray(plan["dataset_std"], np.float32), 1e-6))
    return None


def build_train_transforms(plan: dict, has_mask: bool):
    """MONAI dict transforms for training: patch crop (segmentation), then the plan's random augmentations.

    Items are dicts with "image" (float32 C+spatial) and, for segmentation, "label" (int C+spatial with
    C=1); the label follows every geometric transform with nearest-neighbour interpolation.
    """
    from monai import transforms as mt

    keys = ["image", "label"] if has_mask else ["image"]
    geometric_modes = ["bilinear", "nearest"] if has_mask else ["bilinear"]
    spatial_dims = plan["spatial_dims"]
    steps = []
    if plan.get("patch_size"):
        steps.append(mt.SpatialPadd(keys=keys, spatial_size=plan["patch_size"], mode="reflect"))
        steps.append(mt.RandSpatialCropd(keys=keys, roi_size=plan["patch_size"], random_size=False))
    for aug in plan["augmentations"]:
        name, prob = aug["name"], aug["prob"]
        if name == "flip":
            steps += [mt.RandFlipd(keys=keys, prob=prob, spatial_axis=axis) for axis in range(spatial_dims)]
        elif name == "rotate90":
            steps.append(mt.RandRotate90d(keys=keys, prob=prob, max_k=3, spatial_axes=(spatial_dims - 2, spatial_dims - 1)))
        elif name == "rotate":
            angle = np.deg2rad(aug["max_degrees"])
            steps.append(mt.RandRotated(keys=keys, prob=prob, range_x=angle, mode=geometric_modes, padding_mode="reflection"))
        elif name == "zoom":
            steps.append(mt.RandZoomd(keys=keys, prob=prob, min_zoom=aug["min_zoom"], max_zoom=aug["max_zoom"],
                                      mode=["area", "nearest"] if has_mask else ["area"], keep_size=True))
        elif name == "contrast":
            steps.append(mt.RandScaleIntensityFixedMeand(keys="image", prob=prob, factors=aug["factor"]))
        elif name == "brightness":
            steps.append(mt.RandShiftIntensityd(keys="image", prob=prob, offsets=aug["offset"]))
        elif name == "gamma":
            steps.append(mt.RandAdjustContrastd(keys="image", prob=prob, gamma=tuple(aug["gamma"])))
        elif name == "poisson_noise":
            steps.append(RandPoissonNoised(keys="image", prob=prob, peak=tuple(aug["peak"])))
        elif name == "gaussian_noise":
            steps.append(mt.RandGaussianNoised(keys="image", prob=prob, std=aug["std"]))
        elif name == "blur":
            sigma = tuple(aug["sigma"])
            steps.append(mt.RandGaussianSmoothd(keys="image", prob=prob, sigma_x=sigma, sigma_y=sigma))
        else:
            raise ValueError(f"unknown augmentation '{name}'; known: {sorted(AUGMENTATION_DEFAULTS)}")
    steps.append(mt.ToTensord(keys=keys, track_meta=False))
    return mt.Compose(steps)


def _poisson_noise_class():
    # Written by hand because neither MONAI nor torchvision offers shot noise, the dominant noise of
    # low-light fluorescence: pixels become Poisson photon counts at a random peak, then are rescaled.
    from monai.transforms import MapTransform, RandomizableTransform

    class _RandPoissonNoised(RandomizableTransform, MapTransform):
        def __init__(self, keys, prob: float = 0.3, peak: tuple[float, float] = (20.0, 200.0)):
            MapTransform.__init__(self, keys)
            RandomizableTransform.__init__(self, prob)
            self.peak_range = peak
            self._peak = peak[1]

        def randomize(self, data=None) -> None:
            super().randomize(None)
            self._peak = self.R.uniform(*self.peak_range)

        def __call__(self, data):
            out = dict(data)
            self.randomize()
            if not self._do_transform:
                return out
            for key in self.key_iterator(out):
                image = np.asarray(out[key], dtype=np.float32)
                low = image.min()
                counts = self.R.poisson(np.clip(image - low, 0, None) * self._peak)
                out[key] = (counts / self._peak + low).astype(np.float32)
            return out

    return _RandPoissonNoised


def RandPoissonNoised(keys, prob: float = 0.3, peak: tuple[float, float] = (20.0, 200.0)):  # noqa: N802
    """Random Poisson (shot) noise on 0..1-normalised images; `peak` is the photon count at intensity 1."""
    return _poisson_noise_class()(keys, prob=prob, peak=peak)
