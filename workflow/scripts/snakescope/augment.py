"""augment: the augmentation plan and a preview figure of it.

The plan (normalisation, patch size, random augmentations; snakescope.engine.transforms builds them) is
written to JSON by the `augment` rule and read back by `train`, so what a model was trained with is on
disk beside it.
"""

from __future__ import annotations

import logging

import numpy as np

from snakescope.engine.transforms import AUGMENTATION_DEFAULTS, build_train_transforms, normalise
from snakescope.io import read_json, save_figure, write_json
from snakescope.plots import displayable
from snakescope.store import open_store
from snakescope.tasks import get_task

log = logging.getLogger(__name__)


def plan_data_path(choice: str, fingerprint: dict, dense: bool) -> dict:
    """How training will read its images: the config's data_path (auto, memory or stream) and what the
    dataset takes in memory (float32 images, uint8 masks). The train job settles auto
    (snakescope.engine.items.choose_data_path) against the memory it may use, which on a cluster is its
    own allocation, not that of the job that plans."""
    pixels = int(np.prod(fingerprint.get("shape_median") or [0]))
    need = fingerprint.get("n_images", 0) * pixels * (4 * fingerprint["channels"] + (1 if dense else 0))
    return {"mode": choice, "dataset_bytes": need}


def make_plan(settings: dict, fingerprint: dict) -> dict:
    """The augmentation plan for one dataset: normalisation, patch size and random transforms."""
    spatial_dims = fingerprint["spatial_dims"]
    dense = get_task(settings["task"]).dense  # images used whole (resized) when not dense: no patches
    return {
        "task": settings["task"],
        "spatial_dims": spatial_dims,
        "channels": fingerprint["channels"],
        "normalisation": settings["normalisation"],
        "dataset_mean": [c["mean"] for c in fingerprint["intensity"]],
        "dataset_std": [c["std"] for c in fingerprint["intensity"]],
        "patch_size": list(settings["patch_size"])[:spatial_dims] if dense else None,
        "augmentations": [{"name": name, **AUGMENTATION_DEFAULTS[name]} for name in settings["augmentations"]],
        "seed": settings["seed"],
        "data_path": plan_data_path(settings.get("data_path", "auto"), fingerprint, dense),
    }


def write_plan_and_preview(settings: dict, fingerprint_json: str, arrays_store: str, split_json: str,
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
    task = get_task(settings["task"])
    has_mask = task.dense
    set_determinism(seed=settings["seed"])
    transforms = build_train_transforms(plan, has_mask)
    transforms.set_random_state(seed=settings["seed"])
    columns = 1 + n_draws
    figure, axes = plt.subplots(len(ids), columns, figsize=(1.8 * columns, 1.8 * len(ids)), squeeze=False)
    with open_store(arrays_store) as arrays:
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
                if task.label_is_class_map:  # a regression target has no outline
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
