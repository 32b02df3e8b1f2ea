"""items: the samples of the converted store as training and inference take them, loaded or streamed.

An item is a dict with "id", "image" (float32 C+spatial, normalised as the plan says) and, when known,
"label". `load_items` loads a list of them; `StoredItems` is the same sequence read from the store only
when an item is asked for, so that a training set larger than memory is streamed (`choose_data_path`
decides which, snakescope.engine.data uses either).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from snakescope.engine.transforms import normalise
from snakescope.resources import MEMORY_SHARE, usable_memory_bytes
from snakescope.store import Store, open_store

LabelReader = Callable[[Store, str], object]


def choose_data_path(plan: dict, usable_bytes: int | None = None) -> tuple[str, str]:
    """("memory" or "stream", the reason) for the plan's data_path (snakescope.augment.plan_data_path):
    auto holds the dataset in memory when it takes at most MEMORY_SHARE of the memory this process may
    use (`usable_bytes`, by default snakescope.resources.usable_memory_bytes)."""
    entry = plan.get("data_path") or {"mode": "memory", "dataset_bytes": 0}  # plans made before streaming
    need = entry["dataset_bytes"]
    size = f"the dataset takes about {need / 2**30:.2f} GiB in memory"
    if entry["mode"] != "auto":
        return entry["mode"], f"data_path: {entry['mode']} in the config; {size}"
    usable = usable_memory_bytes() if usable_bytes is None else usable_bytes
    mode = "memory" if need <= MEMORY_SHARE * usable else "stream"
    return mode, (f"{size}, {'at most' if mode == 'memory' else 'more than'} {MEMORY_SHARE:.0%} of the "
                  f"{usable / 2**30:.1f} GiB this job may use")


def load_items(arrays_store: str, ids: list[str], plan: dict, read_label: LabelReader) -> list[dict]:
    """Load and normalise the samples `ids` into memory.

    Args:
        read_label: the task's reader (snakescope.tasks.base.Task.label_reader) of one sample's label from
            the open arrays; None where the sample has none.
    Returns:
        dicts with "id", "image" (float32 C+spatial, normalised) and, when known, "label": an int class
        index (classification), an int64 1+spatial class map (segmentation), or a float32 C+spatial
        target in network units (regression).
    """
    with open_store(arrays_store) as arrays:
        return [read_item(arrays, sample_id, plan, read_label) for sample_id in ids]


def read_item(arrays: Store, sample_id: str, plan: dict, read_label: LabelReader) -> dict:
    """One sample of the open store as `load_items` gives it."""
    item = {"id": sample_id, "image": normalise(arrays[f"image/{sample_id}"], plan)}
    label = read_label(arrays, sample_id)
    if label is not None:
        item["label"] = label
    return item


class StoredItems(Sequence):
    """The items `load_items` would return, read from the store only when one is asked for (streaming).

    A slice, or repetition with `*` (several patches per image and epoch), gives another lazy sequence
    over the same open store; it can be sent to DataLoader workers, each of which opens the store itself.

    Args:
        prepare: turns a list of items into what the network learns (Trainer.prepare_items), applied
            to each item as it is read.
    """

    def __init__(self, arrays_store: str, ids: list[str], plan: dict, read_label: LabelReader,
                 prepare: Callable[[list[dict]], list[dict]] = list):
        self.arrays_store, self.ids, self.plan = arrays_store, list(ids), plan
        self.read_label, self.prepare = read_label, prepare
        self._store: Store | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.with_ids(self.ids[index])
        return self.prepare([read_item(self._opened(), self.ids[index], self.plan, self.read_label)])[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __mul__(self, repeats: int) -> StoredItems:
        return self.with_ids(self.ids * repeats)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}  # a worker opens its own

    def with_ids(self, ids: list[str]) -> StoredItems:
        """The same items for the samples `ids`, sharing the open store."""
        other = StoredItems(self.arrays_store, ids, self.plan, self.read_label, self.prepare)
        other._store = self._store
        return other

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Each image's C+spatial shape, from the store's metadata (no pixels are read)."""
        store = self._opened()
        return [store.shape(f"image/{sample_id}") for sample_id in self.ids]

    def _opened(self) -> Store:
        if self._store is None:
            self._store = open_store(self.arrays_store)
        return self._store


def image_shapes(items) -> list[tuple[int, ...]]:
    """The C+spatial shape of each item's image, without reading streamed ones."""
    return items.shapes if isinstance(items, StoredItems) else [np.shape(item["image"]) for item in items]
