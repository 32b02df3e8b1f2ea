"""Small models really trained (one short epoch each), for the tests that need a checkpoint."""

from __future__ import annotations

import numpy as np
import tifffile

from snakescope.augment import make_plan
from snakescope.config import TrainConfig, resolve_datasets, stage_settings
from snakescope.convert import convert_dataset
from snakescope.io import read_json, write_json
from snakescope.split import write_split
from snakescope.train import fit

# task -> (config, model, data): one short epoch each, enough for a real checkpoint
SMALL_RUNS = {
    "segmentation": ({"task": "segmentation", "patch_size": [32, 32]}, "unet_small", "demo"),
    "classification": ({"task": "classification", "resize": [32, 32]}, "mobilenet_v2", "demo"),
    "regression": ({"task": "regression", "patch_size": [32, 32], "normalisation": "dataset_zscore"}, "segresnet",
                   "regression"),
    # the demo masks hold classes (cytoplasm, nucleus): every non-zero pixel is object, one cell per image
    "instance_segmentation": ({"task": "instance_segmentation", "patch_size": [32, 32],
                               "layout": {"mask_foreground": True}}, "unet_small", "demo"),
}


def regression_data(root):
    """Noisy frames and their clean target: a denoising set of 12 images."""
    rng = np.random.default_rng(0)
    for sub in ("image", "groundtruth"):
        (root / sub).mkdir(parents=True)
    for i in range(12):
        clean = (rng.random((48, 48)) * 1000).astype(np.float32)
        tifffile.imwrite(root / "image" / f"{i}.tif", (clean + rng.normal(0, 50, clean.shape)).astype(np.float32))
        tifffile.imwrite(root / "groundtruth" / f"{i}.tif", clean)
    return root


def train_small(root, config: dict, model: str):
    """Convert, split, plan and train `model` for one short epoch: a real checkpoint in root/model.pt."""
    (settings,) = resolve_datasets({**config, "epochs": 1, "batch_size": 4, "augmentations": ["flip"],
                                    "device": "cpu"}).values()
    out = root / "prepared"
    convert_dataset(stage_settings(settings, "convert"), out / "arrays.zarr", out / "samples.tsv",
                    out / "fingerprint.json")
    write_split(str(out / "samples.tsv"), stage_settings(settings, "split"), str(out / "splits.json"))
    write_json(make_plan(settings, read_json(out / "fingerprint.json")), out / "plan.json")
    fit(str(out / "arrays.zarr"), str(out / "samples.tsv"), str(out / "splits.json"), str(out / "plan.json"),
        str(out / "fingerprint.json"), TrainConfig.from_settings(settings, model=model, seed=0),
        str(root / "model.pt"), str(root / "history.tsv"), str(root / "card.json"), str(root), threads=1)
    return settings, out
