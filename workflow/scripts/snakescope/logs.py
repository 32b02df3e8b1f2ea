"""logs: send a rule's logging and tracebacks to its Snakemake log file, and record where it ran.

What a user reads is kept apart from what a developer reads: a user's mistake (snakescope.io.UserError:
bad data, a wrong setting) ends the rule with its message alone, the traceback going to
``<log>.traceback``; warnings about the data are shown on the console as they happen (the job's own
stderr: the terminal of a local run) and repeated in a summary when the workflow ends
(`warning_summary`).
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import traceback
from pathlib import Path

from snakescope.io import UserError

log = logging.getLogger(__name__)

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_JOB_GPUS", "SLURM_CPUS_PER_TASK", "CUDA_VISIBLE_DEVICES")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WARNING_MARK = " WARNING snakescope."  # how `warning_summary` finds snakescope's warnings in the logs
PROGRESS = {"progress": True}  # `extra=` of an INFO record shown on the console too: a long step's progress


def log_to_file(path: str | Path, level: int = logging.INFO) -> None:
    """Configure logging once for a rule: to the rule's log file (appended, line-buffered), warnings also
    to the console.

    stderr itself is redirected to the log too, so an unexpected error's traceback lands where
    `snakemake --show-failed-logs` prints it; a UserError leaves its message there instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    console = logging.StreamHandler(sys.__stderr__)
    console.addFilter(lambda record: record.levelno >= logging.WARNING or getattr(record, "progress", False))
    console.setFormatter(_ConsoleFormatter(_job_label(path)))
    sys.stderr = stream
    logging.basicConfig(level=level, format=FORMAT, handlers=[logging.StreamHandler(stream), console], force=True)
    sys.excepthook = _user_errors_without_traceback(path)
    log_provenance()


def _job_label(log_path: Path) -> str:
    """'cells/unet/seed0/train' for logs/cells/unet/seed0/train.log: which job a console line is from."""
    parts = log_path.with_suffix("").parts
    return "/".join(parts[parts.index("logs") + 1:] if "logs" in parts else parts[-1:])


class _ConsoleFormatter(logging.Formatter):
    """Warnings as 'snakescope: message'; progress as 'snakescope [job]: message' (jobs run side by side)."""

    def __init__(self, job: str):
        super().__init__()
        self.job = job

    def format(self, record: logging.LogRecord) -> str:
        where = f" [{self.job}]" if getattr(record, "progress", False) else ""
        return f"snakescope{where}: {record.getMessage()}"


def _user_errors_without_traceback(log_path: Path):
    def hook(kind, error, tb):
        if not issubclass(kind, UserError):
            sys.__excepthook__(kind, error, tb)
            return
        traceback_path = log_path.with_name(log_path.name + ".traceback")
        with open(traceback_path, "w") as fh:
            traceback.print_exception(kind, error, tb, file=fh)
        print(f"ERROR: {error}\n(the traceback, for developers: {traceback_path})", file=sys.stderr, flush=True)

    return hook


def run_context() -> dict:
    """Where this process runs: host, Python, and SLURM job id / partition / GPUs when under SLURM."""
    context = {"host": socket.gethostname(), "python": platform.python_version(), "pid": os.getpid()}
    context.update({name: os.environ[name] for name in SLURM_VARIABLES if name in os.environ})
    return context


def log_provenance() -> None:
    context = run_context()
    log.info("running on %s", " ".join(f"{k}={v}" for k, v in context.items()))


def warning_summary(log_dir: str | Path, since: float = 0.0) -> str:
    """The snakescope warnings in the rule logs under `log_dir` written since `since` (a timestamp), one
    line each with the rule log it came from; "" when there are none."""
    lines = {}
    for path in sorted(Path(log_dir).rglob("*.log")):
        if path.stat().st_mtime < since:
            continue
        for line in path.read_text(errors="replace").splitlines():
            if WARNING_MARK in line:
                message = line.split(": ", 1)[1] if ": " in line else line
                lines.setdefault(message, path)
    if not lines:
        return ""
    shown = "\n".join(f"  - {message}  [{path}]" for message, path in lines.items())
    return f"snakescope: {len(lines)} warning(s) about the data or settings of this run:\n{shown}"
