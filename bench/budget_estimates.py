"""The time budget's inference estimate against measured prediction and MC-dropout sampling.

Under `time_budget_minutes` the planner leaves each run time for its prediction and uncertainty
(`snakescope.planner.inference_seconds`): the forward time of one patch that `measure_step` measures
(and, for a network that samples only its head, the head's time), times the sliding windows of a test
image, times the passes (one, plus `mc_samples` whole passes or one pass and `mc_samples` heads), times
SLIDING_WINDOW_COST for what the window blending and the sampling's bookkeeping add. This script makes
that constant reproducible: per model, it measures the planner's forward time, then times one
prediction (`engine.inference.predict_logits`, as `predict` runs it) and one MC-dropout sampling
(`engine.inference.sample_dropout`, as `uncertainty` runs it) of a random image of --side pixels, and
prints each as a multiple of the planner's estimate before SLIDING_WINDOW_COST: the cost factor
that SLIDING_WINDOW_COST stands for.

    .venv/bin/python bench/budget_estimates.py --models segresnet unet_small --side 512 --patch 256
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import torch  # noqa: E402

from snakescope.engine.inference import predict_logits, sample_dropout, window_step  # noqa: E402
from snakescope.engine.models import ModelSpec, build_model  # noqa: E402
from snakescope.planner import SLIDING_WINDOW_COST, inference_seconds, measure_step  # noqa: E402
from snakescope.tasks import get_task  # noqa: E402


def measure(model_name: str, side: int, patch: int, channels: int, classes: int, mc_samples: int,
            repeats: int) -> dict:
    task = get_task("segmentation")
    fingerprint = {"task": task.name, "channels": channels, "num_classes": classes, "spatial_dims": 2,
                   "shape_median": [side, side], "n_images": 1, "n_by_subset": {"test": 1}}
    sample_shape = [patch, patch]
    cost = measure_step(model_name, fingerprint, sample_shape, "cpu")
    settings = {"uncertainty": True, "mc_samples": mc_samples}
    windows = math.prod(math.ceil(max(side - patch, 0) / step) + 1 for step in window_step(sample_shape))
    estimate = inference_seconds(cost, fingerprint, settings, sample_shape)
    predict_estimate = inference_seconds(cost, fingerprint, {**settings, "uncertainty": False}, sample_shape)

    spec = ModelSpec(model_name, task.name, channels, classes, 2, image_size=(patch, patch))
    model = build_model(spec).eval()
    image = torch.rand((1, channels, side, side), generator=torch.Generator().manual_seed(0))
    plan = {"patch_size": sample_shape}

    def predict():
        with torch.no_grad():
            predict_logits(model, image, plan)

    def sample():
        with torch.no_grad():
            sample_dropout(model, image, plan, mc_samples, task.mc_rows_per_pass,
                           activation=lambda logits: torch.softmax(logits, dim=1))

    predict_s = benchlib.median_seconds(predict, torch.device("cpu"), repeats)
    sample_s = benchlib.median_seconds(sample, torch.device("cpu"), max(1, repeats // 2))
    # the planner's estimates without SLIDING_WINDOW_COST: the measured forward (and head) time per window
    predict_unit = predict_estimate / SLIDING_WINDOW_COST
    mc_unit = (estimate - predict_estimate) / SLIDING_WINDOW_COST
    return {
        "model": model_name, "side": side, "patch": patch, "windows": windows,
        "forward_s": cost.forward_seconds_per_sample, "head_s": cost.head_seconds_per_sample,
        "predict_s": predict_s, "mc_s": sample_s,
        "predict_factor": predict_s / predict_unit, "mc_factor": sample_s / mc_unit,
        "estimate_s": estimate, "measured_s": predict_s + sample_s,
        "measured_per_estimate": (predict_s + sample_s) / estimate,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["segresnet", "unet_small"])
    parser.add_argument("--side", type=int, default=512, help="test image side (default: 512, as ISBI)")
    parser.add_argument("--patch", type=int, default=256, help="training patch side (default: 256)")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2, as CI)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(name, args.side, args.patch, args.channels, args.classes, args.mc_samples, args.repeats)
            for name in args.models]
    benchlib.print_table(rows, list(rows[0]))
    print(f"SLIDING_WINDOW_COST = {SLIDING_WINDOW_COST} (planner); measured factors above")
    result = {"rows": rows, "sliding_window_cost": SLIDING_WINDOW_COST,
              "environment": benchlib.environment(torch.device("cpu"))}
    benchlib.write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
