"""Configuration: schema validation, defaults, and one resolved settings dict per dataset.

The user writes either the two required keys (`task`, `data_dir`) or a `datasets:` mapping; optional
keys may sit at the top level (for every dataset) or inside one dataset's entry (for that one only).
`resolve_datasets` turns both forms into ``{name: settings}`` with every default filled in, so rules
and package functions never guess.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from snakescope.engine.models import check_model, check_patch, fits_patch, models_for
from snakescope.io import UserError
from snakescope.tasks import get_task

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"

# Settings the planner (snakescope.planner) chooses when the user leaves them unset.
PLANNED_KEYS = ("models", "batch_size", "epochs", "patch_size", "augmentations", "normalisation")


class ConfigError(UserError):
    """A configuration value is missing, misspelt or out of range; the message says which and how to fix it."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _settings_properties(schema: dict) -> dict:
    return schema["$defs"]["settings"]["properties"]


def _check_known_keys(entry: dict, known: set[str], where: str) -> None:
    for key in entry:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{where}: unknown key '{key}'.{hint} Fix the spelling or remove the key; allowed keys: "
                f"{', '.join(sorted(known))}."
            )


_TYPE_NAMES = {
    "integer": "a whole number",
    "number": "a number",
    "string": "a text",
    "array": "a list",
    "boolean": "true or false",
    "null": "null",
    "object": "a mapping",
}


def _allowed(schema: dict) -> str:
    """What a schema accepts, in words: 'a whole number >= 1 (default 100)'."""
    if "enum" in schema:
        text = "one of " + ", ".join(str(v) for v in schema["enum"])
    else:
        types = schema.get("type", [])
        types = types if isinstance(types, list) else [types]
        text = " or ".join(_TYPE_NAMES.get(t, t) for t in types if t != "null") or "a value"
        bounds = [
            f"{sign} {schema[key]}"
            for key, sign in (
                ("minimum", ">="),
                ("exclusiveMinimum", ">"),
                ("maximum", "<="),
                ("exclusiveMaximum", "<"),
            )
            if key in schema
        ]
        if bounds:
            text += " " + " and ".join(bounds)
        if "minItems" in schema or "maxItems" in schema:
            low, high = schema.get("minItems", 0), schema.get("maxItems")
            text += f" of {low} to {high} items" if high else f" of at least {low} items"
        items = schema.get("items")
        if isinstance(items, dict) and ("enum" in items or "type" in items):
            text += f", each {_allowed(items)}"
        if "null" in types:
            text += ", or null"
    if "default" in schema:
        text += f" (default {yaml.safe_dump(schema['default'], default_flow_style=True).strip().removesuffix('...').strip()})"
    return text


def _describe(error: jsonschema.ValidationError, config: dict) -> str:
    path = list(error.absolute_path)
    where = "/".join(str(p) for p in path) or "config"
    if not path and error.validator in ("anyOf", "required"):
        missing = [key for key in ("task", "data_dir") if key not in config]
        return (
            f"config: {' and '.join(f'`{k}`' for k in missing) or 'a required key'} missing. Give `task` and "
            "`data_dir` (the folder with your images), or a `datasets:` mapping of several datasets."
        )
    if "propertyNames" in error.absolute_schema_path:
        return (
            f"{where}: dataset name {error.instance!r} is not allowed. Use letters, digits, '_' and '-' "
            "only, starting with a letter or digit (the name becomes a folder in results/)."
        )
    if error.validator == "enum":
        close = difflib.get_close_matches(str(error.instance), [str(v) for v in error.validator_value], n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"{where}: got {error.instance!r}; allowed: {_allowed(error.schema)}.{hint}"
    if error.validator == "required":
        return f"{where}: {error.message}. Add it to this entry."
    if error.validator == "additionalProperties":
        return f"{where}: {error.message}. Allowed keys: {', '.join(sorted(error.schema.get('properties', {})))}."
    hint = ""
    if error.validator == "type" and isinstance(error.instance, str) and _is_number(error.instance):
        # YAML 1.1 (PyYAML) reads 1e-3 as text: a float needs a dot in its mantissa
        hint = f" YAML reads {error.instance} as text: write {float(error.instance):g}"
        hint += f" or {_with_dot(error.instance)}." if "e" in error.instance.lower() else ", without quotes."
    return f"{where}: got {error.instance!r} ({error.message}); allowed: {_allowed(error.schema)}.{hint}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _with_dot(text: str) -> str:
    """'1e-3' -> '1.0e-3', the spelling YAML reads as a number."""
    mantissa, _, exponent = text.lower().partition("e")
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}"


