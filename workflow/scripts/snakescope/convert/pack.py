"""pack: write the checked dataset where the later rules read it, atomically.

* ``arrays.zarr``: per sample its image (C+spatial, native intensity, smallest lossless dtype) and, for
  dense tasks, its target (class indices, instance ids or float targets, as the task packs them), as a
  chunked OME-Zarr store (snakescope.store).
* ``samples.tsv``: one row per sample (id, source paths, label, label index, subset, group, region,
  shape).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from snakescope.convert.samples import Sample
from snakescope.io import atomic_path
from snakescope.logs import PROGRESS
from snakescope.store import write_store

log = logging.getLogger(__name__)


def write_packed(
    samples: list[Sample],
    images: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    classes: list[str],
    arrays_out: str | Path,
    samples_out: str | Path,
    encode_target: Callable[[np.ndarray], np.ndarray] = np.asarray,
) -> None:
    """Write the store and the sample table; `encode_target` turns each target into what is stored (the
    task's `encode_target`). Images that `images` holds on disk already (its `stored(id)`, as the gather
    step of a sharded convert has them) are linked into the store instead of written again."""
    import pandas as pd

    label_index = {c: i for i, c in enumerate(classes)}
    table = pd.DataFrame([asdict(s) for s in samples])
    table["label_index"] = [label_index.get(s.label, -1) for s in samples]
    image_of = getattr(images, "stored", images.__getitem__)
    shapes = []
    with write_store(arrays_out) as store:
        for index, sample in enumerate(samples):
            target = targets.get(sample.id)
            image = image_of(sample.id)
            shapes.append("x".join(map(str, image.shape)))
            store.add(sample.id, image, None if target is None else encode_target(target))
            if (index + 1) % 50 == 0:
                log.info("stored %d/%d images", index + 1, len(samples), extra=PROGRESS)
    table["shape"] = shapes
    with atomic_path(samples_out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
