"""data: the packed arrays of `convert`, normalised and split, as torch datasets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from snakescope.augment import normalise


def read_samples(samples_tsv: str) -> pd.DataFrame:
    return pd.read_csv(samples_tsv, sep="\t", dtype={"id": str, "label": str}, keep_default_na=False)


def load_items(arrays_npz: str, samples: pd.DataFrame, ids: list[str], plan: dict) -> list[dict]:
    """Load and normalise the samples `ids` into memory.

    Returns:
        dicts with "id", "image" (float32 C+spatial, normalised) and, when known, "label": an int class
        index (classification), an int64 1+spatial class map (segmentation), or a float32 C+spatial
        target scaled with ``plan["target_normalisation"]`` (regression, see snakescope.regression).
    """
    by_id = samples.set_index("id")
    items = []
    with np.load(arrays_npz) as arrays:
        for sample_id in ids:
            item = {"id": sample_id, "image": normalise(arrays[f"image/{sample_id}"], plan)}
            if plan["task"] == "classification":
                item["label"] = int(by_id.loc[sample_id, "label_index"])
            elif plan["task"] == "regression" and f"target/{sample_id}" in arrays:
                from snakescope.regression import as_channels_first, normalise_target

                target = as_channels_first(arrays[f"target/{sample_id}"], plan["spatial_dims"])
                item["label"] = normalise_target(target, plan["target_normalisation"])
            elif f"target/{sample_id}" in arrays:
                item["label"] = arrays[f"target/{sample_id}"][None].astype(np.int64)
            items.append(item)
    return items


class ItemDataset(torch.utils.data.Dataset):
    """In-memory items with an optional (random) MONAI transform; a dataset of a few GB fits in RAM."""

    def __init__(self, items: list[dict], transform=None):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        data = {"image": item["image"]}
        if "label" in item:
            data["label"] = item["label"]
        if self.transform is not None:
            data = self.transform(data)
        image = torch.as_tensor(np.ascontiguousarray(data["image"]), dtype=torch.float32)
        out = {"image": image}
        if "label" in data:
            label = data["label"]
            label = torch.as_tensor(np.ascontiguousarray(label) if not np.isscalar(label) else label)
            out["label"] = label if label.is_floating_point() else label.long()  # float: regression targets
        return out
