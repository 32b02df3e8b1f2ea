"""evaluate: metrics and figures on the test set, beside a trivial baseline for scale.

The baseline is what a model that learned nothing would score (the majority class, the most frequent
pixel class, the noisy input, Otsu's threshold: each task says which). A useful model beats it; the
report shows both.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from snakescope.io import read_json, read_samples, write_json, write_table
from snakescope.tasks import get_task

log = logging.getLogger(__name__)


def evaluate_run(predict_dir: str, arrays_store: str, samples_tsv: str, split_json: str, fingerprint_json: str,
                 out_dir: str, run_info: dict | None = None) -> dict:
    """Write metrics.json, metrics.tsv, per_sample.tsv and figures/ for one trained model."""
    import matplotlib

    matplotlib.use("Agg")
    fingerprint = read_json(fingerprint_json)
    split = read_json(split_json)
    samples = read_samples(samples_tsv)
    predictions = pd.read_csv(Path(predict_dir) / "predictions.csv", dtype={"id": str, "predicted_label": str})
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    predictions = predictions[predictions["id"].isin(set(split["test"]))]
    task = get_task(fingerprint["task"])
    metrics, per_sample = task.evaluate(predictions, Path(predict_dir), arrays_store, samples, split, fingerprint,
                                        out / "figures")
    record = {**(run_info or {}), "task": fingerprint["task"], "n_test": int(len(predictions)), **metrics}
    write_json(record, out / "metrics.json")
    write_table(pd.DataFrame([record]), out / "metrics.tsv")
    write_table(per_sample, out / "per_sample.tsv")
    log.info("metrics: %s", {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    return record
