"""convert: find the user's images and ground truth, check them, and pack them for fast training.

The stage in five steps, one module each: `discover` the samples in the user's layout (`fields` for
the layouts of regression and 3D data), `read` their pixels and ground truth, `validate` the dataset as
a whole, compute its `fingerprint`, and `pack` it. Everything is read and checked before anything is
written, and every problem found is reported at once, so a user fixes the data in one pass rather than
one file per run. Nothing in `data_dir` is ever written.

Outputs in ``results/<dataset>/convert/``: ``arrays.zarr`` and ``samples.tsv`` (snakescope.convert.pack)
and ``fingerprint.json`` (snakescope.convert.fingerprint). A large dataset is read in shards, separate
jobs gathered into the same outputs (snakescope.convert.shards).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import tempfile
from pathlib import Path

from snakescope.convert.discover import discover_samples, list_input_files
from snakescope.convert.fields import parse_key_values
from snakescope.convert.fingerprint import dataset_fingerprint, sample_checksums, summarise_images
from snakescope.convert.pack import write_packed
from snakescope.convert.read import read_dataset, read_sample_image, read_tiles, tile_regions
from snakescope.convert.samples import Sample
from snakescope.convert.shards import read_shards, shard_count, shard_samples, write_shard
from snakescope.convert.validate import channel_count_errors, constant_images, raise_if_any
from snakescope.io import write_json
from snakescope.resources import MEMORY_SHARE, usable_memory_bytes
from snakescope.store import SpilledArrays
from snakescope.tasks import get_task

log = logging.getLogger(__name__)

# convert holds what it reads in memory up to this share of the memory it may use, half the share a
# training set may take (MEMORY_SHARE): spilling the rest costs no measurable time (the scratch store is
# read back from the page cache), and the smaller share is already filled by a few hundred images, so
# convert's peak stays about flat as a dataset grows (bench/scale.py, docs/performance.md).
HELD_SHARE = MEMORY_SHARE / 2

__all__ = ["Sample", "convert_dataset", "convert_shard", "discover_samples", "gather_shards", "list_input_files",
           "parse_key_values", "read_sample_image", "shard_count", "tile_regions"]


def convert_dataset(
    settings: dict, arrays_out: str | Path, samples_out: str | Path, fingerprint_out: str | Path
) -> dict:
    """Check and pack one dataset; returns the fingerprint."""
    task = get_task(settings["task"])
    samples = discover_samples(settings)
    log.info("found %d images in %s", len(samples), settings["data_dir"])
    with _held_arrays(arrays_out) as spilled:
        samples, images, targets, raw_dtypes, errors = _read_samples(samples, task, settings, spilled)
        fingerprint = _check_and_pack(settings, task, samples, images, targets, raw_dtypes, errors,
                                      sample_checksums(samples), arrays_out, samples_out)
    write_json(fingerprint, fingerprint_out)
    return fingerprint


def convert_shard(settings: dict, shard: int, shards: int, shard_size: int, shard_out: str | Path) -> None:
    """Read and check shard `shard` of `shards` (samples shard·size … (shard+1)·size − 1) into `shard_out`
    (snakescope.convert.shards); the problems found are kept for the gather step, which reports those of
    every shard at once."""
    task = get_task(settings["task"])
    found = discover_samples(settings)
    samples = shard_samples(found, shard, shard_size, shards)
    log.info("shard %d of %d: images %d-%d of the %d in %s", shard + 1, shards, shard * shard_size + 1,
             shard * shard_size + len(samples), len(found), settings["data_dir"])
    with _held_arrays(shard_out) as spilled:
        samples, images, targets, raw_dtypes, errors = _read_samples(samples, task, settings, spilled)
        write_shard(shard_out, samples, images, targets, raw_dtypes, errors, sample_checksums(samples),
                    summarise_images(images))


def gather_shards(
    settings: dict, shard_dirs: list[str | Path], arrays_out: str | Path, samples_out: str | Path,
    fingerprint_out: str | Path,
) -> dict:
    """Check the dataset that `convert_shard` read in parts as a whole and pack it, as `convert_dataset`
    would have (the same store, table and fingerprint); returns the fingerprint."""
    task = get_task(settings["task"])
    with _held_arrays(arrays_out) as spilled:
        shards = read_shards(shard_dirs, next(spilled))
        log.info("gathered %d images from %d convert shards", len(shards.samples), len(shard_dirs))
        fingerprint = _check_and_pack(settings, task, shards.samples, shards.images, shards.targets,
                                      shards.source_dtypes, shards.errors, shards.checksums, arrays_out, samples_out,
                                      shards.summaries)
    write_json(fingerprint, fingerprint_out)
    return fingerprint


@contextlib.contextmanager
def _held_arrays(out: str | Path):
    """New mappings for the pixels read, held until the checks pass: in memory up to HELD_SHARE, beyond
    that on disk in a scratch folder beside `out` (snakescope.store.SpilledArrays), removed at the end, so
    a dataset larger than memory converts. Images and targets take half the budget each."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    budget = int(HELD_SHARE * usable_memory_bytes())
    with tempfile.TemporaryDirectory(prefix=".convert-scratch-", dir=Path(out).parent) as scratch:
        yield (SpilledArrays(Path(scratch) / str(n), budget // 2) for n in itertools.count())


def _read_samples(samples, task, settings, spilled):
    """Every sample's pixels and ground truth, cut into tiles when the layout says so:
    (samples, images, targets, source dtypes, problems)."""
    if (settings.get("layout") or {}).get("tile_size"):
        return read_tiles(samples, task, settings, next(spilled), next(spilled))
    images, targets, raw_dtypes, errors = read_dataset(samples, task, settings, next(spilled), next(spilled))
    return samples, images, targets, raw_dtypes, errors


def _check_and_pack(settings, task, samples, images, targets, raw_dtypes, errors, checksums, arrays_out,
                    samples_out, summaries=None) -> dict:
    """The checks across the dataset, then its fingerprint and the store; returns the fingerprint.
    `summaries`: the images' (`summarise_images`), when the shards computed them.

    Raises:
        InputError listing every problem found, in the files and across them.
    """
    if summaries is None:
        summaries = summarise_images(images)  # the one read of every image the checks need
    blank, constant_warnings = constant_images(samples, summaries)
    raise_if_any(errors + channel_count_errors(samples, summaries) + blank
                 + task.check_targets(samples, targets, settings))
    for warning in constant_warnings:
        log.warning(warning)
    targets, facts = task.prepare_targets(targets)
    fingerprint = dataset_fingerprint(settings, samples, images, summaries, raw_dtypes, checksums)
    fingerprint.update(facts)
    fingerprint.update(task.fingerprint(settings, samples, targets, fingerprint["spatial_dims"]))
    write_packed(samples, images, targets, fingerprint.get("classes", []), arrays_out, samples_out,
                 encode_target=functools.partial(task.encode_target, fingerprint=fingerprint))
    return fingerprint