def _validate(config: dict, schema: dict) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = list(dict.fromkeys(_describe(error, config) for error in errors))
        more = f"\n  ... and {len(lines) - 5} more" if len(lines) > 5 else ""
        raise ConfigError(
            "invalid configuration (see config/config.yaml for every key explained):\n  - "
            + "\n  - ".join(lines[:5])
            + more
        )


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
    layout_properties = set(schema["$defs"]["layout"]["properties"])
    known = set(properties) | {"datasets", "apply"}
    _check_known_keys(config, known, "config")
    if isinstance(config.get("layout"), dict):
        _check_known_keys(config["layout"], layout_properties, "layout")
    datasets = config.get("datasets")
    if isinstance(datasets, dict):
        for name, entry in datasets.items():
            if isinstance(entry, dict):
                _check_known_keys(entry, set(properties), f"datasets/{name}")
                if isinstance(entry.get("layout"), dict):
                    _check_known_keys(entry["layout"], layout_properties, f"datasets/{name}/layout")
    _validate(config, schema)

    base_dir = Path(base_dir) if base_dir else Path.cwd()
    global_settings = {k: copy.deepcopy(v) for k, v in config.items() if k not in ("datasets", "apply")}
    if datasets:
        if "data_dir" in config:
            raise ConfigError(
                "config: give either top-level `data_dir` or a `datasets:` mapping, not both; "
                "move the top-level data_dir into a dataset entry."
            )
        entries = {name: {**global_settings, **copy.deepcopy(e)} for name, e in datasets.items()}
    elif "data_dir" not in config:  # only `apply:` entries: models trained elsewhere
        entries = {}
    else:
        entries = {_dataset_name(_resolve(base_dir, config["data_dir"])): global_settings}

    layout_defaults = {
        k: v["default"] for k, v in schema["$defs"]["layout"]["properties"].items() if "default" in v
    }
    return {
        name: _fill_defaults(
            name, entry, properties, layout_defaults, base_dir, f"datasets/{name}" if datasets else "config"
        )
        for name, entry in entries.items()
    }


def _resolve(base_dir: Path, path: str) -> Path:
    return (base_dir / Path(str(path)).expanduser()).resolve()


def _dataset_name(data_dir: Path) -> str:
    """The folder's name, made safe for results/<name>/ and Snakemake wildcards."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", data_dir.name).strip("_-")
    return name or "data"


def _as_int(value: Any, spec: dict) -> Any:
    """YAML's `epochs: 10.0` passes the schema as an integer; make it a Python int."""
    types = spec.get("type", [])
    types = types if isinstance(types, list) else [types]
    if "integer" in types and "number" not in types and isinstance(value, float) and value.is_integer():
        return int(value)
    items = spec.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        return [_as_int(v, items) for v in value]
    return value


def _fill_defaults(
    name: str, entry: dict, properties: dict, layout_defaults: dict, base_dir: Path, where: str
) -> dict:
    settings = {key: copy.deepcopy(spec["default"]) for key, spec in properties.items() if "default" in spec}
    # Recorded before defaults fill them in: the keys whose values the `recommend` rule may choose.
    auto_configure = entry.get("auto_configure", settings["auto_configure"])
    settings["auto_keys"] = [key for key in PLANNED_KEYS if key not in entry] if auto_configure else []
    settings.update({key: _as_int(value, properties[key]) for key, value in entry.items()})
    task = get_task(settings["task"])
    settings["name"] = name
    settings.setdefault("models", [task.default_model])
    settings.setdefault("loss", task.losses[0])
    settings.setdefault("seeds", [settings["seed"]])
    settings["layout"] = {**layout_defaults, **settings.get("layout", {})}
    if task.default_resize and settings["resize"] is None and len(settings["patch_size"]) == 2:
        settings["resize"] = list(task.default_resize)
    settings["data_dir"] = str(_resolve(base_dir, settings["data_dir"]))
    for key in ("pretrained_weights", "results_library", "plan"):
        if settings[key]:
            settings[key] = str(_resolve(base_dir, settings[key]))
    for key in ("pretrained_weights", "plan"):  # read by a later rule: missing, they would fail it late
        if settings[key] and not Path(settings[key]).is_file():
            raise ConfigError(
                f"{where}: {key} '{settings[key]}' is not a file. Give the path of an existing local file "
                "(relative paths are resolved from the folder you run snakemake in)."
            )
    if settings["loss"] not in task.losses:
        raise ConfigError(
            f"{where}: loss '{settings['loss']}' does not suit {task.name}; use one of {list(task.losses)} "
            f"(default {task.losses[0]})."
        )
    spatial_dims = len(settings["patch_size"])
    planned = set(settings["auto_keys"])
    for model in settings["models"]:
        try:
            check_model(model, task.name, spatial_dims)
            # a network's input sides are fixed by its downsamplings; the planner fits what it plans
            if task.dense and not planned & {"models", "patch_size"}:
                check_patch(model, settings["patch_size"])
        except ValueError as error:
            raise ConfigError(f"{where}: models: {error}. Change `models` or `patch_size` in the config.") from None
    if "batch_size" not in planned and settings["batch_size"] % settings["train_processes"]:
        raise ConfigError(
            f"{where}: batch_size {settings['batch_size']} does not split into {settings['train_processes']} "
            "training processes (it is the global batch, shared equally); make it a multiple of train_processes."
        )
    if task.dense and "models" in planned and "patch_size" not in planned:
        fitting = [m for m in models_for(task.name, spatial_dims) if fits_patch(m, settings["patch_size"])]
        if not fitting:
            raise ConfigError(
                f"{where}: patch_size {settings['patch_size']} fits no network for {task.name} (each needs sides "
                f"that are multiples of its downsampling factor, e.g. 16); use e.g. {[32] * spatial_dims} or "
                "leave patch_size to the planner."
            )
    check_threshold(settings["threshold"], where)
    resize, patch_size = settings["resize"], settings["patch_size"]
    if resize and len(resize) != len(patch_size):
        raise ConfigError(
            f"{where}: resize {resize} has {len(resize)} axes but patch_size {patch_size} has {len(patch_size)}; "
            "give both as [height, width] for 2D images or [depth, height, width] for 3D volumes."
        )
    return settings


