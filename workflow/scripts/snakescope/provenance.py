"""provenance: short fingerprints that say which code, settings and data produced a result.

Standard library only, so the Snakefile can import it while parsing (`summary.smk` hashes each run's
settings there) without slowing down `snakemake -n`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
from functools import cache
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


def imported_modules(script: str | Path, package_dir: str | Path) -> list[Path]:
    """The files of the package at `package_dir` that `script` imports, directly or through each other.

    Read from the source, not by importing: imports inside functions count (a rule may call them), as
    does every package whose modules a script reaches (importing `a.b.c` runs `a/__init__.py` and
    `a/b/__init__.py`). A package `__init__` that imports modules by name at run time (importlib, as
    snakescope.tasks does) counts all of its modules.
    """
    package_dir = Path(package_dir).resolve()
    root, package = package_dir.parent, package_dir.name
    seen: set[Path] = set()
    todo = [Path(script).resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name == package or name.startswith(package + "."):
                    todo += _module_files(root, name)
        if path.name == "__init__.py" and "importlib" in {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }:
            todo += sorted(path.parent.rglob("*.py"))
    return sorted(p for p in seen if package_dir in p.parents)


def _module_files(root: Path, dotted: str) -> list[Path]:
    """The package `__init__` files along a dotted name, and its module file when it names a module."""
    parts = dotted.split(".")
    files = [root.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1)]
    files.append(root.joinpath(*parts[:-1], parts[-1] + ".py"))
    return [f for f in files if f.is_file()]


@cache
def code_checksum(script: str | Path, package_dir: str | Path) -> str:
    """16 hex digits over the content of every package file `script` imports (see `imported_modules`):
    a cache key that changes whenever code a rule runs changes."""
    digest = hashlib.sha256()
    package_dir = Path(package_dir).resolve()
    for path in imported_modules(script, package_dir):
        digest.update(str(path.relative_to(package_dir)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]
