"""pack: write the checked dataset where the later rules read it, atomically.

* ``arrays.npz``: per sample ``image/<id>`` float32 CYX (or CZYX) at native intensity, and for dense
  tasks ``target/<id>`` (class indices, instance ids or float targets, as the task packs them).
* ``samples.tsv``: one row per sample (id, source paths, label, label index, subset, group, region,
  shape).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from snakescope.convert.samples import Sample
from snakescope.io import atomic_path


def write_packed(
    samples: list[Sample],
    images: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    classes: list[str],
    arrays_out: str | Path,
    samples_out: str | Path,
) -> None:
    import pandas as pd

    label_index = {c: i for i, c in enumerate(classes)}
    table = pd.DataFrame([asdict(s) for s in samples])
    table["label_index"] = [label_index.get(s.label, -1) for s in samples]
    table["shape"] = ["x".join(map(str, images[s.id].shape)) for s in samples]
    with atomic_path(arrays_out) as tmp:
        np.savez(
            tmp,
            **{f"image/{k}": v for k, v in images.items()},
            **{f"target/{k}": v for k, v in targets.items()},
        )
    with atomic_path(samples_out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
