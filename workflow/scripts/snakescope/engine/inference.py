"""inference: a network's output for whole images, and Monte-Carlo dropout samples of it.

Dense outputs come from a sliding window of the training patch size with Gaussian blending, so large
images are predicted at full resolution rather than resized. Monte-Carlo dropout (Gal & Ghahramani,
ICML 2016) keeps dropout on at test time and samples the network repeatedly; `sample_dropout` is the one
sampler every task uses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from snakescope.engine.networks import Classifier, TemperatureScaled, dropout_modules, enable_mc_dropout

WINDOW_OVERLAP = 0.25  # of the sliding window's patches, along each axis


def predict_logits(model: torch.nn.Module, image: torch.Tensor, plan: dict, batch_size: int = 4) -> torch.Tensor:
    """Raw outputs for a batch (N, C, *spatial): the network on the whole batch when the plan has no
    patch size (images used whole), else a sliding window of the patch size, `batch_size` windows a pass.
    """
    if not plan.get("patch_size"):
        return model(image)
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(
        image, roi_size=plan["patch_size"], sw_batch_size=batch_size, predictor=model, overlap=WINDOW_OVERLAP,
        mode="gaussian", padding_mode="reflect",
    )


def window_step(patch_size: list[int]) -> list[int]:
    """The sliding window's step per axis, as MONAI's sliding_window_inference computes it for an image
    larger than the patch: windows start at multiples of it, the last one flush with the image's end."""
    return [max(1, int(p * (1 - WINDOW_OVERLAP))) for p in patch_size]


def _has_active_dropout(module: torch.nn.Module) -> bool:
    return any(layer.p > 0 for layer in dropout_modules(module))


@torch.no_grad()
def sample_dropout(
    model: torch.nn.Module,
    images: torch.Tensor,
    plan: dict,
    samples: int,
    rows_per_pass: int,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """`samples` MC-dropout outputs for a batch (N, C, *spatial): returns (samples, N, K, *spatial) float32
    on the CPU, after `activation` (e.g. a softmax over the class axis 1) when given.

    The images are repeated along the batch axis so several samples run in one pass, at most
    `rows_per_pass` rows (and, with a sliding window, as many windows) per pass; each row draws its own
    dropout masks, and the networks normalise per image (instance norm) or with fixed statistics (batch
    norm in eval mode), so a batch of samples equals the same samples one by one.

    A `Classifier` whose backbone has no active dropout computes its features once in eval mode and
    samples only the dropout head, all samples in one call: exact, and 20 samples cost about one pass.
    """
    activation = activation or (lambda output: output)
    n = images.shape[0]
    network, temperature = (model.network, model.temperature) if isinstance(model, TemperatureScaled) else (model, 1.0)
    if isinstance(network, Classifier) and not _has_active_dropout(network.features):
        network.eval()
        features = network.features(images)
        network.head.train()  # only Dropout in the head reacts to train mode
        try:
            output = network.head(features.repeat(samples, *([1] * (features.ndim - 1)))) / temperature
        finally:
            network.eval()
        return activation(output.float()).view(samples, n, -1).cpu()
    enable_mc_dropout(model)
    per_pass = max(1, rows_per_pass // max(n, 1))
    outputs = []
    try:
        for start in range(0, samples, per_pass):
            k = min(per_pass, samples - start)
            batch = images.repeat(k, *([1] * (images.ndim - 1)))
            output = activation(predict_logits(model, batch, plan, batch_size=rows_per_pass).float())
            outputs.append(output.view(k, n, *output.shape[1:]).cpu())
    finally:
        model.eval()
    return torch.cat(outputs)
