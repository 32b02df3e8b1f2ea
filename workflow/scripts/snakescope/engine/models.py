"""models: the registry from a model name to a network, its tasks and its properties.

Adding a network is one `ModelEntry` in `MODELS`: the config accepts its name for the tasks and
dimensions the entry lists, the planner may choose it, and train/predict/evaluate/uncertainty run it.
The registry imports no torch (the builders import `snakescope.engine.networks` when they run), so the
configuration can check model names while Snakemake parses the workflow.

Every network has dropout so Monte-Carlo dropout can sample it (Gal & Ghahramani, ICML 2016).

Examples::

    spec = ModelSpec("mobilenet_v2", "classification", in_channels=1, out_channels=4)
    model = build_model(spec)          # (N, 1, H, W) -> (N, 4) logits
    spec = ModelSpec("unet_small", "segmentation", in_channels=3, out_channels=2, spatial_dims=3)
    model = build_model(spec)          # (N, 3, D, H, W) -> (N, 2, D, H, W) logits
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

CLASSIFICATION = ("classification",)
DENSE = ("segmentation", "instance_segmentation", "regression")


@dataclass(frozen=True)
class ModelSpec:
    """What a network is built from; saved inside every checkpoint so it can be rebuilt.

    `image_size` ((H, W), optional) is the training image size; only the vision transformer uses it, to
    size its position embeddings (other sizes are served by interpolating them).
    """

    name: str
    task: str
    in_channels: int
    out_channels: int  # classes (classification, segmentation) or target channels (regression)
    spatial_dims: int = 2
    dropout: float = 0.3
    image_size: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelEntry:
    """One network of the registry: how to build it, which tasks and spatial dims it serves.

    Flags:
        detector: learns from a list of boxes and masks per image rather than a class map, so its task
            trains, predicts and scores it with its own hooks (Mask R-CNN).
        needs_gpu: too slow to propose on a CPU; the planner chooses it only where a GPU is visible.
        measurable: the planner can time a training step of it on random input and a dense target.
        patch_multiple, min_side, min_largest_side: every side of a dense network's input (the training
            patch, the sliding window) must be a multiple of `patch_multiple` and at least `min_side`, and
            one side at least `min_largest_side` (the downsamplings, and instance norm needing more than one
            voxel at the deepest level); measured for each network in 2D and 3D.
    """

    build: Callable[[ModelSpec], Any]
    tasks: tuple[str, ...]
    spatial_dims: tuple[int, ...]
    description: str
    detector: bool = False
    needs_gpu: bool = False
    measurable: bool = True
    patch_multiple: int = 1
    min_side: int = 1
    min_largest_side: int = 1


def network(builder: str, **options) -> Callable[[ModelSpec], Any]:
    """A builder that calls `snakescope.engine.networks.<builder>(spec, **options)` when it runs, so the
    registry itself imports no torch."""

    def build(spec: ModelSpec):
        from snakescope.engine import networks

        return getattr(networks, builder)(spec, **options)

    return build


def _classifier(factory: str, first_conv: str, head: str):
    return network("torchvision_classifier", factory=factory, first_conv=first_conv, head=head)


MODELS: dict[str, ModelEntry] = {
    # classification: torchvision backbones + our dropout/linear head, 2D only
    "resnet50": ModelEntry(
        _classifier("resnet50", "conv1", "fc"), CLASSIFICATION, (2,), "ResNet-50, He et al. CVPR 2016"
    ),
    "resnext50_32x4d": ModelEntry(
        _classifier("resnext50_32x4d", "conv1", "fc"),
        CLASSIFICATION,
        (2,),
        "ResNeXt-50 32x4d, Xie et al. CVPR 2017",
    ),
    "mobilenet_v2": ModelEntry(
        _classifier("mobilenet_v2", "features.0.0", "classifier"),
        CLASSIFICATION,
        (2,),
        "MobileNet-V2, Sandler et al. CVPR 2018",
    ),
    "densenet121": ModelEntry(
        _classifier("densenet121", "features.conv0", "classifier"),
        CLASSIFICATION,
        (2,),
        "DenseNet-121, Huang et al. CVPR 2017",
    ),
    "efficientnet_b0": ModelEntry(
        _classifier("efficientnet_b0", "features.0.0", "classifier"),
        CLASSIFICATION,
        (2,),
        "EfficientNet-B0, Tan & Le, ICML 2019",
    ),
    "vit_tiny": ModelEntry(
        network("vit_tiny"),
        CLASSIFICATION,
        (2,),
        "small ViT (patch 8, 6 layers, width 192), Dosovitskiy et al. ICLR 2021",
    ),
    # segmentation / regression: MONAI networks, 2D and 3D
    "unet_small": ModelEntry(
        network("unet", channels=(8, 16, 32, 64, 128)), DENSE, (2, 3), "residual U-Net, channels 8..128",
        patch_multiple=16, min_side=16, min_largest_side=32,
    ),
    "unet": ModelEntry(
        network("unet"), DENSE, (2, 3), "residual U-Net, channels 16..256", patch_multiple=16, min_side=16, min_largest_side=32
    ),
    "unet_large": ModelEntry(
        network("unet", channels=(32, 64, 128, 256, 512)),
        DENSE,
        (2, 3),
        "residual U-Net, channels 32..512",
        patch_multiple=16,
        min_side=16,
        min_largest_side=32,
    ),
    "basic_unet": ModelEntry(
        network("basic_unet"), DENSE, (2, 3), "plain U-Net (MONAI BasicUNet), features 16..128",
        patch_multiple=8, min_side=16, min_largest_side=32,
    ),
    "attention_unet": ModelEntry(
        network("attention_unet"), DENSE, (2, 3), "Attention U-Net, channels 16..256",
        patch_multiple=16, min_side=16, min_largest_side=16,
    ),
    "segresnet": ModelEntry(
        network("segresnet"), DENSE, (2, 3), "SegResNet, 16 initial filters, dropout before the last decoder stage", patch_multiple=8, min_side=8, min_largest_side=8
    ),
    # instance segmentation only: trained from boxes and masks by the task's detector hooks
    "maskrcnn": ModelEntry(
        network("maskrcnn", backbone="resnet50"),
        ("instance_segmentation",),
        (2,),
        "Mask R-CNN, ResNet-50 FPN (torchvision), He et al. ICCV 2017",
        detector=True,
        needs_gpu=True,
        measurable=False,
    ),
    "maskrcnn_resnet18": ModelEntry(
        network("maskrcnn", backbone="resnet18"),
        ("instance_segmentation",),
        (2,),
        "Mask R-CNN, ResNet-18 FPN (torchvision): 31 M parameters instead of 44 M, for small data",
        detector=True,
        needs_gpu=True,
        measurable=False,
    ),
}


def models_for(task: str, spatial_dims: int | None = None) -> list[str]:
    """Names of the registered models that do `task` (in `spatial_dims` dimensions, when given)."""
    return [
        name
        for name, entry in MODELS.items()
        if task in entry.tasks and (spatial_dims is None or spatial_dims in entry.spatial_dims)
    ]


def check_model(name: str, task: str, spatial_dims: int | None = None) -> ModelEntry:
    """The registry entry of `name`, checked against the task (and spatial dims, when given).

    Raises:
        ValueError: unknown name, or a model that does not do the task or dims; the message lists the
            models that do.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; models for {task}: {models_for(task, spatial_dims)}")
    entry = MODELS[name]
    if task not in entry.tasks:
        raise ValueError(f"model '{name}' does not do {task}; models for {task}: {models_for(task)}")
    if spatial_dims is not None and spatial_dims not in entry.spatial_dims:
        raise ValueError(
            f"model '{name}' is {'/'.join(map(str, entry.spatial_dims))}D only, but the data is "
            f"{spatial_dims}D; models for {task} in {spatial_dims}D: {models_for(task, spatial_dims)}"
        )
    return entry


