"""Inference latency (batch 1) and batched throughput of the registry's classification networks.

For every classification model in `snakescope.engine.models` (whatever names exist at run time) at 224x224,
3 channels, 5 classes, in eval mode: the median time of one image at batch 1 in fp32 and in bf16
autocast (as the predict rule runs on GPUs with bf16), and images/s at a large batch (bf16,
channels-last on CUDA), next to AIMIC's reported 0.109 s per sample.

    python bench/inference_latency.py              # GPU sizes
    python bench/inference_latency.py --cpu-smoke  # tiny, on the CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import torch  # noqa: E402

from snakescope.engine import models  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true", help="same as --device cpu --small")
    parser.add_argument("--size", type=int, default=None, help="image side (default 224)")
    parser.add_argument("--batch", type=int, default=None, help="batch for throughput (default 256)")
    parser.add_argument("--repeats", type=int, default=None, help="timed batch-1 calls (default 50)")
    parser.add_argument("--models", default=None, help="comma-separated names (default: every classifier)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.device, args.small = "cpu", True
    defaults = {
        "size": 32 if args.small else 224,
        "batch": 4 if args.small else 256,
        "repeats": 2 if args.small else 50,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def classification_models() -> list[str]:
    return list(models.models_for("classification", 2))


def make_spec(name: str, size: int) -> models.ModelSpec:
    fields = {f.name for f in dataclasses.fields(models.ModelSpec)}
    extra = {"image_size": (size, size)} if "image_size" in fields else {}
    return models.ModelSpec(name, "classification", 3, 5, 2, 0.3, **extra)


def measure(name: str, args, device: torch.device) -> dict:
    model = models.build_model(make_spec(name, args.size)).to(device).eval()
    cuda = device.type == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    n_parameters = sum(p.numel() for p in model.parameters())
    one = torch.randn(1, 3, args.size, args.size, device=device)

    def forward(x, amp: bool):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return model(x)

    warmup = 1 if args.small else 10
    row = {"model": name, "parameters_M": n_parameters / 1e6}
    row["latency_b1_fp32_ms"] = 1e3 * benchlib.median_seconds(lambda: forward(one, False), device, args.repeats, warmup)
    row["latency_b1_bf16_ms"] = (
        1e3 * benchlib.median_seconds(lambda: forward(one, True), device, args.repeats, warmup) if bf16 else None
    )
    base = benchlib.reset_peak(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    batch = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if cuda:
        batch = batch.contiguous(memory_format=torch.channels_last)
    seconds = benchlib.median_seconds(lambda: forward(batch, bf16), device, 5 if not args.small else 1,
                                      warmup=3 if not args.small else 1)
    row["throughput_images_per_s"] = args.batch / seconds
    row["throughput_precision"] = "bf16" if bf16 else "fp32"
    row["peak_gib"] = benchlib.peak_gib(device, base)
    best = min(v for v in (row["latency_b1_fp32_ms"], row["latency_b1_bf16_ms"]) if v is not None)
    row["times_faster_than_aimic_b1"] = benchlib.AIMIC_SECONDS_PER_SAMPLE / (best / 1e3)
    row["times_faster_than_aimic_batched"] = (
        benchlib.AIMIC_SECONDS_PER_SAMPLE * row["throughput_images_per_s"]
    )
    return row


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = benchlib.pick_device(args.device)
    env = benchlib.environment(device)
    names = args.models.split(",") if args.models else classification_models()
    print(
        f"# inference on {env['gpu'] or 'CPU'} at {args.size}x{args.size}: {', '.join(names)}; "
        f"AIMIC: {benchlib.AIMIC_SECONDS_PER_SAMPLE} s per sample",
        flush=True,
    )
    rows = []
    for name in names:
        try:
            rows.append(measure(name, args, device))
        except Exception as error:  # one broken entry must not hide the others' figures
            rows.append({"model": name, "error": f"{type(error).__name__}: {error}"})
        benchlib.free_cuda(device)  # the model and its batch are gone with measure's frame
        print(f"  done {name}", flush=True)
    benchlib.print_table(
        rows,
        [
            "model",
            "parameters_M",
            "latency_b1_fp32_ms",
            "latency_b1_bf16_ms",
            "throughput_images_per_s",
            "times_faster_than_aimic_b1",
            "peak_gib",
        ],
    )
    for row in rows:
        if "error" in row:
            print(f"{row['model']}: FAILED {row['error']}")
    result = {"environment": env, "arguments": vars(args), "aimic_seconds_per_sample": 0.109, "rows": rows}
    benchlib.write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
