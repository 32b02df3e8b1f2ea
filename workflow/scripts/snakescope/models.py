"""models: one registry from a model name to a network, and loading of local pretrained weights.

Every network has dropout so Monte-Carlo dropout can sample it (Gal & Ghahramani, ICML 2016).
Classifiers are split into `features` and `head` so the uncertainty rule can compute the features once
and sample only the dropout head, which is exact because dropout sits only in the head: the backbones'
own dropout layers are removed or switched off (EfficientNet keeps its stochastic depth, which is not a
dropout layer and is inactive at test time, so MC sampling never touches it).

`MODELS` maps each name to one `ModelEntry` (builder, tasks, spatial dims); adding a network is one
entry there plus its name in the schema's `models` enum (a unit test checks the two agree).

Examples::

    spec = ModelSpec("mobilenet_v2", "classification", in_channels=1, out_channels=4)
    model = build_model(spec)          # (N, 1, H, W) -> (N, 4) logits
    spec = ModelSpec("unet_small", "segmentation", in_channels=3, out_channels=2, spatial_dims=3)
    model = build_model(spec)          # (N, 3, D, H, W) -> (N, 2, D, H, W) logits
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

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
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )


def _torchvision_classifier(
    factory: str, first_conv: str, head: str, **kwargs
) -> Callable[[ModelSpec], Classifier]:
    """A builder for a torchvision classifier: its first convolution (dotted path `first_conv`) takes the
    spec's channels, and its classification layer(s) (attribute `head`, possibly with its own dropout)
    are replaced by our dropout + linear head."""

    def build(spec: ModelSpec) -> Classifier:
        import torchvision.models

        net = getattr(torchvision.models, factory)(weights=None, **kwargs)
        parent_name, _, conv_name = first_conv.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, conv_name, _adapt_first_conv(getattr(parent, conv_name), spec.in_channels))
        old_head = getattr(net, head)
        n_features = [m for m in old_head.modules() if isinstance(m, nn.Linear)][-1].in_features
        setattr(net, head, nn.Identity())
        return Classifier(net, n_features, spec.out_channels, spec.dropout)

    return build


def _vision_transformer_class():
    from torchvision.models.vision_transformer import VisionTransformer

    class ViTFeatures(VisionTransformer):
        """torchvision's ViT (Dosovitskiy et al., ICLR 2021) without its head, for any channel count and
        image size: forward (N, C, H, W) -> (N, hidden_dim), the class token after the encoder.

        Images whose sides are not multiples of the patch size are zero-padded at the bottom/right, and
        the position embeddings (learned for `image_size`) are interpolated bicubically to other grids.
        """

        def __init__(self, in_channels: int, image_size: int, **kwargs):
            super().__init__(image_size=image_size, dropout=0.0, attention_dropout=0.0, **kwargs)
            self.conv_proj = _adapt_first_conv(self.conv_proj, in_channels)
            self.heads = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = self.patch_size
            pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
            if pad_h or pad_w:
                x = nn.functional.pad(x, (0, pad_w, 0, pad_h))
            x = self.conv_proj(x)  # (N, hidden, H/p, W/p)
            grid = tuple(x.shape[-2:])
            x = x.flatten(2).transpose(1, 2)
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = x + self._position_embedding(grid)
            x = self.encoder.ln(self.encoder.layers(self.encoder.dropout(x)))
            return x[:, 0]

        def _position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
            embedding = self.encoder.pos_embedding  # (1, 1 + g*g, hidden)
            side = self.image_size // self.patch_size
            if grid == (side, side):
                return embedding
            patches = embedding[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
            patches = nn.functional.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
            return torch.cat([embedding[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)

    return ViTFeatures


def _build_vit_tiny(spec: ModelSpec) -> Classifier:
    # A small ViT for small microscopy crops: patch 8, 6 layers, width 192, 3 heads (DeiT-Tiny's width,
    # half its depth); about 2.7 M parameters, against 86 M for torchvision's vit_b_16.
    patch = 8
    side = max(spec.image_size) if spec.image_size else 224
    side = patch * math.ceil(side / patch)
    features = _vision_transformer_class()(
        spec.in_channels,
        side,
        patch_size=patch,
        num_layers=6,
        num_heads=3,
        hidden_dim=192,
        mlp_dim=768,
    )
    return Classifier(features, 192, spec.out_channels, spec.dropout)


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


def _build_basic_unet(spec: ModelSpec) -> nn.Module:
    from monai.networks.nets import BasicUNet

    # The plain U-Net of Falk et al. (Nature Methods 2019), with dropout in every two-conv block.
    return BasicUNet(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        features=(16, 16, 32, 64, 128, 16),
        dropout=spec.dropout,
    )


def _build_attention_unet(spec: ModelSpec) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    # Oktay et al., MIDL 2018: attention gates on the skip connections; dropout in every conv block.
    return AttentionUnet(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        dropout=spec.dropout,
    )


def _build_segresnet(spec: ModelSpec) -> nn.Module:
    from monai.networks.nets import SegResNet

    # Myronenko, BrainLes 2018 (without the VAE branch). Its one dropout layer follows the first
    # convolution, so MC dropout perturbs the input features of the whole encoder.
    return SegResNet(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        init_filters=16,
        dropout_prob=spec.dropout,
    )


def _build_maskrcnn(spec: ModelSpec) -> nn.Module:
    from snakescope.instances import MASKRCNN_BACKBONES, build_maskrcnn

    # He et al., ICCV 2017, torchvision's version on a ResNet FPN, never downloaded. It learns from boxes
    # and masks rather than a class map, so snakescope.instances trains, predicts and scores it.
    return build_maskrcnn(spec.in_channels, spec.out_channels, backbone=MASKRCNN_BACKBONES[spec.name])


@dataclass(frozen=True)
class ModelEntry:
    """One network of the registry: how to build it, which tasks and spatial dims it serves."""

    build: Callable[[ModelSpec], nn.Module]
    tasks: tuple[str, ...]
    spatial_dims: tuple[int, ...]
    description: str


MODELS: dict[str, ModelEntry] = {
    # classification: torchvision backbones + our dropout/linear head, 2D only
    "resnet50": ModelEntry(
        _torchvision_classifier("resnet50", "conv1", "fc"),
        CLASSIFICATION,
        (2,),
        "ResNet-50, He et al. CVPR 2016",
    ),
    "resnext50_32x4d": ModelEntry(
        _torchvision_classifier("resnext50_32x4d", "conv1", "fc"),
        CLASSIFICATION,
        (2,),
        "ResNeXt-50 32x4d, Xie et al. CVPR 2017",
    ),
    "mobilenet_v2": ModelEntry(
        _torchvision_classifier("mobilenet_v2", "features.0.0", "classifier"),
        CLASSIFICATION,
        (2,),
        "MobileNet-V2, Sandler et al. CVPR 2018",
    ),
    "densenet121": ModelEntry(
        _torchvision_classifier("densenet121", "features.conv0", "classifier"),
        CLASSIFICATION,
        (2,),
        "DenseNet-121, Huang et al. CVPR 2017",
    ),
    "efficientnet_b0": ModelEntry(
        _torchvision_classifier("efficientnet_b0", "features.0.0", "classifier"),
        CLASSIFICATION,
        (2,),
        "EfficientNet-B0, Tan & Le, ICML 2019",
    ),
    "vit_tiny": ModelEntry(
        _build_vit_tiny,
        CLASSIFICATION,
        (2,),
        "small ViT (patch 8, 6 layers, width 192), Dosovitskiy et al. ICLR 2021",
    ),
    # segmentation / regression: MONAI networks, 2D and 3D
    "unet_small": ModelEntry(
        partial(_build_unet, channels=(8, 16, 32, 64, 128)), DENSE, (2, 3), "residual U-Net, channels 8..128"
    ),
    "unet": ModelEntry(_build_unet, DENSE, (2, 3), "residual U-Net, channels 16..256"),
    "unet_large": ModelEntry(
        partial(_build_unet, channels=(32, 64, 128, 256, 512)),
        DENSE,
        (2, 3),
        "residual U-Net, channels 32..512",
    ),
    "basic_unet": ModelEntry(
        _build_basic_unet, DENSE, (2, 3), "plain U-Net (MONAI BasicUNet), features 16..128"
    ),
    "attention_unet": ModelEntry(_build_attention_unet, DENSE, (2, 3), "Attention U-Net, channels 16..256"),
    "segresnet": ModelEntry(_build_segresnet, DENSE, (2, 3), "SegResNet, 16 initial filters"),
    # instance segmentation only: its own training step in snakescope.instances
    "maskrcnn": ModelEntry(
        _build_maskrcnn,
        ("instance_segmentation",),
        (2,),
        "Mask R-CNN, ResNet-50 FPN (torchvision), He et al. ICCV 2017",
    ),
    "maskrcnn_resnet18": ModelEntry(
        _build_maskrcnn,
        ("instance_segmentation",),
        (2,),
        "Mask R-CNN, ResNet-18 FPN (torchvision): 31 M parameters instead of 44 M, for small data",
    ),
}

# The registry's earlier form, kept for callers that still use it (bench/inference_latency.py).
MODEL_BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {name: e.build for name, e in MODELS.items()}
MODEL_TASKS: dict[str, tuple[str, ...]] = {name: e.tasks for name, e in MODELS.items()}


def models_for(task: str, spatial_dims: int | None = None) -> list[str]:
    """Names of the registered models that do `task` (in `spatial_dims` dimensions, when given)."""
    return [
        name
        for name, entry in MODELS.items()
        if task in entry.tasks and (spatial_dims is None or spatial_dims in entry.spatial_dims)
    ]


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the network named in `spec` with freshly initialised weights.

    Raises:
        ValueError: unknown name, or a model that does not do the spec's task or spatial dims; the
            message lists the models that do.
    """
    if spec.name not in MODELS:
        raise ValueError(f"unknown model '{spec.name}'; available: {sorted(MODELS)}")
    entry = MODELS[spec.name]
    if spec.task not in entry.tasks:
        raise ValueError(
            f"model '{spec.name}' does not do {spec.task}; models for {spec.task}: {models_for(spec.task)}"
        )
    if spec.spatial_dims not in entry.spatial_dims:
        raise ValueError(
            f"model '{spec.name}' is {'/'.join(map(str, entry.spatial_dims))}D only, but the data is "
            f"{spec.spatial_dims}D; models for {spec.task} in {spec.spatial_dims}D: "
            f"{models_for(spec.task, spec.spatial_dims)}"
        )
    return entry.build(spec)


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
        raise FileNotFoundError(
            f"{path}: pretrained_weights file not found. Give a local .pt/.pth/.safetensors file."
        )
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
        elif (
            tensor.ndim == 4
            and own[name].ndim == 4
            and own[name].shape[0] == tensor.shape[0]
            and own[name].shape[2:] == tensor.shape[2:]
        ):
            in_channels = own[name].shape[1]
            update[name] = tensor.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (
                tensor.shape[1] / in_channels
            )
            loaded.append(f"{name} (input channels adapted {tensor.shape[1]}->{in_channels})")
        else:
            skipped.append(f"{source_name} (shape {tuple(tensor.shape)} vs {tuple(own[name].shape)})")
    model.load_state_dict(update, strict=False)
    log.info("pretrained weights %s: loaded %d tensors, skipped %d", path, len(loaded), len(skipped))
    for name in skipped:
        log.info("  skipped %s", name)
    return loaded, skipped


# torchvision's names for the final linear layer: ResNet/ResNeXt, MobileNet/EfficientNet, DenseNet, ViT.
_TORCHVISION_HEADS = ("fc.", "classifier.1.", "classifier.", "heads.head.")


def _name_aliases(own: dict, state: dict) -> dict:
    # torchvision checkpoints name the backbone without our "features." prefix and the classifier
    # by one of _TORCHVISION_HEADS; ours is "head.1.".
    aliases = {}
    for name in state:
        if name in own:
            continue
        if f"features.{name}" in own:
            aliases[name] = f"features.{name}"
            continue
        for prefix in _TORCHVISION_HEADS:
            if name.startswith(prefix) and "head.1." + name[len(prefix) :] in own:
                aliases[name] = "head.1." + name[len(prefix) :]
                break
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