def fits_patch(name: str, patch_size) -> bool:
    """Whether the network `name` takes inputs of `patch_size` (see ModelEntry)."""
    entry = MODELS[name]
    return all(side % entry.patch_multiple == 0 and side >= entry.min_side for side in patch_size) and (
        max(patch_size) >= entry.min_largest_side
    )


def fit_patch(name: str, patch_size) -> list[int]:
    """The patch nearest below `patch_size` that `name` takes (sides rounded down to its grid, raised to its
    minimum)."""
    entry = MODELS[name]
    sides = [max(entry.min_side, side // entry.patch_multiple * entry.patch_multiple) for side in patch_size]
    if max(sides) < entry.min_largest_side:
        sides[sides.index(max(sides))] = entry.min_largest_side
    return sides


def check_patch(name: str, patch_size) -> None:
    """Raise a ValueError when the network `name` cannot take inputs of `patch_size`, naming the rule and
    the nearest size that fits."""
    entry = MODELS[name]
    if not fits_patch(name, patch_size):
        fit = fit_patch(name, [max(side, entry.patch_multiple) for side in patch_size])
        raise ValueError(
            f"patch_size {list(patch_size)} does not fit {name}: each side must be a multiple of "
            f"{entry.patch_multiple} and at least {entry.min_side}, one side at least {entry.min_largest_side} "
            f"(the network's downsamplings); e.g. {fit}"
        )


def build_model(spec: ModelSpec):
    """Build the network named in `spec` with freshly initialised weights (a torch nn.Module).

    Raises:
        ValueError: see `check_model`.
    """
    return check_model(spec.name, spec.task, spec.spatial_dims).build(spec)


def is_detector(name: str) -> bool:
    """Whether the registered model `name` is a detector (see ModelEntry); False for unknown names."""
    return name in MODELS and MODELS[name].detector
