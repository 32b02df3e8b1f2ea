"""networks: the torch modules behind the registry (snakescope.engine.models), local pretrained weights,
and the switches Monte-Carlo dropout needs.

Networks whose dropout sits only near the output say so with `sampling_split()`, a trunk and a head, so
the uncertainty rule computes the trunk once and samples only the head (`engine.inference.sample_dropout`):
classifiers (`features` and a dropout + linear head; the backbones' own dropout layers are removed or
switched off, and EfficientNet's stochastic depth is not a dropout layer and is inactive at test time) and
SegResNet (dropout before its last decoder stage).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the registry imports this module when a builder runs, not the other way round
    from snakescope.engine.models import ModelSpec

log = logging.getLogger(__name__)

class TemperatureScaled(nn.Module):
    """`network` with its logits divided by one temperature (temperature scaling, Guo et al., ICML 2017):
    the argmax is unchanged, the softmax calibrated. A module, so the division travels into exports."""

    def __init__(self, network: nn.Module, temperature: float):
        super().__init__()
        self.network = network
        self.temperature = float(temperature)

    def forward(self, x):
        return self.network(x) / self.temperature


MASKRCNN_SCORE_THRESHOLD = 0.5  # painting threshold without validation images to tune it on
# Proposals sampled per training image for the box and mask heads (torchvision: 512). The heads' cost
# grows with it and dominates a step on the CPU (bench/maskrcnn_step.py: 4.3 s at 256, 2.6 at 128, 1.7 at
# 64 for ResNet-18, hardly more for ResNet-50); 128 still gives the mask head up to 32 objects per image.
MASKRCNN_ROIS_PER_IMAGE = 128
MASKRCNN_MAX_DETECTIONS = 1000  # CPM-15 tiles hold up to ~350 nuclei; torchvision's default (100) is too few


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

    def sampling_split(self):
        """(trunk, head) for MC dropout when all active dropout is in the head, else None."""
        if any(layer.p > 0 for layer in dropout_modules(self.features)):
            return None
        return self.features, self.head


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


def torchvision_classifier(spec: ModelSpec, factory: str, first_conv: str, head: str) -> Classifier:
    """A torchvision classifier whose first convolution (dotted path `first_conv`) takes the spec's
    channels, and whose classification layer(s) (attribute `head`, possibly with its own dropout) are
    replaced by our dropout + linear head."""
    import torchvision.models

    net = getattr(torchvision.models, factory)(weights=None)
    parent_name, _, conv_name = first_conv.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, conv_name, _adapt_first_conv(getattr(parent, conv_name), spec.in_channels))
    old_head = getattr(net, head)
    n_features = [m for m in old_head.modules() if isinstance(m, nn.Linear)][-1].in_features
    setattr(net, head, nn.Identity())
    return Classifier(net, n_features, spec.out_channels, spec.dropout)


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


def vit_tiny(spec: ModelSpec) -> Classifier:
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


def unet(spec: ModelSpec, channels: tuple[int, ...] = (16, 32, 64, 128, 256)) -> nn.Module:
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


def basic_unet(spec: ModelSpec) -> nn.Module:
    from monai.networks.nets import BasicUNet

    # The plain U-Net of Falk et al. (Nature Methods 2019), with dropout in every two-conv block.
    return BasicUNet(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        features=(16, 16, 32, 64, 128, 16),
        dropout=spec.dropout,
    )


def attention_unet(spec: ModelSpec) -> nn.Module:
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


def _segresnet_class():
    from monai.networks.layers.factories import Dropout
    from monai.networks.nets import SegResNet

    class SegResNetHeadDropout(SegResNet):
        """MONAI's SegResNet (Myronenko, BrainLes 2018, without the VAE branch) with its one dropout layer
        moved from after the first convolution to the input of the last decoder stage (full resolution,
        encoder skip added). MC dropout then runs the trunk once and samples only that stage and the final
        convolution, 14-23 % of the network's time on 128² patches (bench/mc_head_share.py): 20 samples
        cost about 4 passes instead of 20 (bench/budget_estimates.py). The weights are SegResNet's, names
        included.
        """

        def __init__(self, dropout_prob: float, **kwargs):
            super().__init__(dropout_prob=None, **kwargs)
            self.head_dropout = Dropout[Dropout.DROPOUT, self.spatial_dims](dropout_prob)

        def trunk(self, x: torch.Tensor) -> torch.Tensor:
            x, skips = self.encode(x)
            skips.reverse()  # deepest first, as SegResNet.decode takes them
            for up, layer, skip in zip(self.up_samples[:-1], self.up_layers[:-1], skips[1:-1]):
                x = layer(up(x) + skip)
            return self.up_samples[-1](x) + skips[-1]

        def head(self, x: torch.Tensor) -> torch.Tensor:
            x = self.up_layers[-1](self.head_dropout(x))
            return self.conv_final(x) if self.use_conv_final else x

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.trunk(x))

        def sampling_split(self):
            return self.trunk, self.head

    return SegResNetHeadDropout


def segresnet(spec: ModelSpec) -> nn.Module:
    return _segresnet_class()(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        init_filters=16,
        dropout_prob=spec.dropout,
    )


def maskrcnn(spec: ModelSpec, backbone: str = "resnet50") -> nn.Module:
    """The registry's Mask R-CNN (He et al., ICCV 2017; torchvision's, on a ResNet FPN, never downloaded)
    with default anchors and `spec.out_channels` classes, background included. Training builds it with
    anchors sized to the data (`build_maskrcnn`); a loaded detector gets them back (`set_anchor_sizes`).
    """
    return build_maskrcnn(spec.in_channels, spec.out_channels, backbone=backbone)


def set_anchor_sizes(model: nn.Module, sizes: tuple[int, ...] | None) -> nn.Module:
    """Give a Mask R-CNN one anchor size per FPN level (they are not part of its state dict)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(sizes or anchor_sizes(None))
    model.rpn.anchor_generator = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
    return model


