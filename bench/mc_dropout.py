"""MC-dropout cost and agreement: snakescope's sampling versus the naive repeated full passes.

* classification (ResNet-50 `Classifier`): `snakescope.engine.inference.sample_dropout` computes the features
  once and samples only the dropout head (all samples in one call), against 20 full forward passes with
  dropout on. Target: 20 samples for at most 2x the time of one plain forward pass.
* segmentation (the registry's U-Net): `mc_segment`, the samples batched (and the sliding window fed
  that many windows per pass), against 20 sequential passes.

Times are medians of --repeats runs, as ratios to one plain (eval-mode) forward pass of the same batch.
Agreement in distribution: the per-image (per-pixel) mean probabilities and entropies of the two methods
are compared with the same comparison between two independent runs of the naive method (sampling error
alone), and, for classification, a two-sample KS test on many samples of one class probability for a
few images.

A freshly initialised ResNet-50 gives almost the same logits for every image and every dropout mask, so
any two methods would agree trivially; the head weights are therefore scaled so the logits spread over a
few units (dropout then moves them by about one unit), which gives the comparison something to detect.

    python bench/mc_dropout.py               # GPU sizes
    python bench/mc_dropout.py --cpu-smoke   # tiny, on the CPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from snakescope import models  # noqa: E402
from snakescope.engine.inference import predict_logits, sample_dropout  # noqa: E402
from snakescope.engine.models import ModelSpec, build_model  # noqa: E402
from snakescope.engine.networks import enable_mc_dropout  # noqa: E402
from snakescope.uncertainty_measures import normalised_entropy  # noqa: E402


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1)


def mc_classify(model, images: torch.Tensor, samples: int) -> torch.Tensor:
    """The classification task's sampler call: (samples, N, K) probabilities, the head alone sampled."""
    return sample_dropout(model, images, {"patch_size": None}, samples, 256, activation=softmax)


