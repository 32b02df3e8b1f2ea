"""Configuration: schema validation, defaults, and one resolved settings dict per dataset.

The user writes either the two required keys (`task`, `data_dir`) or a `datasets:` mapping; optional
keys may sit at the top level (for every dataset) or inside one dataset's entry (for that one only).
`resolve_datasets` turns both forms into ``{name: settings}`` with every default filled in, so rules
and package functions never guess.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"

TASKS = ("classification", "segmentation", "instance_segmentation", "regression")
DEFAULT_MODEL = {
    "classification": "resnet50",
    "segmentation": "unet",
    "instance_segmentation": "unet",
    "regression": "unet",
}
DEFAULT_LOSS = {
    "classification": "cross_entropy",
    "segmentation": "dice_cross_entropy",
    "instance_segmentation": "dice_cross_entropy",
    "regression": "mse",
}
DEFAULT_CLASSIFICATION_RESIZE = [224, 224]


class ConfigError(ValueError):
    """A configuration value is missing, misspelt or out of range; the message says which and how to fix it."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _settings_properties(schema: dict) -> dict:
    return schema["$defs"]["settings"]["properties"]


def _check_known_keys(entry: dict, known: set[str], where: str) -> None:
    for key in entry:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{where}: unknown key '{key}'.{hint} Allowed keys: {', '.join(sorted(known))}."
            )


def _validate(config: dict, schema: dict) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors[:5]:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            if error.validator in ("anyOf", "required") and not error.absolute_path:
                lines.append("the config needs `task` and `data_dir`, or a `datasets:` mapping")
            else:
                lines.append(f"{where}: {error.message}")
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(lines))


def resolve_datasets(config: dict, schema: dict | None = None, base_dir: Path | None = None) -> dict:
    """Validate `config` and return ``{dataset_name: settings}`` with every default filled in.

    Args:
        config: the Snakemake config dict (not modified).
        schema: the parsed config schema; read from workflow/schemas when None.
        base_dir: folder relative `data_dir` and `pretrained_weights` paths are resolved against
            (the working directory when None).

    Raises:
        ConfigError naming the offending key, its value and what is allowed.
    """
    schema = schema or load_schema()
    properties = _settings_properties(schema)
    known = set(properties) | {"datasets"}
    _check_known_keys(config, known, "config")
    for name, entry in (config.get("datasets") or {}).items():
        if isinstance(entry, dict):
            _check_known_keys(entry, set(properties), f"datasets/{name}")
    _validate(config, schema)

    global_settings = {k: copy.deepcopy(v) for k, v in config.items() if k != "datasets"}
    if config.get("datasets"):
        if "data_dir" in config:
            raise ConfigError(
                "config: give either top-level `data_dir` or a `datasets:` mapping, not both; "
                "move the top-level data_dir into a dataset entry."
            )
        entries = {name: {**global_settings, **copy.deepcopy(e)} for name, e in config["datasets"].items()}
    else:
        entries = {Path(str(config["data_dir"])).name or "data": global_settings}

    base_dir = Path(base_dir) if base_dir else Path.cwd()
    layout_defaults = {k: v["default"] for k, v in schema["$defs"]["layout"]["properties"].items() if "default" in v}
    return {
        name: _fill_defaults(name, entry, properties, layout_defaults, base_dir) for name, entry in entries.items()
    }


def _fill_defaults(name: str, entry: dict, properties: dict, layout_defaults: dict, base_dir: Path) -> dict:
    settings = {key: copy.deepcopy(spec["default"]) for key, spec in properties.items() if "default" in spec}
    settings.update(entry)
    task = settings["task"]
    settings["name"] = name
    settings.setdefault("models", [DEFAULT_MODEL[task]])
    settings.setdefault("loss", DEFAULT_LOSS[task])
    settings.setdefault("seeds", [settings["seed"]])
    settings["layout"] = {**layout_defaults, **settings.get("layout", {})}
    if task == "classification" and settings["resize"] is None:
        settings["resize"] = list(DEFAULT_CLASSIFICATION_RESIZE)
    settings["data_dir"] = str((base_dir / settings["data_dir"]).resolve())
    if settings["pretrained_weights"]:
        settings["pretrained_weights"] = str((base_dir / settings["pretrained_weights"]).resolve())
    if task == "classification" and settings["loss"] not in ("cross_entropy", "focal"):
        raise ConfigError(
            f"datasets/{name}: loss '{settings['loss']}' does not suit classification; use cross_entropy or focal."
        )
    if task == "regression" and settings["loss"] not in ("mse", "l1"):
        raise ConfigError(f"datasets/{name}: loss '{settings['loss']}' does not suit regression; use mse or l1.")
    threshold = settings["threshold"]
    if isinstance(threshold, str) and threshold != "otsu":
        raise ConfigError(f"datasets/{name}: threshold must be 'otsu' or a number in (0, 1), got '{threshold}'.")
    if not isinstance(threshold, str) and not 0 < threshold < 1:
        raise ConfigError(f"datasets/{name}: threshold must be in (0, 1), got {threshold}.")
    return settings


@dataclass(frozen=True)
class TrainConfig:
    """The training settings the `train` rule needs, typed."""

    task: str
    model: str
    seed: int
    batch_size: int
    epochs: int
    patience: int
    learning_rate: float
    loss: str
    augmentations: tuple[str, ...]
    normalisation: str
    patch_size: tuple[int, ...]
    dropout: float
    pretrained_weights: str | None = None
    max_batches_per_epoch: int | None = None
    device: str = "auto"

    @classmethod
    def from_settings(cls, settings: dict[str, Any], model: str, seed: int) -> TrainConfig:
        return cls(
            task=settings["task"],
            model=model,
            seed=int(seed),
            batch_size=settings["batch_size"],
            epochs=settings["epochs"],
            patience=settings["patience"],
            learning_rate=float(settings["learning_rate"]),
            loss=settings["loss"],
            augmentations=tuple(settings["augmentations"]),
            normalisation=settings["normalisation"],
            patch_size=tuple(settings["patch_size"]),
            dropout=float(settings["dropout"]),
            pretrained_weights=settings.get("pretrained_weights"),
            max_batches_per_epoch=settings.get("max_batches_per_epoch"),
            device=settings.get("device", "auto"),
        )


# Which settings each rule depends on. A rule receives only these as `params`, so Snakemake reruns a
# stage when one of its own settings changes (e.g. `epochs` retrains) but not for another stage's
# (changing `epochs` does not reconvert the data).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "convert": ("name", "task", "data_dir", "layout", "classes", "num_classes", "resize", "patch_size", "group_column"),
    "split": ("task", "seed", "test_fraction", "val_fraction"),
    "augment": ("name", "task", "seed", "normalisation", "augmentations", "patch_size"),
    "train": ("task", "batch_size", "epochs", "patience", "learning_rate", "loss", "augmentations", "normalisation",
              "patch_size", "dropout", "pretrained_weights", "max_batches_per_epoch", "device"),
    "predict": ("threshold", "device"),
    "uncertainty": ("mc_samples", "device"),
}


def stage_settings(settings: dict, stage: str) -> dict:
    """The subset of one dataset's settings that `stage` depends on."""
    return {key: settings.get(key) for key in STAGE_KEYS[stage]}