def check_threshold(threshold: str | float, where: str) -> None:
    if isinstance(threshold, str) and threshold != "otsu":
        raise ConfigError(f"{where}: threshold must be 'otsu' or a number in (0, 1), got '{threshold}'.")
    if not isinstance(threshold, str) and not 0 < threshold < 1:
        raise ConfigError(f"{where}: threshold must be 'otsu' or a number in (0, 1), got {threshold}.")


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
    residual_learning: bool = True
    processes: int = 1  # data-parallel training processes (snakescope.engine.distributed)
    train_seconds: float | None = None  # wall time after which training stops (its share of time_budget_minutes)
    temperature_scaling: str | bool = "auto"  # fitted after training (snakescope.engine.trainer)

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
            residual_learning=bool(settings.get("residual_learning", True)),
            processes=int(settings.get("train_processes", 1)),
            train_seconds=settings.get("train_seconds"),
            temperature_scaling=settings.get("temperature_scaling", "auto"),
        )


# Which settings each rule depends on. A rule receives only these as `params`, so Snakemake reruns a
# stage when one of its own settings changes (e.g. `epochs` retrains) but not for another stage's
# (changing `epochs` does not reconvert the data).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "convert": (
        "name",
        "task",
        "data_dir",
        "layout",
        "classes",
        "num_classes",
        "resize",
        "patch_size",
        "group_column",
    ),
    "split": ("task", "seed", "test_fraction", "val_fraction", "group_column"),
    "recommend": (
        "task",
        "auto_keys",
        *PLANNED_KEYS,
        "seeds",
        "test_fraction",
        "val_fraction",
        "max_batches_per_epoch",
        "device",
        "time_budget_minutes",
        "uncertainty",
        "mc_samples",
        "export",
        "gpu_memory_gb",
        "train_processes",
        "results_library",
        "plan",
    ),
    "augment": ("name", "task", "seed", "normalisation", "augmentations", "patch_size", "auto_keys", "data_path"),
    "train": (
        "task",
        "auto_keys",
        "batch_size",
        "epochs",
        "patience",
        "learning_rate",
        "loss",
        "augmentations",
        "normalisation",
        "patch_size",
        "dropout",
        "pretrained_weights",
        "max_batches_per_epoch",
        "device",
        "residual_learning",
        "train_processes",
        "temperature_scaling",
    ),
    "predict": ("threshold", "device"),
    "export": ("export_authors", "export_license", "export_cite"),
    "uncertainty": ("mc_samples", "device", "threshold"),
}


# User-set values the planner reads only to measure a training step (the model and its input size) and
# to share a time budget (the number of seeds); and values it reads only to share a time budget (the
# passes of prediction and uncertainty, and the jobs, it leaves time for).
_MEASURE_KEYS = ("models", "patch_size", "seeds")
_BUDGET_KEYS = ("uncertainty", "mc_samples", "export")


def stage_settings(settings: dict, stage: str) -> dict:
    """The subset of one dataset's settings that `stage` depends on.

    For `recommend`, a value the user set is not planned, so it is left out unless the measurement needs
    it: changing `epochs` or adding a model then retrains without re-planning every run of the dataset.
    """
    keys = STAGE_KEYS[stage]
    if stage == "recommend":
        auto = set(settings.get("auto_keys", []))
        # measuring a step, or sharing a time budget, needs the models and seeds even where the user set them
        budget = bool(settings.get("time_budget_minutes"))
        measures = bool(auto & {"batch_size", "epochs"}) or budget
        keys = [
            k for k in keys
            if k in auto or (k not in PLANNED_KEYS and k not in ("seeds", *_BUDGET_KEYS))
            or (measures and k in _MEASURE_KEYS) or (budget and k in _BUDGET_KEYS)
        ]
    return {key: settings.get(key) for key in keys}
