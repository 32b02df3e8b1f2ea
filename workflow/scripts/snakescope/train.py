"""train: fit one model of one dataset with its task's trainer (snakescope.engine.trainer).

Writes the best weights, the per-epoch history and a model card; a job killed by SLURM or a time limit
resumes from its last finished epoch when it is resubmitted.
"""

from __future__ import annotations

from snakescope.config import TrainConfig
from snakescope.engine.trainer import TrainingData
from snakescope.tasks import get_task


def fit(
    arrays_npz: str,
    samples_tsv: str,
    split_json: str,
    plan_json: str,
    fingerprint_json: str,
    cfg: TrainConfig,
    model_out: str,
    history_out: str,
    card_out: str,
    work_dir: str | None = None,
    threads: int = 1,
) -> dict:
    """Train `cfg.model` and write `model_out`, `history_out` and `card_out`; returns the model card.

    Args:
        work_dir: where the resume checkpoint and TensorBoard logs live (default: beside `model_out`).
            It is deliberately not a declared Snakemake output, so a failed job's partial progress
            survives for the retry.
    """
    trainer = get_task(cfg.task).trainer(cfg, threads)
    data = TrainingData(arrays_npz, samples_tsv, split_json, plan_json, fingerprint_json)
    return trainer.fit(data, model_out, history_out, card_out, work_dir)
