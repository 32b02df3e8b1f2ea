"""convert: find the user's images and ground truth, check them, and pack them for fast training.

The stage in five steps, one module each: `discover` the samples in the user's layout (`fields` for
the layouts of regression and 3D data), `read` their pixels and ground truth, `validate` the dataset as
a whole, compute its `fingerprint`, and `pack` it. Everything is read and checked before anything is
written, and every problem found is reported at once, so a user fixes the data in one pass rather than
one file per run. Nothing in `data_dir` is ever written.

Outputs in ``results/<dataset>/convert/``: ``arrays.zarr`` and ``samples.tsv`` (snakescope.convert.pack)
and ``fingerprint.json`` (snakescope.convert.fingerprint).
"""

from __future__ import annotations

import functools
import itertools
import logging
import tempfile
from pathlib import Path

from snakescope.convert.discover import discover_samples, list_input_files
from snakescope.convert.fields import parse_key_values
from snakescope.convert.fingerprint import dataset_fingerprint
from snakescope.convert.pack import write_packed
from snakescope.convert.read import read_dataset, read_sample_image, tile_samples
from snakescope.convert.samples import Sample
from snakescope.convert.validate import channel_count_errors, constant_images, raise_if_any
from snakescope.io import write_json
from snakescope.resources import MEMORY_SHARE, usable_memory_bytes
from snakescope.store import SpilledArrays
from snakescope.tasks import get_task

log = logging.getLogger(__name__)

__all__ = ["Sample", "convert_dataset", "discover_samples", "list_input_files", "parse_key_values",
           "read_sample_image", "tile_samples"]


def convert_dataset(
    settings: dict, arrays_out: str | Path, samples_out: str | Path, fingerprint_out: str | Path
) -> dict:
    """Check and pack one dataset; returns the fingerprint."""
    task = get_task(settings["task"])
    samples = discover_samples(settings)
    log.info("found %d images in %s", len(samples), settings["data_dir"])
    # The pixels read are held until the checks pass: in memory up to a share of it, beyond that on disk
    # beside the output (snakescope.store.SpilledArrays), so a dataset larger than memory converts.
    Path(arrays_out).parent.mkdir(parents=True, exist_ok=True)
    budget = int(MEMORY_SHARE * usable_memory_bytes())
    with tempfile.TemporaryDirectory(prefix=".convert-scratch-", dir=Path(arrays_out).parent) as scratch:
        # images and targets take half the budget each; tiles get new halves while the untiled images,
        # dropped once cut, are freed
        spilled = (SpilledArrays(Path(scratch) / str(n), budget // 2) for n in itertools.count())
        images, targets, raw_dtypes, errors = read_dataset(samples, task, settings, next(spilled), next(spilled))
        layout = settings.get("layout") or {}
        if layout.get("tile_size") and not errors:
            samples, images, targets = tile_samples(
                samples, images, targets, layout["tile_size"], layout.get("test_right_fraction"),
                new_mapping=lambda: next(spilled),
            )
        blank, constant_warnings = constant_images(samples, images)
        raise_if_any(errors + channel_count_errors(samples, images) + blank
                     + task.check_targets(samples, targets, settings))
        for warning in constant_warnings:
            log.warning(warning)
        targets, facts = task.prepare_targets(targets)
        fingerprint = dataset_fingerprint(settings, samples, images, raw_dtypes)
        fingerprint.update(facts)
        fingerprint.update(task.fingerprint(settings, samples, targets, fingerprint["spatial_dims"]))
        write_packed(samples, images, targets, fingerprint.get("classes", []), arrays_out, samples_out,
                     encode_target=functools.partial(task.encode_target, fingerprint=fingerprint))
    write_json(fingerprint, fingerprint_out)
    return fingerprint
