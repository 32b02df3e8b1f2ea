"""predict: apply a trained model to the test set.

Each task writes its own outputs per image (snakescope.tasks: class probabilities, masks and
probability maps, instance label images, regression TIFFs); every task writes ``predictions.csv`` (one
row per image: id, filename, the output files and values) and ``timing.json`` (inference speed, peak
memory, hardware, versions; snakescope.engine.timing).

Images are read from the store one batch at a time, so memory does not grow with the test set; only
the first `TIMED_IMAGES` stay in memory, for the timing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import torch

from snakescope.engine.runtime import autocast_dtype, select_device
from snakescope.engine.timing import end_to_end_timing, time_model, write_timing
from snakescope.io import read_json, read_samples, write_table
from snakescope.logs import PROGRESS
from snakescope.tasks import get_task, load_trained
from snakescope.tasks.base import InferenceData

log = logging.getLogger(__name__)

TIMED_IMAGES = 16  # images kept in memory for `time_model`


def predict_dataset(model_pt: str, arrays_store: str, samples_tsv: str, split_json: str, out_dir: str,
                    threshold: str | float = "otsu", device: str = "auto", threads: int = 1) -> pd.DataFrame:
    """Predict every test image (labelled or not) and write the outputs described in the module doc."""
    torch.set_num_threads(max(1, threads))
    torch_device = select_device(device)
    model, payload = load_trained(model_pt, torch_device)
    plan = payload["plan"]
    task = get_task(plan["task"])
    split = read_json(split_json)
    samples = read_samples(samples_tsv)
    predictor = task.predictor(model, payload, InferenceData(arrays_store, samples, split), threshold, torch_device)
    ids = split["test"] + split.get("unlabelled_test", [])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = samples.set_index("id")["image"]
    rows, seconds, timed_items = [], [], []
    started = time.perf_counter()
    for start in range(0, len(ids), predictor.batch_size):
        chunk = task.load_items(arrays_store, samples, ids[start:start + predictor.batch_size], plan)
        timed_items += chunk[:TIMED_IMAGES - len(timed_items)]
        chunk_started = time.perf_counter()
        for row in predictor.predict(chunk, out):
            sample_id = row.pop("id")
            rows.append({"id": sample_id, "filename": Path(files[sample_id]).name, **row})
        seconds += [(time.perf_counter() - chunk_started) / len(chunk)] * len(chunk)
        done = start + len(chunk)
        if done % 10 < len(chunk) or done == len(ids):
            log.info("predicted %d/%d images", done, len(ids), extra=PROGRESS)
    total = time.perf_counter() - started
    log.info("predicted %d images in %.1f s (%.3f s per image)", len(ids), total, total / max(len(ids), 1))
    table = pd.DataFrame(rows)
    write_table(table, out / "predictions.csv")
    timing = (end_to_end_timing(seconds) if predictor.times_itself
              else time_model(model, plan, timed_items, torch_device, autocast_dtype(torch_device),
                              max_images=TIMED_IMAGES))
    write_timing(model, timing, torch_device, out / "timing.json")
    return table
