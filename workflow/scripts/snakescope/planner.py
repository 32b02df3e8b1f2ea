"""planner: from the data's fingerprint, the hardware and earlier results to the settings of a run.

The settings a user leaves unset (`PLANNED_KEYS`) are chosen here and written to
`results/<dataset>/recommend/plan.json`; what the user set is kept and marked as pinned. Two halves,
as the issue asks:

* rules (cold start, in the manner of nnU-Net's experiment planner): patch size from the median
  image size, batch size from a *measured* forward/backward pass (GPU memory on a GPU), epochs from a
  measured step time and the time budget, normalisation from the source bit depth, augmentations
  from the brightness spread, and a model by task and hardware (the task's `rule_models`);
* learned (warm start): when the results library holds datasets of the same task, the model comes
  from `snakescope.library.recommend_model`, with the similar datasets it used as its reasons.

A plan file given as `plan:` in the config is pinned as it stands: the planner only checks it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from snakescope.config import PLANNED_KEYS
from snakescope.engine.models import MODELS, check_model, fit_patch, fits_patch, models_for
from snakescope.io import read_json
from snakescope.tasks import get_task

log = logging.getLogger(__name__)

# Largest patch side the planner picks: bigger patches give more context but fewer steps per second.
MAX_PATCH = {("cuda", 2): 256, ("cpu", 2): 128, ("cuda", 3): 128, ("cpu", 3): 64}
MIN_PATCH = {2: 32, 3: 16}
GPU_MEMORY_SHARE = 0.8  # of the GPU's memory the planner fills; the rest is for the allocator and cuDNN
# What a time budget must leave besides training, measured on two CPU cores (ISBI in docs/peers.md): the
# dataset's conversion, planning, split, augmentation preview and summary (about 25 s with Snakemake's
# start), and each run's fixed costs: start-up (PyTorch and MONAI imports), outputs and timing of its jobs
# (`overhead_seconds_per_run`). Prediction and uncertainty are estimated from measured passes
# (`inference_seconds`) times SLIDING_WINDOW_COST for blending and bookkeeping (bench/budget_estimates.py,
# 512^2 images: 1.1x for a prediction, 2.2x for a U-Net's MC passes, 1.1x for SegResNet's pass and heads).
OVERHEAD_SECONDS_PER_DATASET = 25.0
OVERHEAD_SECONDS_PER_RUN = {"train, predict, evaluate": 25.0, "uncertainty": 12.0, "export": 13.0}
SLIDING_WINDOW_COST = 1.5
# Training keeps at least this share of the budget, however long the rest is estimated to take.
MIN_TRAINING_SHARE = 0.25


@dataclass(frozen=True)
class Resources:
    device: str  # "cuda" or "cpu"
    gpu_name: str | None
    gpu_memory_gb: float | None
    cpu_count: int
    time_budget_minutes: float | None

    def describe(self) -> str:
        where = f"GPU {self.gpu_name} with {self.gpu_memory_gb:.1f} GB" if self.device == "cuda" else "CPU only"
        budget = f", {self.time_budget_minutes:g} min budget" if self.time_budget_minutes else ", no time budget"
        return f"{where}, {self.cpu_count} CPU cores{budget}"


def detect_resources(settings: dict) -> Resources:
    """The hardware this job sees (a GPU rule's job on a cluster sees its GPU), overridden by config."""
    import torch

    use_gpu = settings.get("device", "auto") != "cpu" and torch.cuda.is_available()
    memory = settings.get("gpu_memory_gb")
    name = None
    if use_gpu:
        props = torch.cuda.get_device_properties(0)
        name = props.name
        memory = memory or props.total_memory / 2**30
    return Resources(
        device="cuda" if use_gpu else "cpu",
        gpu_name=name,
        gpu_memory_gb=float(memory) if use_gpu else None,
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        time_budget_minutes=settings.get("time_budget_minutes"),
    )


def _power_of_two_at_most(value: float) -> int:
    return 2 ** int(math.floor(math.log2(max(1.0, value))))


def plan_patch_size(fingerprint: dict, device: str, models: list[str] = ()) -> list[int]:
    """Per axis: the largest power of two that fits the median image, within the hardware's cap, and a
    side every network of `models` takes (a smaller image is padded up to it).

    The number of axes is the fingerprint's, which `convert` took from the configured patch size.
    """
    dims = fingerprint["spatial_dims"]
    cap = MAX_PATCH[(device, dims)]
    sides = [max(MIN_PATCH[dims], min(cap, _power_of_two_at_most(side))) for side in fingerprint["shape_median"][-dims:]]
    for model in sorted(models, key=lambda m: -MODELS[m].patch_multiple):  # the coarsest grid first
        sides = fit_patch(model, sides)
    return sides


@dataclass(frozen=True)
class StepCost:
    seconds_per_sample: float
    bytes_per_sample: float | None  # GPU only: measured peak memory per extra sample
    fixed_bytes: float | None  # GPU only: weights, optimiser state, workspace
    forward_seconds_per_sample: float | None = None  # inference (no gradients) of one sample
    head_seconds_per_sample: float | None = None  # its head, for a network sampled head only (None: whole)


def measure_step(model_name: str, fingerprint: dict, sample_shape: list[int], device: str,
                 batch_sizes: tuple[int, int] = (2, 4)) -> StepCost:
    """Time (and on a GPU, peak memory of) real forward/backward/Adam steps of `model_name` on random
    input of the dataset's channels and `sample_shape`, at two batch sizes, and time its inference.

    Memory per sample is the difference of the two peaks divided by the batch difference (nnU-Net's
    planner estimates the same quantity from a formula; measuring needs no formula per network).
    """
    import torch

    from snakescope.engine.models import ModelSpec, build_model
    from snakescope.engine.networks import sampling_split

    task = get_task(fingerprint["task"])
    spec = ModelSpec(model_name, task.name, fingerprint["channels"], task.out_channels(fingerprint),
                     fingerprint["spatial_dims"], image_size=tuple(sample_shape))
    torch_device = torch.device(device)
    model = build_model(spec).to(torch_device).train()
    optimizer = torch.optim.Adam(model.parameters())
    loss_fn = task.loss(task.losses[0])
    generator = torch.Generator().manual_seed(0)

    def random_images(batch: int):
        return torch.rand((batch, fingerprint["channels"], *sample_shape), generator=generator).to(torch_device)

    def step(batch: int) -> float:
        image = random_images(batch)
        target = task.dummy_target(batch, spec.out_channels, sample_shape, generator).to(torch_device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(image), target).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def forward(batch: int, network=model, image=None) -> float:
        image = random_images(batch) if image is None else image
        start = time.perf_counter()
        with torch.no_grad():
            network(image)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    small, large = batch_sizes
    peaks = []
    for batch in (small, large):
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step(batch)  # warm-up (cuDNN autotuning, allocator) and memory peak
        if device == "cuda":
            peaks.append(torch.cuda.max_memory_allocated())
    seconds = min(step(large) for _ in range(2)) / large
    model.eval()
    forward_seconds = min(forward(large) for _ in range(2)) / large
    split = sampling_split(model)  # MC dropout will run the trunk once and the head per sample
    features = split and torch.no_grad()(split[0])(random_images(large))
    head_seconds = split and min(forward(large, split[1], features) for _ in range(2)) / large
    if device != "cuda":
        return StepCost(seconds, None, None, forward_seconds, head_seconds)
    per_sample = max(1.0, (peaks[1] - peaks[0]) / (large - small))
    return StepCost(seconds, per_sample, max(0.0, peaks[0] - small * per_sample), forward_seconds, head_seconds)


def plan_batch_size(task_name: str, cost: StepCost, resources: Resources, n_train: int,
                    processes: int = 1) -> tuple[int, str]:
    """The global batch: on a GPU, the largest power of two whose measured memory fits one GPU's share,
    times the training processes (one GPU each), at most the task's `max_batch`; on the CPU the task's
    fixed `cpu_batch`. Always a multiple of `processes`, which share every batch equally."""
    task = get_task(task_name)
    cap = task.max_batch
    # Several batches per epoch, so early stopping and the learning rate have steps to work with.
    cap = min(cap, max(2, _power_of_two_at_most(n_train / 4)))
    if resources.device != "cuda" or cost.bytes_per_sample is None:
        batch = _multiple_of(min(cap, task.cpu_batch), processes)
        return batch, f"CPU: {batch} (fixed size for CPU training, at most a quarter of the {n_train} training images)"
    budget = GPU_MEMORY_SHARE * resources.gpu_memory_gb * 2**30 - cost.fixed_bytes
    fits = _power_of_two_at_most(budget / cost.bytes_per_sample)
    batch = _multiple_of(max(1, min(cap, fits * processes)), processes)
    per_process = f" per GPU, {processes} training processes" if processes > 1 else ""
    return batch, (
        f"measured {cost.bytes_per_sample / 2**20:.0f} MiB per sample + {cost.fixed_bytes / 2**20:.0f} MiB fixed: "
        f"{fits} fit in {GPU_MEMORY_SHARE:.0%} of {resources.gpu_memory_gb:.1f} GB{per_process}; capped at {cap}"
    )


def _multiple_of(batch: int, processes: int) -> int:
    return max(processes, batch // processes * processes)


def plan_epochs(seconds_per_sample: float, samples_per_epoch: int, train_seconds: float | None,
                configured_max: int) -> tuple[int, str]:
    """Without a time budget the configured maximum, with early stopping. With one (`train_seconds` per
    run), the budget ends training (`engine.trainer`, which also anneals the learning rate over it), so
    the epochs are only a bound it should not reach: twice the measured estimate, at least the configured
    maximum, since a step measured on random input can be off either way (a loaded machine)."""
    epoch_seconds = seconds_per_sample * samples_per_epoch
    if not train_seconds:
        return configured_max, (
            f"no time budget: up to {configured_max} epochs with early stopping "
            f"(measured {epoch_seconds:.1f} s per epoch)"
        )
    estimate = int(train_seconds // max(epoch_seconds, 1e-6))
    epochs = max(configured_max, 2 * estimate)
    return epochs, (
        f"measured {epoch_seconds:.1f} s per epoch ({samples_per_epoch} samples): about {estimate} epochs in "
        f"the {train_seconds:.0f} s of training the budget leaves each run; the budget ends training, "
        f"{epochs} is only a bound"
    )


def n_test_images(fingerprint: dict, settings: dict) -> int:
    subsets = fingerprint.get("n_by_subset", {})
    if "test" in subsets:
        return subsets["test"]
    return max(1, round(fingerprint["n_images"] * settings["test_fraction"]))


def inference_seconds(cost: StepCost, fingerprint: dict, settings: dict, sample_shape: list[int]) -> float:
    """Estimated seconds of one run's prediction and MC uncertainty on the test set: a measured forward
    pass (a third of a training step where not measured), and with `uncertainty` `mc_samples` passes, or
    one and as many heads for a network sampled head only (`engine.inference.sample_dropout`), times the
    test images and, for dense tasks, the windows of a median test image and SLIDING_WINDOW_COST."""
    from snakescope.engine.inference import window_step

    forward = cost.forward_seconds_per_sample or cost.seconds_per_sample / 3
    dense, head, samples = get_task(fingerprint["task"]).dense, cost.head_seconds_per_sample, settings.get("mc_samples", 20)
    sampling = samples * forward if head is None and dense else forward + samples * (head or 0.0)  # unmeasured: a classifier's linear head, 0
    per_window = forward + (sampling if settings.get("uncertainty", True) else 0.0)
    if not dense:
        return n_test_images(fingerprint, settings) * per_window
    windows = 1
    for side, patch, step in zip(fingerprint["shape_median"][-len(sample_shape):], sample_shape,
                                 window_step(sample_shape)):
        windows *= math.ceil(max(side - patch, 0) / step) + 1
    return n_test_images(fingerprint, settings) * windows * per_window * SLIDING_WINDOW_COST


def overhead_seconds_per_run(settings: dict) -> float:
    """A run's fixed costs: those of its train, predict and evaluate jobs, and of the uncertainty and
    export jobs where they run."""
    return sum(seconds for job, seconds in OVERHEAD_SECONDS_PER_RUN.items()
               if job not in ("uncertainty", "export") or settings.get(job, True))


def share_time_budget(budget_minutes: float | None, seeds: list | None, models: list | None,
                      inference_seconds_per_run: float, overhead_per_run: float) -> dict | None:
    """How the time budget is shared (each training stops when its share is spent, `engine.trainer`): the
    whole budget less the estimated rest (fixed overheads and each run's prediction and uncertainty),
    at least MIN_TRAINING_SHARE of it, over the dataset's trainings; None without a budget."""
    if not budget_minutes:
        return None
    runs = len(seeds or [0]) * len(models or [None])
    total = budget_minutes * 60
    rest = OVERHEAD_SECONDS_PER_DATASET + runs * (overhead_per_run + inference_seconds_per_run)
    training = max(MIN_TRAINING_SHARE * total, total - rest)
    seconds = training / runs
    short = (f"; the rest is estimated at {rest:.0f} s, so the run will take longer than the budget"
             if total - rest < MIN_TRAINING_SHARE * total else "")
    return {"minutes": budget_minutes, "training_share": training / total, "runs": runs, "seconds_per_run": seconds,
            "rest_seconds": rest, "inference_seconds_per_run": inference_seconds_per_run,
            "reason": f"{total:.0f} s budget: {OVERHEAD_SECONDS_PER_DATASET:.0f} s for conversion, planning and "
                      f"report, and per run {overhead_per_run:.0f} s of start-ups and outputs and "
                      f"{inference_seconds_per_run:.0f} s of prediction and uncertainty (estimated from the "
                      f"measured forward pass), leave {training:.0f} s of training{short}; over {runs} run(s) "
                      f"({len(seeds or [0])} seed(s) x {len(models or [None])} model(s)) each stops after "
                      f"{seconds:.0f} s, keeping its best checkpoint, however loaded the machine is"}


def plan_normalisation(fingerprint: dict) -> tuple[str, str]:
    planned = get_task(fingerprint["task"]).planned_normalisation(fingerprint)
    if planned:
        return planned
    dtypes = fingerprint.get("source_dtypes") or {}
    if any(np.dtype(d).kind == "f" for d in dtypes):
        return "zscore", "float images (no fixed range): zero mean, unit variance per image"
    return "percentile", "integer images: 1st-99th percentile to 0-1 per image, robust to hot pixels"


def plan_augmentations(fingerprint: dict) -> tuple[list[str], str]:
    augmentations = ["flip", "rotate90"]
    reason = "microscopy has no preferred orientation: flips and 90° rotations"
    spread = fingerprint.get("brightness_spread", 0.0)
    if spread > 0.1:
        augmentations += ["brightness", "contrast"]
        reason += f"; mean brightness varies by {spread:.0%} between images: brightness and contrast"
    return augmentations, reason


def train_size(fingerprint: dict, settings: dict) -> int:
    subsets = fingerprint.get("n_by_subset", {})
    if "train" in subsets:
        return max(1, int(subsets["train"] * (1 - settings["val_fraction"])))
    n = fingerprint["n_images"]
    return max(1, int(n * (1 - settings["test_fraction"]) * (1 - settings["val_fraction"])))


def too_large_for(library, resources: Resources) -> set[str]:
    """Models whose recorded training peak exceeded this GPU's memory share in an earlier run."""
    if resources.device != "cuda" or library.empty:
        return set()
    import pandas as pd

    peaks = pd.to_numeric(library["train_peak_gpu_mb"], errors="coerce").groupby(library["model"]).max()
    limit_mb = GPU_MEMORY_SHARE * resources.gpu_memory_gb * 1024
    return set(peaks[peaks > limit_mb].index)


def make_plan(settings: dict, fingerprint: dict, resources: Resources, library=None, measure=measure_step) -> dict:
    """The plan for one dataset: every planned key with its value, its source (user, rules, library or
    pinned plan) and a one-line reason.

    Args:
        settings: the dataset's resolved settings; `auto_keys` lists the keys the user left unset.
        library: the results library (snakescope.library.load_library), or None for rules only.
        measure: the step measurement (tests pass a cheaper one).
    """
    task = get_task(fingerprint["task"])
    auto = set(settings.get("auto_keys", []))
    chosen: dict[str, dict] = {}

    def choose(key, value, source, reason):
        if key in auto:
            chosen[key] = {"value": value, "source": source, "reason": reason}
        else:
            chosen[key] = {"value": settings[key], "source": "user", "reason": "set in the config"}

    def takes_the_patch(model: str) -> bool:  # a patch size the user set rules out networks that cannot take it
        return not task.dense or "patch_size" in auto or fits_patch(model, settings["patch_size"])

    # Model: library first, rules when it has nothing for this task.
    candidates = [m for m in models_for(task.name, fingerprint["spatial_dims"])
                  if (not MODELS[m].needs_gpu or resources.device == "cuda") and takes_the_patch(m)]
    recommendation = None
    if "models" in auto and library is not None:
        from snakescope.library import fingerprint_features, recommend_model

        candidates = [m for m in candidates if m not in too_large_for(library, resources)]
        recommendation = recommend_model(fingerprint_features(fingerprint), task.name, library, candidates)
    if recommendation:
        choose("models", [recommendation.model], "library", " ".join(recommendation.reasons()))
    else:
        rule_model = task.rule_models[resources.device]
        rule_model = rule_model if rule_model in candidates else candidates[0]
        choose("models", [rule_model], "rules",
               f"no results for {task.name} in the library; {task.rule_model_reason} for "
               f"{resources.device.upper()}: {MODELS[rule_model].description}")
    model = chosen["models"]["value"][0]

    if not task.dense:
        chosen["patch_size"] = {"value": settings["patch_size"], "source": "user" if "patch_size" not in auto else "rules",
                                "reason": f"{task.name} uses whole images (resize), no patches"}
        sample_shape = list(fingerprint.get("resized_to") or fingerprint["shape_median"])
    else:
        patch = plan_patch_size(fingerprint, resources.device, chosen["models"]["value"])
        choose("patch_size", patch, "rules",
               f"largest power of two within the median image {fingerprint['shape_median']} and the "
               f"{resources.device.upper()} cap of {MAX_PATCH[(resources.device, fingerprint['spatial_dims'])]}")
        sample_shape = list(chosen["patch_size"]["value"])
    sample_shape = [int(s) for s in sample_shape[-fingerprint["spatial_dims"]:]]

    n_train = train_size(fingerprint, settings)
    needs_measure = {"batch_size", "epochs"} & auto and MODELS[model].measurable
    cost = measure(model, fingerprint, sample_shape, resources.device) if needs_measure else None
    if cost is not None:
        batch, reason = plan_batch_size(task.name, cost, resources, n_train, settings.get("train_processes", 1))
        choose("batch_size", batch, "rules", reason)
    else:
        choose("batch_size", 2, "rules", f"{model} is not timed on random input: two images per step")
    batch = chosen["batch_size"]["value"]
    time_budget = share_time_budget(
        resources.time_budget_minutes, settings.get("seeds"), chosen["models"]["value"],
        0.0 if cost is None else inference_seconds(cost, fingerprint, settings, sample_shape),
        overhead_seconds_per_run(settings))
    if cost is not None:
        from snakescope.engine.trainer import patches_for_area

        per_image = 1 if not task.dense else patches_for_area(
            np.prod(fingerprint["shape_median"][-fingerprint["spatial_dims"]:]), sample_shape)
        samples = n_train * per_image
        if settings.get("max_batches_per_epoch"):
            samples = min(samples, settings["max_batches_per_epoch"] * batch)
        epochs, reason = plan_epochs(cost.seconds_per_sample, samples, time_budget and time_budget["seconds_per_run"],
                                     settings["epochs"])
        choose("epochs", epochs, "rules", reason)
    else:
        choose("epochs", settings["epochs"], "rules", "schema default with early stopping")
    normalisation, reason = plan_normalisation(fingerprint)
    choose("normalisation", normalisation, "rules", reason)
    augmentations, reason = plan_augmentations(fingerprint)
    choose("augmentations", augmentations, "rules", reason)

    return {
        "dataset": fingerprint["dataset"],
        "task": task.name,
        "resources": {**resources.__dict__, "summary": resources.describe()},
        "settings": {key: item["value"] for key, item in chosen.items()},
        "decisions": chosen,
        "library": None if recommendation is None else {
            "neighbours": recommendation.neighbours, "candidates": recommendation.candidates,
        },
        "measured": None if cost is None else {"model": model, "sample_shape": sample_shape, **cost.__dict__},
        "time_budget": time_budget,
    }


def pin_plan(settings: dict, pinned: dict, fingerprint: dict) -> dict:
    """A user's plan file, checked against the schema's values for the keys it sets."""
    from snakescope.config import ConfigError, load_schema

    properties = load_schema()["$defs"]["settings"]["properties"]
    values = pinned.get("settings", {})
    unknown = sorted(set(values) - set(PLANNED_KEYS))
    if unknown:
        raise ConfigError(f"plan {settings['plan']}: keys {unknown} cannot be planned; a plan sets only {list(PLANNED_KEYS)}.")
    import jsonschema

    for key, value in values.items():
        try:
            jsonschema.validate(value, properties[key])
        except jsonschema.ValidationError as error:
            raise ConfigError(f"plan {settings['plan']}: {key} = {value!r} is not allowed ({error.message}). "
                              "Edit the plan file or remove the key to let snakescope choose.") from error
    for model in values.get("models", []):
        try:
            check_model(model, fingerprint["task"], fingerprint["spatial_dims"])
        except ValueError as error:
            raise ConfigError(f"plan {settings['plan']}: models: {error}. Edit the plan file.") from None
    decisions = {key: {"value": value, "source": "pinned plan", "reason": f"from {settings['plan']}"}
                 for key, value in values.items()}
    for key in PLANNED_KEYS:
        if key not in decisions:
            decisions[key] = {"value": settings[key], "source": "user", "reason": "set in the config or its default"}
    return {**pinned, "dataset": fingerprint["dataset"], "task": fingerprint["task"],
            "settings": {k: d["value"] for k, d in decisions.items()}, "decisions": decisions,
            "time_budget": share_time_budget(settings.get("time_budget_minutes"), settings.get("seeds"),
                                             decisions["models"]["value"], 0.0, overhead_seconds_per_run(settings))}


def apply_plan(settings: dict, plan_json: str) -> dict:
    """`settings` with the planned values of the keys the user left unset (the user's own values win), and
    `train_seconds`, one training's share of the time budget (None without one)."""
    plan = read_json(plan_json)
    auto = set(settings.get("auto_keys", []))
    pinned = plan.get("decisions", {})
    return {
        **settings,
        **{key: value for key, value in plan["settings"].items()
           if key in auto or pinned.get(key, {}).get("source") == "pinned plan"},
        "train_seconds": (plan.get("time_budget") or {}).get("seconds_per_run"),
    }


def write_plan(settings: dict, fingerprint_json: str, plan_out: str, table_out: str, threads: int = 1) -> dict:
    """The `recommend` rule: plan one dataset and write plan.json and a one-row-per-setting table."""
    import pandas as pd
    import torch

    from snakescope.io import write_json, write_table

    torch.set_num_threads(max(1, threads))
    fingerprint = read_json(fingerprint_json)
    if settings.get("plan"):
        plan = pin_plan(settings, read_json(settings["plan"]), fingerprint)
    else:
        resources = detect_resources(settings)
        library = None
        if settings.get("results_library") and "models" in settings.get("auto_keys", []):
            from snakescope.library import load_library

            library = load_library(settings["results_library"])
            log.info("results library: %d runs on %d datasets", len(library), library["dataset_checksum"].nunique())
        log.info("planning %s on %s", fingerprint["dataset"], resources.describe())
        plan = make_plan(settings, fingerprint, resources, library)
    for key, decision in plan["decisions"].items():
        log.info("%s = %s (%s): %s", key, decision["value"], decision["source"], decision["reason"])
    table = pd.DataFrame(
        [{"setting": k, "value": d["value"], "source": d["source"], "reason": d["reason"]}
         for k, d in plan["decisions"].items()]
    )
    if plan.get("time_budget"):
        log.info("train_seconds = %.0f: %s", plan["time_budget"]["seconds_per_run"], plan["time_budget"]["reason"])
        table.loc[len(table)] = ["train_seconds", round(plan["time_budget"]["seconds_per_run"]), "rules",
                                 plan["time_budget"]["reason"]]
    write_table(table, table_out)
    write_json(plan, plan_out)
    return plan
