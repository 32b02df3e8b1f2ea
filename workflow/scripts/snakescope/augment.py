"""augment: the augmentation plan, its MONAI transforms, and a preview figure.

Deterministic steps (normalisation) are applied once when the data is loaded; random steps run on the
fly in the training loader only, so validation, testing and prediction see the data unaltered, as in
MONAI's bundles. The plan is written to JSON by the `augment` rule and read back by `train`, so what
a model was trained with is on disk beside it.
"""

from __future__ import annotations

import logging

import numpy as np

from snakescope.io import read_json, save_figure, write_json
from snakescope.plots import displayable

log = logging.getLogger(__name__)

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


def make_plan(settings: dict, fingerprint: dict) -> dict:
    """The augmentation plan for one dataset: normalisation, patch size and random transforms."""
    spatial_dims = fingerprint["spatial_dims"]
    return {
        "task": settings["task"],
        "spatial_dims": spatial_dims,
        "channels": fingerprint["channels"],
        "normalisation": settings["normalisation"],
        "dataset_mean": [c["mean"] for c in fingerprint["intensity"]],
        "dataset_std": [c["std"] for c in fingerprint["intensity"]],
        "patch_size": None if settings["task"] == "classification" else list(settings["patch_size"])[:spatial_dims],
        "augmentations": [{"name": name, **AUGMENTATION_DEFAULTS[name]} for name in settings["augmentations"]],
        "seed": settings["seed"],
    }


def normalise(image: np.ndarray, plan: dict) -> np.ndarray:
    """Scale a float32 C+spatial image per channel as the plan says; returns float32, same shape.

    percentile maps the 1st..99th percentile to 0..1 (robust to hot pixels, InstantDL's choice);
    minmax maps min..max to 0..1; zscore gives zero mean and unit variance per image;
    dataset_zscore uses the training set's mean and std from the fingerprint.
    """
    return _normalise(image.astype(np.float32, copy=True), plan["normalisation"], plan).astype(np.float32, copy=False)


def _normalise(image: np.ndarray, method: str, plan: dict) -> np.ndarray:
    axes = tuple(range(1, image.ndim))
    if method == "percentile":
        low, high = np.percentile(image, (1, 99), axis=axes, keepdims=True)
        return (image - low) / np.maximum(high - low, 1e-6)
    if method == "minmax":
        low, high = image.min(axis=axes, keepdims=True), image.max(axis=axes, keepdims=True)
        return (image - low) / np.maximum(high - low, 1e-6)
    if method == "zscore":
        return (image - image.mean(axis=axes, keepdims=True)) / np.maximum(image.std(axis=axes, keepdims=True), 1e-6)
    if method == "dataset_zscore":
        shape = (-1,) + (1,) * (image.ndim - 1)
        mean = np.asarray(plan["dataset_mean"], np.float32).reshape(shape)
        std = np.asarray(plan["dataset_std"], np.float32).reshape(shape)
        return (image - mean) / np.maximum(std, 1e-6)
    return image


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


def write_plan_and_preview(settings: dict, fingerprint_json: str, arrays_npz: str, split_json: str,
                           plan_out: str, preview_out: str, n_preview: int = 6, n_draws: int = 4) -> dict:
    """Write the plan, and a figure of `n_preview` training images each drawn `n_draws` times augmented."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from monai.utils import set_determinism

    fingerprint = read_json(fingerprint_json)
    plan = make_plan(settings, fingerprint)
    write_json(plan, plan_out)

    split = read_json(split_json)
    ids = split["train"][:n_preview]
    has_mask = settings["task"] != "classification"
    set_determinism(seed=settings["seed"])
    transforms = build_train_transforms(plan, has_mask)
    transforms.set_random_state(seed=settings["seed"])
    columns = 1 + n_draws
    figure, axes = plt.subplots(len(ids), columns, figsize=(1.8 * columns, 1.8 * len(ids)), squeeze=False)
    with np.load(arrays_npz) as arrays:
        for row, sample_id in enumerate(ids):
            image = normalise(arrays[f"image/{sample_id}"], plan)
            item = {"image": image}
            if has_mask and f"target/{sample_id}" in arrays:
                item["label"] = arrays[f"target/{sample_id}"][None]
            elif has_mask:
                item["label"] = np.zeros_like(image[:1], dtype=np.int64)
            axes[row, 0].imshow(displayable(image))
            axes[row, 0].set_title(sample_id if row == 0 else sample_id, fontsize=7)
            for draw in range(n_draws):
                augmented = transforms(item)
                axes[row, 1 + draw].imshow(displayable(np.asarray(augmented["image"])))
                if has_mask and settings["task"] != "regression":  # a regression target has no outline
                    outline = np.asarray(augmented["label"])[0] > 0
                    if outline.ndim == 3:  # a volume: its middle slice, the one displayable() shows
                        outline = outline[outline.shape[0] // 2]
                    axes[row, 1 + draw].contour(outline, levels=[0.5], colors="yellow", linewidths=0.5)
    for axis in axes.ravel():
        axis.set_axis_off()
    axes[0, 0].set_title("original", fontsize=8)
    for draw in range(n_draws):
        axes[0, 1 + draw].set_title(f"augmented {draw + 1}", fontsize=8)
    figure.suptitle(f"{settings['name']}: augmentations {', '.join(settings['augmentations']) or 'none'}", fontsize=9)
    save_figure(figure, preview_out)
    return plan
