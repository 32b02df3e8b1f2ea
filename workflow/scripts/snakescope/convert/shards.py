"""shards: a large dataset converted in parts, each a Snakemake job of its own, then gathered.

A dataset of more than `convert_shard_size` samples converts in shards: shard k reads and checks
samples k·size … (k+1)·size − 1 of the discovered list (`shard_samples`) and writes what it read to its
own folder (`write_shard`): the images and ground truth exactly as read, in a store (snakescope.store),
its sample table, and what the whole-dataset checks need of it (the problems found in its files, the
source dtypes, the files' checksums, each image's summary: shape, mean, whether constant). Shards run in parallel (on several nodes under profiles/slurm)
and each is cached on its own. The gather step (snakescope.convert.gather_shards) then checks the
dataset as a whole and packs it as one unsharded convert would, reading the shards' images on demand
(`ShardImages`; once each, for the fingerprint's intensity samples, which one generator draws across
the dataset) and linking their chunk files into the final store instead of compressing them again.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from snakescope.convert.discover import discover_samples
from snakescope.convert.fingerprint import ImageSummary
from snakescope.convert.samples import MULTI_FILE_SEPARATOR, Sample
from snakescope.io import InputError, atomic_directory
from snakescope.store import StoredImage, open_store, write_store

SHARD_STORE, SHARD_SAMPLES, SHARD_FACTS = "arrays.zarr", "samples.tsv", "read.json"


def shard_count(n_samples: int, shard_size: int) -> int:
    """How many shards `n_samples` samples make, at most `shard_size` each (at least one)."""
    return max(1, math.ceil(n_samples / shard_size))


def shard_samples(samples: list[Sample], shard: int, shard_size: int, shards: int) -> list[Sample]:
    """Shard `shard`'s slice of the discovered samples.

    Raises:
        InputError when the samples no longer make `shards` shards: the data folder changed after the
        workflow planned its jobs.
    """
    if shard_count(len(samples), shard_size) != shards:
        raise InputError(
            f"the data folder now holds {len(samples)} samples, which make "
            f"{shard_count(len(samples), shard_size)} convert shard(s) of {shard_size}, not the {shards} this "
            "run planned: files were added or removed while it ran. Run snakemake again."
        )
    return samples[shard * shard_size : (shard + 1) * shard_size]


def plan_shards(settings: dict, input_files: Sequence[str]) -> list[list[Sample]]:
    """The samples of each shard of a dataset, for the workflow to make one job per shard when it builds
    its DAG; [] when one convert job reads the dataset (no more samples than `convert_shard_size`, or a
    mistake in the data folder, which that job then reports). `input_files`: `list_input_files`'."""
    size = settings["convert_shard_size"]
    if len(input_files) <= size:  # no more samples than files: no need to pair them
        return []
    try:
        samples = discover_samples(settings)
    except InputError:
        return []
    shards = shard_count(len(samples), size)
    return [shard_samples(samples, k, size, shards) for k in range(shards)] if shards > 1 else []


def shard_input_files(samples: list[Sample], dataset_files: Sequence[str]) -> list[str]:
    """A shard job's input: its samples' files (every file of an OME-Zarr folder, so that a label painted
    in napari is noticed) and the dataset's tables (label CSVs, dataset.json), which every shard reads."""
    paths = [Path(f) for s in samples for f in (*s.image.split(MULTI_FILE_SEPARATOR), s.target) if f]
    files = [str(f) for p in paths for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file()]
    tables = [f for f in dataset_files if Path(f).suffix.lower() in (".csv", ".json")]
    return sorted(set(files + tables))


def write_shard(
    out_dir: str | Path,
    samples: list[Sample],
    images: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    source_dtypes: Counter,
    errors: list[str],
    checksums: dict[str, str],
    summaries: Mapping[str, ImageSummary],
) -> None:
    """One shard's folder, written beside its final name and renamed when complete: the store of the
    samples that could be read, the table of every sample, and the facts the gather step needs (with
    each image's summary, so that gathering reads each image once, for the intensity samples)."""
    import pandas as pd

    with atomic_directory(out_dir) as tmp:
        with write_store(tmp / SHARD_STORE) as store:
            for sample in samples:
                if sample.id in images:
                    store.add(sample.id, images[sample.id], targets.get(sample.id))
        pd.DataFrame([asdict(s) for s in samples], columns=list(Sample.__dataclass_fields__)).to_csv(
            tmp / SHARD_SAMPLES, sep="\t", index=False
        )
        facts = {"errors": errors, "source_dtypes": dict(source_dtypes), "checksums": checksums,
                 "summaries": {key: asdict(summary) for key, summary in summaries.items()}}
        (tmp / SHARD_FACTS).write_text(json.dumps(facts, indent=1))


