"""provenance: short fingerprints that say which code, settings and data produced a result.

Standard library only, so the Snakefile can import it while parsing (`summary.smk` hashes each run's
settings there) without slowing down `snakemake -n`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

# Settings that do not change what one run computes: where the data lies (the dataset checksum covers
# its content) and the lists that enumerate the other runs of the matrix (adding a model must not change
# the hash of the runs already there).
_NOT_HASHED = ("data_dir", "models", "seeds", "results_library")


def _digest(payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_hash(settings: dict, model: str, seed: int) -> str:
    """16 hex digits identifying one run's settings: the dataset's resolved settings, model and seed.

    Args:
        settings: one dataset's settings as `snakescope.config.resolve_datasets` returns them.
    """
    kept = {key: value for key, value in settings.items() if key not in _NOT_HASHED}
    if kept.get("pretrained_weights"):
        kept["pretrained_weights"] = Path(kept["pretrained_weights"]).name
    return _digest({"settings": kept, "model": model, "seed": int(seed)})


def dataset_checksum(fingerprint: dict) -> str:
    """16 hex digits over the per-file SHA-256 checksums that `convert` records in the fingerprint.

    Equal checksums mean the same files (images and targets) under the same sample ids, wherever the
    data lies.
    """
    return _digest(sorted(fingerprint.get("checksums", {}).items()))


def git_commit(directory: str | Path) -> str | None:
    """The commit checked out in `directory`'s repository, suffixed "-dirty" when tracked files have
    uncommitted changes; None when `directory` is not in a git repository or git is missing."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if status else commit
