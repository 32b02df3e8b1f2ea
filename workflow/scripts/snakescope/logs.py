"""logs: send a rule's logging and tracebacks to its Snakemake log file, and record where it ran."""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
from pathlib import Path

log = logging.getLogger(__name__)

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_JOB_GPUS", "SLURM_CPUS_PER_TASK", "CUDA_VISIBLE_DEVICES")


def log_to_file(path: str | Path, level: int = logging.INFO) -> None:
    """Configure logging once for a rule: to the rule's log file (appended, line-buffered) and stderr.

    stderr itself is redirected to the log too, so an uncaught traceback lands where
    `snakemake --show-failed-logs` prints it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    sys.stderr = stream
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(stream)],
        force=True,
    )
    log_provenance()


def run_context() -> dict:
    """Where this process runs: host, Python, and SLURM job id / partition / GPUs when under SLURM."""
    context = {"host": socket.gethostname(), "python": platform.python_version(), "pid": os.getpid()}
    context.update({name: os.environ[name] for name in SLURM_VARIABLES if name in os.environ})
    return context


def log_provenance() -> None:
    context = run_context()
    log.info("running on %s", " ".join(f"{k}={v}" for k, v in context.items()))
