"""tasks: what differs between classification, semantic and instance segmentation and regression.

Each task is one module (or a package, when it has helpers of its own) here, named after the task, that
defines `TASK`, an instance of a `snakescope.tasks.base.Task` subclass. Stages look the task up once (`get_task(settings["task"])`) and
talk only to that interface; a fifth task is one more module (and its name in the config schema's enum).
Task modules import no torch at module level, so convert, split and evaluate (whose environment has
no PyTorch) can use them; their torch-using methods import it when they run.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

from snakescope.tasks.base import Task


@cache
def task_names() -> tuple[str, ...]:
    """The names of the tasks defined in this package (modules or packages with a `TASK`)."""
    names = []
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name != "base":
            if hasattr(importlib.import_module(f"{__name__}.{module.name}"), "TASK"):
                names.append(module.name)
    return tuple(sorted(names))


def get_task(name: str) -> Task:
    """The task called `name` (e.g. "segmentation").

    Raises:
        ValueError naming the known tasks when there is no such task.
    """
    if name not in task_names():
        raise ValueError(f"unknown task '{name}'; tasks: {', '.join(task_names())}")
    return importlib.import_module(f"{__name__}.{name}").TASK


def load_trained(model_pt: str, device):
    """Rebuild a model saved by training (weights_only load) on `device`, in eval mode.

    Returns:
        (the network, the saved payload: weights, spec, plan and metadata).
    """
    from snakescope.engine.checkpoint import read_model
    from snakescope.engine.models import ModelSpec, build_model

    payload = read_model(model_pt)
    task = get_task(payload["plan"]["task"])
    model = task.wrap_network(build_model(ModelSpec(**payload["spec"])), payload["plan"])
    model.load_state_dict(payload["model"])
    if payload.get("temperature", 1.0) != 1.0:  # fitted after training (snakescope.engine.trainer)
        from snakescope.engine.networks import TemperatureScaled

        model = TemperatureScaled(model, payload["temperature"])
    model.to(device).eval()
    return model, payload
