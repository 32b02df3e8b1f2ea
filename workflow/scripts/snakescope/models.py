"""models: one registry from a model name to a network, and loading of local pretrained weights.

Every network ends in dropout so Monte-Carlo dropout can sample it (Gal & Ghahramani, ICML 2016).
Classifiers are split into `features` and `head` so the uncertainty rule can compute the features once
and sample only the dropout head, which is exact when dropout sits only in the head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What a network is built from; saved inside every checkpoint so it can be rebuilt."""

    name: str
    task: str
    in_channels: int
    out_channels: int  # classes (classification, segmentation) or target channels (regression)
    spatial_dims: int = 2
    dropout: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)


class Classifier(nn.Module):
    """A backbone that maps images to feature vectors, and a dropout + linear head.

    forward: (N, C, H, W) float -> (N, classes) logits.
    """

    def __init__(self, features: nn.Module, n_features: int, n_classes: int, dropout: float):
        super().__init__()
        self.features = features
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)


def _resnet_classifier(factory: Callable, spec: ModelSpec) -> Classifier:
    net = factory(weights=None)
    net.conv1 = _adapt_first_conv(net.conv1, spec.in_channels)
    n_features = net.fc.in_features
    net.fc = nn.Identity()
    return Classifier(net, n_features, spec.out_channels, spec.dropout)


def _build_resnet50(spec: ModelSpec) -> nn.Module:
    from torchvision.models import resnet50

    return _resnet_classifier(resnet50, spec)


def _build_unet(spec: ModelSpec, channels: tuple[int, ...] = (16, 32, 64, 128, 256)) -> nn.Module:
    from monai.networks.nets import UNet

    # MONAI's UNet (Ronneberger et al., MICCAI 2015, with residual units) applies dropout in every
    # convolution block, which gives the spatially varying samples that MC-dropout maps need.
    return UNet(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=2,
        dropout=spec.dropout,
    )


def _build_maskrcnn(spec: ModelSpec) -> nn.Module:
    from snakescope.instances import build_maskrcnn

    # He et al., ICCV 2017, torchvision's ResNet-50 FPN version, never downloaded. It learns from boxes
    # and masks rather than a class map, so snakescope.instances trains, predicts and scores it.
    return build_maskrcnn(spec.in_channels, spec.out_channels)


MODEL_BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "resnet50": _build_resnet50,
    "unet": _build_unet,
    "maskrcnn": _build_maskrcnn,
}
MODEL_TASKS: dict[str, tuple[str, ...]] = {
    "resnet50": ("classification",),
    "unet": ("segmentation", "instance_segmentation", "regression"),
    "maskrcnn": ("instance_segmentation",),
}


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the network named in `spec` with freshly initialised weights."""
    if spec.name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model '{spec.name}'; available: {sorted(MODEL_BUILDERS)}")
    if spec.task not in MODEL_TASKS[spec.name]:
        raise ValueError(
            f"model '{spec.name}' does not do {spec.task}; models for {spec.task}: "
            f"{sorted(n for n, tasks in MODEL_TASKS.items() if spec.task in tasks)}"
        )
    return MODEL_BUILDERS[spec.name](spec)


def load_pretrained(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy into `model` every tensor of the file at `path` whose name and shape fit.

    Accepts a plain state dict, one of our checkpoints (weights under "model"), or a safetensors file.
    Loads with `weights_only=True`, so a file cannot run code. A first convolution whose input channels
    differ is adapted rather than dropped: its pretrained kernels are averaged over the input channels
    and repeated, which keeps the learned filters (the common practice for grey or multichannel input).

    Returns:
        (names loaded, names skipped with the reason).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained_weights file not found. Give a local .pt/.pth/.safetensors file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
    own = model.state_dict()
    aliases = _name_aliases(own, state)
    loaded, skipped, update = [], [], {}
    for source_name, tensor in state.items():
        name = aliases.get(source_name, source_name)
        if name not in own:
            skipped.append(f"{source_name} (no such layer)")
        elif own[name].shape == tensor.shape:
            update[name] = tensor
            loaded.append(name)
        elif tensor.ndim == 4 and own[name].ndim == 4 and own[name].shape[0] == tensor.shape[0] and own[name].shape[2:] == tensor.shape[2:]:
            in_channels = own[name].shape[1]
            update[name] = tensor.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (tensor.shape[1] / in_channels)
            loaded.append(f"{name} (input channels adapted {tensor.shape[1]}->{in_channels})")
        else:
            skipped.append(f"{source_name} (shape {tuple(tensor.shape)} vs {tuple(own[name].shape)})")
    model.load_state_dict(update, strict=False)
    log.info("pretrained weights %s: loaded %d tensors, skipped %d", path, len(loaded), len(skipped))
    for name in skipped:
        log.info("  skipped %s", name)
    return loaded, skipped


def _name_aliases(own: dict, state: dict) -> dict:
    # torchvision checkpoints name the backbone without our "features." prefix and the classifier "fc".
    aliases = {}
    for name in state:
        if name not in own and f"features.{name}" in own:
            aliases[name] = f"features.{name}"
        elif name.startswith("fc.") and "head.1." + name[3:] in own:
            aliases[name] = "head.1." + name[3:]
    return aliases


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Dropout | nn.Dropout2d | nn.Dropout3d)]


def enable_mc_dropout(model: nn.Module) -> int:
    """Put `model` in eval mode with only its dropout layers sampling; returns how many there are."""
    model.eval()
    layers = dropout_modules(model)
    for layer in layers:
        layer.train()
    return len(layers)