class _ShardArrays(Mapping):
    """The shards' arrays of one kind ("image/" or "target/") by sample id, read from their stores when
    asked for (nothing held)."""

    def __init__(self, stores: list, prefix: str):
        self.prefix = prefix
        self.where = {key.removeprefix(prefix): store for store in stores for key in store.keys()
                      if key.startswith(prefix)}

    def __getitem__(self, sample_id: str) -> np.ndarray:
        return self.where[sample_id][self.prefix + sample_id]

    def __contains__(self, sample_id) -> bool:
        return sample_id in self.where

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)


class ShardImages(_ShardArrays):
    """The shards' images; `stored(id)` names the array on disk, for linking into the final store."""

    def __init__(self, stores: list):
        super().__init__(stores, "image/")

    def stored(self, sample_id: str) -> StoredImage:
        store, key = self.where[sample_id], self.prefix + sample_id
        return StoredImage(store.path / store.locations[key], store.shape(key))


class ShardTargets(_ShardArrays, MutableMapping):
    """The shards' targets; a target set here (a task's `prepare_targets` deriving instances from binary
    masks) goes to `rewritten` instead, which wins."""

    def __init__(self, stores: list, rewritten: MutableMapping):
        super().__init__(stores, "target/")
        self.rewritten = rewritten

    def __getitem__(self, sample_id: str) -> np.ndarray:
        return self.rewritten[sample_id] if sample_id in self.rewritten else super().__getitem__(sample_id)

    def __setitem__(self, sample_id: str, target: np.ndarray) -> None:
        if sample_id not in self.where:
            raise KeyError(f"{sample_id} has no target in the shards")
        self.rewritten[sample_id] = target

    def __delitem__(self, sample_id: str) -> None:
        del self.where[sample_id]
        self.rewritten.pop(sample_id, None)


@dataclass(frozen=True)
class GatheredShards:
    """What the shards read, as one convert would have it: samples in order, images and targets (read on
    demand; targets the task rewrites go to the mapping given to `read_shards`), source dtypes,
    problems, checksums and image summaries."""

    samples: list[Sample]
    images: ShardImages
    targets: ShardTargets
    source_dtypes: Counter
    errors: list[str]
    checksums: dict[str, str]
    summaries: dict[str, ImageSummary]


def read_shards(shard_dirs: list[str | Path], rewritten: MutableMapping) -> GatheredShards:
    """The shards in `shard_dirs`, in order (see `GatheredShards`)."""
    import pandas as pd

    samples: list[Sample] = []
    stores, source_dtypes, errors, checksums, summaries = [], Counter(), [], {}, {}
    for shard_dir in map(Path, shard_dirs):
        table = pd.read_csv(shard_dir / SHARD_SAMPLES, sep="\t", dtype=str, keep_default_na=False)
        samples += [Sample(**row) for row in table.to_dict("records")]
        facts = json.loads((shard_dir / SHARD_FACTS).read_text())
        errors += facts["errors"]
        source_dtypes.update(facts["source_dtypes"])
        checksums.update(facts["checksums"])
        summaries.update({key: ImageSummary(**{**summary, "shape": tuple(summary["shape"])})
                          for key, summary in facts["summaries"].items()})
        stores.append(open_store(shard_dir / SHARD_STORE))
    # as one convert lists them: the images' checksums, then the targets'
    checksums = dict(sorted(checksums.items(), key=lambda item: item[0].endswith(":target")))
    images = ShardImages(stores)
    return GatheredShards(samples, images, ShardTargets(stores, rewritten), source_dtypes, errors, checksums,
                          {key: summaries[key] for key in images})  # in the images' order, as summarise_images
