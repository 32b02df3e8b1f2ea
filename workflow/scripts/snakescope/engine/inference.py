"""inference: a network's output for whole images, and Monte-Carlo dropout samples of it.

Dense outputs come from a sliding window of the training patch size with Gaussian blending, so large
images are predicted at full resolution rather than resized. Monte-Carlo dropout (Gal & Ghahramani,
ICML 2016) keeps dropout on at test time and samples the network repeatedly; `sample_dropout` is the one
sampler every task uses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from snakescope.engine.networks import TemperatureScaled, enable_mc_dropout, sampling_split

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

    A network whose dropout sits only in a head (`sampling_split()`: classifiers, SegResNet) runs its
    trunk once per image or window, `rows_per_pass` windows a pass as a prediction does, and its head
    `samples` times on the trunk's output, the samples stacked along the channel axis so that a sliding
    window blends each sample as it blends a prediction. Exact, and 20 samples of a classifier cost about
    one pass, of SegResNet about four (128² windows, two CPU threads; bench/budget_estimates.py).

    Any other network runs whole for every sample: the images are repeated along the batch axis so several
    samples run in one pass, at most `rows_per_pass` rows (and, with a sliding window, as many windows)
    per pass; each row draws its own dropout masks, and the networks normalise per image (instance norm)
    or with fixed statistics (batch norm in eval mode), so a batch of samples equals the same samples one
    by one.
    """
    activation = activation or (lambda output: output)
    n = images.shape[0]
    network, temperature = (model.network, model.temperature) if isinstance(model, TemperatureScaled) else (model, 1.0)
    split = sampling_split(network)
    enable_mc_dropout(model)
    try:
        if split is not None:
            trunk, head = split

            def head_samples(x: torch.Tensor) -> torch.Tensor:  # (B, C, ...) -> (B, samples * K, ...)
                features = trunk(x)
                return torch.cat([head(features) / temperature for _ in range(samples)], dim=1)

            stacked = predict_logits(head_samples, images, plan, batch_size=rows_per_pass).float()
            per_sample = stacked.view(n, samples, -1, *stacked.shape[2:]).transpose(0, 1)
            output = activation(per_sample.reshape(samples * n, *per_sample.shape[2:]))
            return output.view(samples, n, *output.shape[1:]).cpu()
        per_pass = max(1, rows_per_pass // max(n, 1))
        outputs = []
        for start in range(0, samples, per_pass):
            k = min(per_pass, samples - start)
            batch = images.repeat(k, *([1] * (images.ndim - 1)))
            output = activation(predict_logits(model, batch, plan, batch_size=rows_per_pass).float())
            outputs.append(output.view(k, n, *output.shape[1:]).cpu())
    finally:
        model.eval()
    return torch.cat(outputs)
