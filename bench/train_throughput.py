"""Training throughput: a bare PyTorch loop versus snakescope's own training step, on one device.

For each case (U-Net 512x512 batch 16, ResNet-50 224x224 batch 128) it times

* bare: random tensors already on the device, Adam, bf16 autocast (CUDA), channels-last, cross-entropy;
* snakescope: the `train` rule's step on its real data path: a converted intermediate (arrays.zarr and
  samples.tsv in convert's format, written to a temporary folder from synthetic arrays), loaded with
  `snakescope.engine.items.load_items`, batched and augmented by `snakescope.engine.data.TrainBatches` with the
  configured augmentations (flip, rotate90 by default), trained by `snakescope.engine.trainer.Trainer.train_epoch` with
  the task's default loss, under the global settings `fit` uses (`seed_everything`: deterministic
  algorithms on the CPU only, cuDNN autotuning off);

and prints images/s of both, their ratio (target >= 0.90) and the peak GPU memory of each. Extra rows
attribute a gap: snakescope with deterministic algorithms forced on, with cuDNN autotuning, and with
the training set in pinned host memory instead of on the GPU.

    python bench/train_throughput.py                       # full sizes, on the GPU
    python bench/train_throughput.py --cpu-smoke           # tiny sizes on the CPU (CI)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from snakescope.augment import make_plan  # noqa: E402
from snakescope.engine import data, models, networks  # noqa: E402
from snakescope.engine.items import StoredItems  # noqa: E402
from snakescope.engine.runtime import autocast_dtype, seed_everything  # noqa: E402
from snakescope.engine.trainer import Trainer, patches_per_image  # noqa: E402
from snakescope.io import read_samples  # noqa: E402
from snakescope.tasks import get_task  # noqa: E402

UNET_CHANNELS = (64, 128, 256, 512, 1024)  # MONAI-style residual U-Net, 64 base filters, 4 poolings (~31M)
SMALL_UNET_CHANNELS = (8, 16, 32, 64, 128)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument(
        "--small", action="store_true", help="tiny sizes (U-Net 64x64, ResNet-50 32x32, batch 4, 2 steps)"
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="same as --device cpu --small")
    parser.add_argument("--cases", default="unet,resnet50", help="comma-separated: unet, resnet50")
    parser.add_argument(
        "--unet-channels",
        default=None,
        help=f"U-Net channels per level (default {','.join(map(str, UNET_CHANNELS))})",
    )
    parser.add_argument("--unet-size", type=int, default=None, help="U-Net image side (default 512)")
    parser.add_argument("--unet-batch", type=int, default=None, help="U-Net batch (default 16)")
    parser.add_argument("--resnet-size", type=int, default=None, help="ResNet-50 image side (default 224)")
    parser.add_argument("--resnet-batch", type=int, default=None, help="ResNet-50 batch (default 128)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 24)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 8)")
    parser.add_argument(
        "--batches-per-epoch", type=int, default=None, help="training-set size in batches (default 8)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="bare/snakescope measurements, alternated (default 2)"
    )
    parser.add_argument("--augmentations", default="flip,rotate90", help="the plan's augmentations")
    parser.add_argument(
        "--threads", type=int, default=None, help="the train job's threads (default: all cores)"
    )
    parser.add_argument("--no-extras", action="store_true", help="skip the attribution rows")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.device, args.small = "cpu", True
    small = args.small
    args.unet_channels = (
        tuple(int(c) for c in args.unet_channels.split(","))
        if args.unet_channels
        else SMALL_UNET_CHANNELS
        if small
        else UNET_CHANNELS
    )
    defaults = {
        "unet_size": 64 if small else 512,
        "unet_batch": 4 if small else 16,
        "resnet_size": 32 if small else 224,
        "resnet_batch": 4 if small else 128,
        "steps": 2 if small else 24,
        "warmup": 1 if small else 8,
        "batches_per_epoch": 2 if small else 8,
        "rounds": 1 if small else 2,
        "threads": 1 if small else (os.cpu_count() or 1),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if small:
        args.no_extras = True
    return args


# -- a converted intermediate, as `convert` writes it ------------------------------------------------


def write_intermediate(
    folder: Path, task: str, n: int, channels: int, size: int, n_classes: int, seed: int = 0
) -> tuple[str, str, list[str], dict]:
    """arrays.zarr (convert's store: float32 CYX images at native intensity, int64 YX targets) and samples.tsv.

    Returns (arrays path, samples path, ids, fingerprint).
    """
    import pandas as pd

    from snakescope.store import write_store

    rng = np.random.default_rng(seed)
    ids = [f"s{i:04d}" for i in range(n)]
    arrays, rows = {}, []
    classes = [f"class{c}" for c in range(n_classes)]
    for i, sample_id in enumerate(ids):
        # camera-like counts: a smooth background, bright blobs, shot noise
        arrays[f"image/{sample_id}"] = rng.gamma(4.0, 100.0, size=(channels, size, size)).astype(np.float32)
        row = {
            "id": sample_id,
            "image": f"{sample_id}.tif",
            "subset": "train",
            "group": sample_id,
            "shape": f"{channels}x{size}x{size}",
        }
        if task == "classification":
            row["label"], row["label_index"] = classes[i % n_classes], i % n_classes
        else:
            arrays[f"target/{sample_id}"] = rng.integers(0, n_classes, size=(size, size), dtype=np.int64)
            row["label"], row["label_index"] = "", -1
        rows.append(row)
    arrays_store, samples_tsv = folder / "arrays.zarr", folder / "samples.tsv"
    with write_store(arrays_store) as store:
        for sample_id in ids:
            store.add(sample_id, arrays[f"image/{sample_id}"], arrays.get(f"target/{sample_id}"))
    pd.DataFrame(rows).to_csv(samples_tsv, sep="\t", index=False)
    fingerprint = {
        "spatial_dims": 2,
        "channels": channels,
        "intensity": [{"mean": 400.0, "std": 200.0}] * channels,
    }
    if task == "classification":
        fingerprint["classes"] = classes
    else:
        fingerprint["num_classes"] = n_classes
    return str(arrays_store), str(samples_tsv), ids, fingerprint


# -- the cases ---------------------------------------------------------------------------------------


def case_settings(args, name: str) -> dict:
    if name == "unet":
        return {
            "task": "segmentation",
            "model": "unet",
            "size": args.unet_size,
            "batch": args.unet_batch,
            "channels": 1,
            "classes": 2,
        }
    if name == "resnet50":
        return {
            "task": "classification",
            "model": "resnet50",
            "size": args.resnet_size,
            "batch": args.resnet_batch,
            "channels": 3,
            "classes": 5,
        }
    raise SystemExit(f"unknown case {name!r}; known: unet, resnet50")


def build_network(case: dict, args) -> nn.Module:
    """ModelSpec + the registry's builder; the U-Net with --unet-channels, built as networks.unet."""
    spec = models.ModelSpec(case["model"], case["task"], case["channels"], case["classes"], 2, 0.3)
    if case["model"] == "unet":
        return networks.unet(spec, channels=tuple(args.unet_channels))
    return models.build_model(spec)


def set_torch_defaults() -> None:
    """The bare loop runs with PyTorch's defaults: nondeterministic algorithms allowed, no autotuning."""
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = False


class Bare:
    """The bare loop: one random batch already on the device."""

    def __init__(self, case: dict, args, device: torch.device):
        self.device = device
        self.model = build_network(case, args).to(device)
        cuda = device.type == "cuda"
        fmt = torch.channels_last if cuda else torch.contiguous_format
        self.model.to(memory_format=fmt)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        shape = (case["batch"], case["channels"], case["size"], case["size"])
        self.x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
        if case["task"] == "classification":
            self.y = torch.randint(0, case["classes"], (case["batch"],), device=device)
        else:
            self.y = torch.randint(
                0, case["classes"], (case["batch"], case["size"], case["size"]), device=device
            )
        self.amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
        self.batch = case["batch"]

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            logits = self.model(self.x)
        loss = nn.functional.cross_entropy(logits.float(), self.y)
        loss.backward()
        self.optimizer.step()

    def images_per_second(self, steps: int, warmup: int) -> float:
        set_torch_defaults()
        self.model.train()
        for _ in range(warmup):
            self.step()
        benchlib.sync(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        benchlib.sync(self.device)
        return steps * self.batch / (time.perf_counter() - started)


class Snakescope:
    """The train rule's step: TrainBatches over a converted intermediate, train_epoch, the default loss."""

    def __init__(
        self,
        case: dict,
        args,
        device: torch.device,
        folder: Path,
        on_device: bool | None = None,
        deterministic: bool | None = None,
        prepared: tuple | None = None,
        legacy: bool = False,
        autotune: bool = False,
        stream: bool = False,
    ):
        self.device, self.case, self.deterministic, self.autotune = device, case, deterministic, autotune
        n = case["batch"] * args.batches_per_epoch
        if prepared is None:
            arrays_store, samples_tsv, ids, fingerprint = write_intermediate(
                folder, case["task"], n, case["channels"], case["size"], case["classes"]
            )
            settings = {
                "task": case["task"],
                "normalisation": "percentile",
                "seed": 0,
                "patch_size": [case["size"], case["size"]],
                "augmentations": [a for a in args.augmentations.split(",") if a],
            }
            plan = make_plan(settings, fingerprint)
            started = time.perf_counter()
            items = get_task(case["task"]).load_items(arrays_store, read_samples(samples_tsv), ids, plan)
            self.load_seconds = time.perf_counter() - started
            prepared = (items, plan, arrays_store, samples_tsv, ids)
        self.prepared = prepared
        items, plan, arrays_store, samples_tsv, ids = prepared
        if stream:  # the train rule's streamed data path: each image read from the store when batched
            read_label = get_task(case["task"]).label_reader(read_samples(samples_tsv), plan)
            items = StoredItems(arrays_store, ids, plan, read_label)
        seed_everything(0, device)  # as fit does
        self.model = build_network(case, args).to(device)
        if device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        # the train rule's epoch: Trainer.train_epoch with the task's default loss
        task = get_task(case["task"])
        self.trainer = Trainer(task, SimpleNamespace(max_batches_per_epoch=None), args.threads)
        self.trainer.model = self.trainer.train_model = self.model
        self.trainer.device = device
        self.trainer.loss_fn, self.trainer.amp_dtype = task.loss(task.losses[0]), autocast_dtype(device)
        self.generator = torch.Generator()
        repeats = patches_per_image(items, plan)
        started = time.perf_counter()
        if legacy:
            self.loader = legacy_loader(
                items * repeats, plan, case["batch"], device, args.threads, self.generator
            )
        else:
            self.loader = data.TrainBatches(
                items * repeats,
                plan,
                case["batch"],
                device,
                threads=args.threads,
                generator=self.generator,
                on_device=on_device,
            )
        self.setup_seconds = time.perf_counter() - started
        self.epoch = 0

    def run_epochs(self, steps: int) -> int:
        """Whole epochs until at least `steps` steps; returns the images trained on."""
        images, done = 0, 0
        while done < steps:
            self.epoch += 1
            torch.manual_seed(self.epoch)
            self.generator.manual_seed(self.epoch)
            _, n = self.trainer.train_epoch(self.loader, self.optimizer)
            images += n
            done += len(self.loader)
        return images

    def images_per_second(self, steps: int, warmup: int) -> float:
        seed_everything(0, self.device)  # the product's policy: deterministic on the CPU only
        if self.deterministic is True:
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif self.deterministic is False:
            set_torch_defaults()
        if self.autotune:
            torch.backends.cudnn.benchmark = True
        self.run_epochs(warmup)
        benchlib.sync(self.device)
        started = time.perf_counter()
        images = self.run_epochs(steps)
        benchlib.sync(self.device)
        return images / (time.perf_counter() - started)


def legacy_loader(items, plan, batch_size, device, threads, generator):
    """The data path before issue 7: every augmentation per image with MONAI in DataLoader workers."""
    from snakescope.engine.transforms import build_train_transforms

    transform = build_train_transforms(plan, plan["task"] != "classification")
    num_workers = max(0, threads - 2)
    loader = torch.utils.data.DataLoader(
        data.ItemDataset(items, transform),
        batch_size=min(batch_size, len(items)),
        shuffle=True,
        drop_last=len(items) > batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=generator,
        persistent_workers=num_workers > 0,
    )
    loader.mode = f"MONAI per image, {num_workers} workers"
    return loader


def report(row: dict) -> dict:
    print(
        f"  {row['case']:<22} {row['variant']:<48} {row['images_per_s']:9.1f} images/s  ratio {row['ratio']:.3f}",
        flush=True,
    )
    return row


def run_case(name: str, args, device: torch.device, folder: Path) -> tuple[list[dict], dict]:
    """Bare loop and snakescope, alternated `rounds` times; returns the rows and what the extras need."""
    case = case_settings(args, name)
    label = f"{name} {case['size']}x{case['size']} b{case['batch']}"

    base = benchlib.reset_peak(device)
    bare = Bare(case, args, device)
    bare_rates = [bare.images_per_second(args.steps, args.warmup)]
    bare_peak = benchlib.peak_gib(device, base)
    n_parameters = sum(p.numel() for p in bare.model.parameters())

    base = benchlib.reset_peak(device)
    snake = Snakescope(case, args, device, folder)
    snake_rates = [snake.images_per_second(args.steps, args.warmup)]
    snake_peak = benchlib.peak_gib(device, base)
    for _ in range(args.rounds - 1):
        bare_rates.append(bare.images_per_second(args.steps, 2))
        snake_rates.append(snake.images_per_second(args.steps, 2))
    bare_ips, snake_ips = max(bare_rates), max(snake_rates)
    common = {"case": label, "parameters_M": n_parameters / 1e6}
    rows = [
        report(
            {
                **common,
                "variant": "bare",
                "images_per_s": bare_ips,
                "runs": bare_rates,
                "peak_gib": bare_peak,
                "ratio": 1.0,
            }
        ),
        report(
            {
                **common,
                "variant": "snakescope",
                "images_per_s": snake_ips,
                "runs": snake_rates,
                "peak_gib": snake_peak,
                "ratio": snake_ips / bare_ips,
                "data_mode": snake.loader.mode,
                "data_on_gpu": getattr(snake.loader, "storage", torch.device("cpu")).type == "cuda",
                "load_seconds": snake.load_seconds,
                "setup_seconds": snake.setup_seconds,
            }
        ),
    ]
    context = {
        "case": case,
        "common": common,
        "bare_ips": bare_ips,
        "prepared": snake.prepared,
        "folder": folder,
    }
    del snake, bare
    benchlib.free_cuda(device)
    set_torch_defaults()
    return rows, context


EXTRAS = [
    ("snakescope, deterministic algorithms forced on", {"deterministic": True}),
    ("snakescope, cuDNN autotuning", {"autotune": True}),
    ("snakescope, data in pinned host memory", {"on_device": False}),
    ("before: MONAI per image in DataLoader workers", {"legacy": True}),
    ("snakescope, streamed from the store (data_path: stream)", {"stream": True}),
]


def run_extras(context: dict, args, device: torch.device) -> list[dict]:
    """Rows that attribute a gap: the same step with one thing changed."""
    rows = []
    # on the CPU only the streamed row applies: the others attribute GPU effects (cuDNN, pinned copies)
    extras = EXTRAS if device.type == "cuda" else [(v, o) for v, o in EXTRAS if o.get("stream")]
    for variant, options in extras:
        row = {**context["common"], "variant": variant}
        try:
            base = benchlib.reset_peak(device)
            extra = Snakescope(
                context["case"], args, device, context["folder"], prepared=context["prepared"], **options
            )
            ips = extra.images_per_second(args.steps, args.warmup)
            row.update(
                images_per_s=ips,
                peak_gib=benchlib.peak_gib(device, base),
                ratio=ips / context["bare_ips"],
                data_mode=extra.loader.mode,
            )
            rows.append(report(row))
            del extra
        except Exception as error:  # an attribution row must not cost the main figures
            row.update(
                images_per_s=float("nan"), ratio=float("nan"), error=f"{type(error).__name__}: {error}"
            )
            print(f"  {row['case']} {variant}: FAILED {row['error']}", flush=True)
            rows.append(row)
        benchlib.free_cuda(device)
        set_torch_defaults()
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as seed_everything, before cuBLAS starts
    device = benchlib.pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, args.threads))
    env = benchlib.environment(device)
    print(
        f"# training throughput on {env['gpu'] or 'CPU'} (torch {env['torch']}, monai {env['monai']}), "
        f"threads {args.threads}, augmentations {args.augmentations}",
        flush=True,
    )
    rows, contexts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [c for c in args.cases.split(",") if c]:
            folder = Path(tmp) / name
            folder.mkdir()
            case_rows, context = run_case(name, args, device, folder)
            rows += case_rows
            contexts.append(context)
        if not args.no_extras:
            for context in contexts:
                rows += run_extras(context, args, device)
    benchlib.print_table(rows, ["case", "variant", "images_per_s", "ratio", "peak_gib", "parameters_M"])
    for row in rows:
        if row["variant"] == "snakescope":
            verdict = "meets" if row["ratio"] >= 0.90 else "MISSES"
            print(
                f"{row['case']}: snakescope/bare = {row['ratio']:.3f} ({verdict} the 0.90 target); "
                f"data path: {row['data_mode']}, on GPU: {row['data_on_gpu']}"
            )
    result = {"environment": env, "arguments": vars(args), "rows": rows}
    benchlib.write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