def anchor_sizes(median_area: float | None) -> tuple[int, ...]:
    """Anchor sizes for the five FPN levels, starting at about half the typical object diameter.

    torchvision's defaults (32..512 px) suit COCO objects; nuclei of 10-25 px need smaller anchors, or
    the RPN finds no positive anchors for them at all.
    """
    if not median_area:
        return (32, 64, 128, 256, 512)
    smallest = int(2 ** max(2, round(math.log2(math.sqrt(median_area))) - 1))
    return tuple(smallest * 2**k for k in range(5))


def build_maskrcnn(
    in_channels: int,
    num_classes: int = 2,
    sizes: tuple[int, ...] | None = None,
    image_size: int = 256,
    backbone: str = "resnet50",
) -> nn.Module:
    """torchvision Mask R-CNN on a ResNet FPN backbone, freshly initialised (no download).

    The backbone is built as torchvision's maskrcnn_resnet50_fpn builds it without weights (trainable
    BatchNorm, all layers trainable), so a ResNet-50 detector keeps the state-dict names of torchvision's
    COCO file and loads it.

    Args:
        in_channels: image channels; the first convolution is rebuilt when it is not 3.
        num_classes: background + object classes (2: background, object).
        sizes: anchor size per FPN level (see `anchor_sizes`).
        image_size: min_size = max_size of the internal resize; training crops of this size pass
            unscaled. Prediction sets both to the image's own sides so it is never rescaled.
        backbone: a torchvision ResNet name (resnet18, resnet50, ...).

    Input: list of (C, Y, X) float tensors normalised to about 0..1 (the model subtracts 0.5 and
    divides by 0.25). Output in eval mode: per image a dict of boxes (N, 4) xyxy, labels, scores,
    masks (N, 1, Y, X) probabilities.
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    model = MaskRCNN(
        resnet_fpn_backbone(backbone_name=backbone, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5),
        num_classes=num_classes,
        min_size=image_size,
        max_size=image_size,
        image_mean=[0.5] * in_channels,
        image_std=[0.25] * in_channels,
        box_detections_per_img=MASKRCNN_MAX_DETECTIONS,
        rpn_pre_nms_top_n_test=3000,
        rpn_post_nms_top_n_test=2000,
        box_batch_size_per_image=MASKRCNN_ROIS_PER_IMAGE,
        # Boxes below the painting threshold are dropped before the mask head runs on them: an untrained
        # detector otherwise sends a thousand boxes per image through the mask head.
        box_score_thresh=MASKRCNN_SCORE_THRESHOLD,
    )
    set_anchor_sizes(model, sizes)
    if in_channels != 3:
        conv = model.backbone.body.conv1
        model.backbone.body.conv1 = nn.Conv2d(
            in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False
        )
    return model


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


def sampling_split(model: nn.Module):
    """(trunk, head) when MC dropout need sample only `model`'s head (its `sampling_split()`), else None."""
    return model.sampling_split() if hasattr(model, "sampling_split") else None


def enable_mc_dropout(model: nn.Module) -> int:
    """Put `model` in eval mode with only its dropout layers sampling; returns how many there are."""
    model.eval()
    layers = dropout_modules(model)
    for layer in layers:
        layer.train()
    return len(layers)