def mc_segment(model, image: torch.Tensor, plan: dict, samples: int) -> torch.Tensor:
    """The segmentation task's sampler call: (samples, K, *spatial) probabilities, 16 rows a pass."""
    return sample_dropout(model, image, plan, samples, 16, activation=softmax)[:, 0]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true", help="same as --device cpu --small")
    parser.add_argument("--samples", type=int, default=20, help="MC samples (default 20)")
    parser.add_argument("--size", type=int, default=None, help="classification image side (default 224)")
    parser.add_argument(
        "--batch", type=int, default=None, help="classification images per timed batch (default 64)"
    )
    parser.add_argument(
        "--images", type=int, default=None, help="images for the agreement check (default 512)"
    )
    parser.add_argument(
        "--ks-samples", type=int, default=None, help="samples per image for the KS test (default 1000)"
    )
    parser.add_argument("--seg-model", default="unet", help="registry name of the segmentation network")
    parser.add_argument("--seg-size", type=int, default=None, help="segmentation image side (default 512)")
    parser.add_argument(
        "--seg-patch", type=int, default=None, help="training patch / sliding window (default 256)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, median taken (default 5)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.device, args.small = "cpu", True
    small = args.small
    defaults = {
        "size": 32 if small else 224,
        "batch": 2 if small else 64,
        "images": 4 if small else 512,
        "ks_samples": 40 if small else 1000,
        "seg_size": 48 if small else 512,
        "seg_patch": 32 if small else 256,
        "repeats": 1 if small else 5,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def random_images(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Images that differ in brightness, contrast and texture scale, so the network's features differ."""
    base = torch.randn(n, channels, size // 8, size // 8, generator=generator)
    smooth = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    detail = torch.randn(n, channels, size, size, generator=generator)
    scale = torch.rand(n, 1, 1, 1, generator=generator) * 2
    return smooth * scale + 0.3 * detail + torch.rand(n, 1, 1, 1, generator=generator)


def naive_classify(model, images: torch.Tensor, samples: int) -> torch.Tensor:
    """`samples` full forward passes with the dropout layers sampling: (samples, N, K)."""
    enable_mc_dropout(model)
    with torch.no_grad():
        out = torch.stack([torch.softmax(model(images).float(), dim=1) for _ in range(samples)])
    model.eval()
    return out


def naive_segment(model, image: torch.Tensor, plan: dict, samples: int) -> torch.Tensor:
    enable_mc_dropout(model)
    with torch.no_grad():
        out = torch.cat(
            [torch.softmax(predict_logits(model, image, plan).float(), dim=1).cpu() for _ in range(samples)]
        )
    model.eval()
    return out


def plain_pass(model, fn):
    model.eval()
    with torch.no_grad():
        return fn()


def summarise(a: np.ndarray, b: np.ndarray, axis_k: int) -> dict:
    """Mean absolute difference of mean probabilities and of normalised entropies between two sample sets."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    ent_a, ent_b = normalised_entropy(mean_a, axis=axis_k), normalised_entropy(mean_b, axis=axis_k)
    return {
        "mean_abs_diff_probability": float(np.abs(mean_a - mean_b).mean()),
        "mean_abs_diff_entropy": float(np.abs(ent_a - ent_b).mean()),
        "mean_entropy_a": float(ent_a.mean()),
        "mean_entropy_b": float(ent_b.mean()),
    }


def classification(args, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    model = build_model(ModelSpec("resnet50", "classification", 3, 5, 2, 0.3)).to(device).eval()
    probe = random_images(min(args.images, 64), 3, args.size, generator).to(device)
    with torch.no_grad():
        features = model.features(probe)
        linear = model.head[1]
        typical_norm = features.norm(dim=1).mean()
        linear.weight.normal_(0, 2.0 / float(typical_norm))
        linear.bias.zero_()
    batch = random_images(args.batch, 3, args.size, generator).to(device)
    s = args.samples
    times = {
        "one plain pass": benchlib.time_calls(
            lambda: plain_pass(model, lambda: model(batch)), device, args.repeats
        ),
        f"mc_classify, {s} samples (head only)": benchlib.time_calls(
            lambda: mc_classify(model, batch, s), device, args.repeats
        ),
        f"naive, {s} full passes": benchlib.time_calls(
            lambda: naive_classify(model, batch, s), device, args.repeats
        ),
    }
    one = benchlib.median(times["one plain pass"])
    rows = [
        {
            "task": "classification",
            "method": k,
            "seconds": benchlib.median(v),
            "ratio_to_one_pass": benchlib.median(v) / one,
        }
        for k, v in times.items()
    ]

    # agreement over many images, 20 samples each
    head, naive, naive2 = [], [], []
    for start in range(0, args.images, args.batch):
        images = random_images(min(args.batch, args.images - start), 3, args.size, generator).to(device)
        torch.manual_seed(1 + start)
        head.append(mc_classify(model, images, s).cpu())
        naive.append(naive_classify(model, images, s).cpu())
        naive2.append(naive_classify(model, images, s).cpu())
    head, naive, naive2 = (torch.cat(x, dim=1).numpy() for x in (head, naive, naive2))
    agreement = {
        "head_vs_naive": summarise(head, naive, axis_k=-1),
        "naive_vs_naive": summarise(naive, naive2, axis_k=-1),
        "dropout_spread_of_probability": float(naive.std(0).mean()),
    }

    # many samples of a few images: KS test on the probability of class 0
    from scipy.stats import ks_2samp

    few = random_images(2 if args.small else 4, 3, args.size, generator).to(device)
    ks = []
    for i in range(len(few)):
        image = few[i : i + 1]
        fast = mc_classify(model, image, args.ks_samples)[:, 0, 0].cpu().numpy()
        full = []
        per_pass = max(1, min(args.ks_samples, 256))
        enable_mc_dropout(model)
        with torch.no_grad():
            for start in range(0, args.ks_samples, per_pass):
                n = min(per_pass, args.ks_samples - start)
                full.append(torch.softmax(model(image.expand(n, -1, -1, -1)).float(), dim=1)[:, 0].cpu())
        model.eval()
        full = torch.cat(full).numpy()
        result = ks_2samp(fast, full)
        ks.append(
            {
                "image": i,
                "statistic": float(result.statistic),
                "p_value": float(result.pvalue),
                "mean_head": float(fast.mean()),
                "mean_full": float(full.mean()),
                "std_head": float(fast.std()),
                "std_full": float(full.std()),
            }
        )
    agreement["ks_class0_probability"] = ks
    return {"rows": rows, "agreement": agreement}


def segmentation(args, device: torch.device) -> dict:
    torch.manual_seed(0)
    spec = ModelSpec(args.seg_model, "segmentation", 1, 2, 2, 0.3)
    model = build_model(spec).to(device).eval()
    n_parameters = sum(p.numel() for p in model.parameters())
    plan = {"task": "segmentation", "spatial_dims": 2, "patch_size": [args.seg_patch, args.seg_patch]}
    generator = torch.Generator().manual_seed(1)
    image = random_images(1, 1, args.seg_size, generator).to(device)
    s = args.samples
    times = {
        "one plain pass": benchlib.time_calls(
            lambda: plain_pass(model, lambda: predict_logits(model, image, plan)), device, args.repeats
        ),
        f"mc_segment, {s} samples batched": benchlib.time_calls(
            lambda: mc_segment(model, image, plan, s), device, args.repeats
        ),
        f"naive, {s} sequential passes": benchlib.time_calls(
            lambda: naive_segment(model, image, plan, s), device, args.repeats
        ),
    }
    one = benchlib.median(times["one plain pass"])
    rows = [
        {
            "task": "segmentation",
            "method": k,
            "seconds": benchlib.median(v),
            "ratio_to_one_pass": benchlib.median(v) / one,
        }
        for k, v in times.items()
    ]
    torch.manual_seed(2)
    batched = mc_segment(model, image, plan, s).numpy()
    naive = naive_segment(model, image, plan, s).numpy()
    naive2 = naive_segment(model, image, plan, s).numpy()
    agreement = {
        "batched_vs_naive": summarise(batched, naive, axis_k=0),
        "naive_vs_naive": summarise(naive, naive2, axis_k=0),
        "dropout_spread_of_probability": float(naive.std(0).mean()),
    }
    return {"rows": rows, "agreement": agreement, "model": args.seg_model, "parameters_M": n_parameters / 1e6}


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = benchlib.pick_device(args.device)
    env = benchlib.environment(device)
    print(
        f"# MC dropout on {env['gpu'] or 'CPU'}: {args.samples} samples; classification ResNet-50 "
        f"{args.size}x{args.size} batch {args.batch}; segmentation {args.seg_model} {args.seg_size}x{args.seg_size} "
        f"window {args.seg_patch}; fp32 as the uncertainty rule runs",
        flush=True,
    )
    result = {"environment": env, "arguments": vars(args), "classification": classification(args, device)}
    benchlib.free_cuda(device)
    result["segmentation"] = segmentation(args, device)
    rows = result["classification"]["rows"] + result["segmentation"]["rows"]
    benchlib.print_table(rows, ["task", "method", "seconds", "ratio_to_one_pass"])
    c, g = result["classification"]["agreement"], result["segmentation"]["agreement"]
    print(
        "agreement (mean |difference| of per-image mean probabilities / normalised entropies; "
        "naive_vs_naive = sampling error alone):"
    )
    for name, block in (("classification", c), ("segmentation", g)):
        for key, value in block.items():
            if isinstance(value, dict):
                print(
                    f"  {name} {key}: probability {value['mean_abs_diff_probability']:.4f}, "
                    f"entropy {value['mean_abs_diff_entropy']:.4f}, mean entropies "
                    f"{value['mean_entropy_a']:.4f} / {value['mean_entropy_b']:.4f}"
                )
        print(
            f"  {name} dropout spread (std of a probability across samples): "
            f"{block['dropout_spread_of_probability']:.4f}"
        )
    for test in c["ks_class0_probability"]:
        print(
            f"  classification KS, image {test['image']}, {args.ks_samples} samples each: "
            f"D={test['statistic']:.3f} p={test['p_value']:.3f} (means {test['mean_head']:.4f} / "
            f"{test['mean_full']:.4f}, stds {test['std_head']:.4f} / {test['std_full']:.4f})"
        )
    head_ratio = result["classification"]["rows"][1]["ratio_to_one_pass"]
    print(
        f"classification: {args.samples} head-only samples cost {head_ratio:.2f}x one pass "
        f"({'meets' if head_ratio <= 2 else 'MISSES'} the 2x target)"
    )
    benchlib.write_json(result, args.json)
    _ = models  # the registry module, for readers looking for the names used here
    return result


if __name__ == "__main__":
    main()
