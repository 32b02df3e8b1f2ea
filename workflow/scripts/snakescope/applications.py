"""applications: the config's `apply:` entries, resolved into what the apply rule reads.

An entry names a trained model and a folder of new images (snakescope.apply does the work). The model
is a run of this workflow, written as ``<dataset>/<model>/seed<seed>`` (Snakemake trains it first when
it is not there yet) or its package ``<dataset>/<model>/seed<seed>/export/package.zip``, a run folder or
``model.pt`` on disk, or a ``package.zip`` that snakescope exported. A run of ours brings its packed data and split, which instance segmentation tunes its
post-processing on; the other sources apply with defaults.
"""

from __future__ import annotations

import re
from pathlib import Path

from snakescope.config import ConfigError, check_threshold, load_schema

RUN = re.compile(r"^(?:results/)?(?P<dataset>[^/]+)/(?P<model>[A-Za-z0-9_]+)/seed(?P<seed>\d+)/?$")
OUR_PACKAGE = re.compile(r"^(?:results/)?(?P<dataset>[^/]+)/(?P<model>[A-Za-z0-9_]+)/seed\d+/export/package\.zip$")
PACKAGE_SUFFIXES = (".zip", "rdf.yaml", "bioimageio.yaml")


def run_files(results: str) -> dict[str, str]:
    """The packed data and split of the dataset whose results lie in `results` (results/<dataset>)."""
    return {"arrays": f"{results}/convert/arrays.zarr", "samples": f"{results}/convert/samples.tsv",
            "split": f"{results}/split/splits.json"}


def resolve_applications(config: dict, datasets: dict, base_dir: Path | None = None) -> dict:
    """``{name: settings}`` of the config's `apply:` entries (the schema has checked their keys).

    Settings: ``model`` (a model.pt or package path), ``images`` (absolute), ``training`` (the run's
    data files, or None), ``mc_samples``, ``threshold``, ``device``, ``seed``.

    Raises:
        ConfigError naming the entry, the value and what it accepts.
    """
    base_dir = Path(base_dir) if base_dir else Path.cwd()
    defaults = load_schema()["$defs"]["settings"]["properties"]
    resolved = {}
    for name, entry in (config.get("apply") or {}).items():
        where = f"apply/{name}"
        images = (base_dir / Path(str(entry["images"])).expanduser()).resolve()
        if not images.is_dir():
            raise ConfigError(f"{where}: images '{entry['images']}' is not a folder ({images}). Give the folder "
                              "holding the new images (relative paths are resolved from the folder you run "
                              "snakemake in).")
        model, training, dataset = _model_source(str(entry["model"]), datasets, base_dir, where)
        settings = datasets.get(dataset, {})
        threshold = entry.get("threshold", settings.get("threshold", defaults["threshold"]["default"]))
        check_threshold(float(threshold) if _is_number(threshold) else threshold, where)
        resolved[name] = {
            "model": model,
            "images": str(images),
            "training": training,
            "mc_samples": int(entry.get("mc_samples", settings.get("mc_samples", defaults["mc_samples"]["default"]))),
            "threshold": float(threshold) if _is_number(threshold) else threshold,
            "device": entry.get("device", settings.get("device", defaults["device"]["default"])),
            "seed": int(RUN.match(str(entry["model"])).group("seed")) if RUN.match(str(entry["model"])) else 0,
        }
    return resolved


def _model_source(value: str, datasets: dict, base_dir: Path, where: str) -> tuple[str, dict | None, str]:
    """(model file, the run's data files or None, the dataset name or "") of an entry's `model`."""
    run = RUN.match(value)
    if run and run["dataset"] in datasets:  # a run of this workflow: built if missing
        results = f"results/{run['dataset']}/{run['model']}/seed{run['seed']}"
        return f"{results}/train/model.pt", run_files(f"results/{run['dataset']}"), run["dataset"]
    package = OUR_PACKAGE.match(value)
    if package and package["dataset"] in datasets:  # exported by this workflow: built if missing
        return f"results/{value.removeprefix('results/')}", None, package["dataset"]
    path = (base_dir / Path(value).expanduser()).resolve()
    if path.is_dir() and (path / "train" / "model.pt").is_file():
        data = run_files(str(path.parent.parent))  # results/<dataset>/<model>/seed<n> -> results/<dataset>
        training = data if all(Path(f).is_file() for f in data.values()) else None
        return str(path / "train" / "model.pt"), training, ""
    if path.is_file() and (path.suffix == ".pt" or path.name.endswith(PACKAGE_SUFFIXES)):
        return str(path), None, ""
    known = ", ".join(sorted(datasets)) or "none in this config"
    raise ConfigError(
        f"{where}: model '{value}' is neither a run of this workflow (<dataset>/<model>/seed<seed>; datasets: "
        f"{known}) nor an existing run folder, model.pt or package.zip ({path}). Give one of these."
    )


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
