"""train: fit one model of one dataset with its task's trainer (snakescope.engine.trainer).

Writes the best weights, the per-epoch history and a model card; a job killed by SLURM or a time limit
resumes from its last finished epoch when it is resubmitted. With `train_processes` above 1 the rule's
process starts that many data-parallel workers (torchrun on one machine, srun under SLURM;
snakescope.engine.distributed), each running `python -m snakescope.train <arguments.json>`, and waits for
them.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from snakescope.config import TrainConfig
from snakescope.engine import distributed
from snakescope.engine.trainer import TrainingData
from snakescope.io import read_json, write_json
from snakescope.tasks import get_task


def fit(
    arrays_store: str,
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
) -> dict | None:
    """Train `cfg.model` and write `model_out`, `history_out` and `card_out`; returns the model card (None
    in a data-parallel worker other than the first).

    Args:
        work_dir: where the resume checkpoint and TensorBoard logs live (default: beside `model_out`).
            It is deliberately not a declared Snakemake output, so a failed job's partial progress
            survives for the retry.
    """
    work_dir = str(work_dir or Path(model_out).parent)
    if cfg.processes > 1 and distributed.from_environment() is None:
        arguments = Path(work_dir) / "distributed_arguments.json"
        write_json({"arrays_store": arrays_store, "samples_tsv": samples_tsv, "split_json": split_json,
                    "plan_json": plan_json, "fingerprint_json": fingerprint_json, "cfg": dataclasses.asdict(cfg),
                    "model_out": model_out, "history_out": history_out, "card_out": card_out,
                    "work_dir": work_dir, "threads": threads}, arguments)
        distributed.launch(cfg.processes, __name__, [str(arguments)])
        return read_json(card_out)
    trainer = get_task(cfg.task).trainer(cfg, threads)
    data = TrainingData(arrays_store, samples_tsv, split_json, plan_json, fingerprint_json)
    return trainer.fit(data, model_out, history_out, card_out, work_dir)


def worker(arguments_json: str) -> None:
    """One data-parallel training process, as `fit` launches it."""
    group = distributed.from_environment() or distributed.SINGLE
    logging.basicConfig(  # into the rule's log, where the launcher sends the workers' output
        level=logging.INFO if group.is_main else logging.WARNING, stream=sys.stderr, force=True,
        format=f"%(asctime)s %(levelname)s rank{group.rank} %(name)s: %(message)s",
    )
    arguments = read_json(arguments_json)
    arguments["cfg"] = TrainConfig(**arguments["cfg"])
    fit(**arguments)


if __name__ == "__main__":
    worker(sys.argv[1])
