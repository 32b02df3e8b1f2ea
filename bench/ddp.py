"""Data-parallel training: the cost of DistributedDataParallel with one process, and what several would cost.

    python bench/ddp.py overhead [--device auto] [--size 512] [--batch 16] [--steps 20]
    python bench/ddp.py scaling

`overhead` times training steps of the registry's U-Net (Adam, the segmentation loss, bf16 autocast on a
GPU) as `Trainer.step_loss` runs them, once on the bare network and once wrapped in
DistributedDataParallel in a process group of one (NCCL on a GPU, gloo on the CPU), alternating the two
in rounds so that drift of the machine hits both; it prints images per second and the ratio. DDP with one
process adds its gradient hooks and bucketing, and an all-reduce over one process; issue 17's target is at
most 3 % on a GPU (U-Net 512², batch 16).

`scaling` argues, without measuring, how training would scale over several GPUs: per model of the zoo,
the gradient bytes a ring all-reduce moves per step against the compute of one step, from the model's
parameter count and its forward/backward FLOPs (torch.utils.flop_counter on one sample), on H200-class
hardware (bf16 at a sustained 40 % of 790 TFLOP/s; NVLink 4 at 450 GB/s per direction inside a node,
400 Gb/s InfiniBand between nodes). DDP overlaps the all-reduce of one bucket with the backward of the
next, so a step costs about max(compute, communication) rather than their sum.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import torch  # noqa: E402

from snakescope.engine.models import ModelSpec, build_model  # noqa: E402
from snakescope.engine.runtime import autocast_dtype  # noqa: E402
from snakescope.tasks import get_task  # noqa: E402

SUSTAINED_BF16_FLOPS = 0.4 * 790e12
NVLINK_BYTES_PER_SECOND = 450e9
INFINIBAND_BYTES_PER_SECOND = 400e9 / 8


def overhead(args) -> None:
    import torch.distributed as dist

    device = benchlib.pick_device(args.device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    task = get_task("segmentation")
    torch.manual_seed(0)
    network = build_model(ModelSpec("unet", "segmentation", 1, 2, 2, 0.0)).to(device)
    if device.type == "cuda":
        network.to(memory_format=torch.channels_last)
    wrapped = torch.nn.parallel.DistributedDataParallel(
        network, device_ids=[device.index or 0] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    loss_fn, amp = task.loss("dice_cross_entropy"), autocast_dtype(device)
    image = torch.randn(args.batch, 1, args.size, args.size, device=device)
    if device.type == "cuda":
        image = image.contiguous(memory_format=torch.channels_last)
    label = torch.randint(0, 2, (args.batch, 1, args.size, args.size), device=device)

    def steps(model, n: int) -> float:
        benchlib.sync(device)
        started = time.perf_counter()
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(image)
            loss_fn(logits.float(), label).backward()
            optimizer.step()
        benchlib.sync(device)
        return n * args.batch / (time.perf_counter() - started)

    steps(network, 3)
    steps(wrapped, 3)  # warm-up: cuDNN, allocator, DDP's buckets
    bare, ddp = [], []
    for _ in range(args.rounds):
        bare.append(steps(network, args.steps))
        ddp.append(steps(wrapped, args.steps))
    dist.destroy_process_group()
    b, d = benchlib.median(bare), benchlib.median(ddp)
    print(f"{benchlib.environment(device)}: U-Net {args.size}x{args.size}, batch {args.batch}, "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"bare network      {b:8.1f} images/s")
    print(f"DDP, 1 process    {d:8.1f} images/s")
    print(f"DDP / bare        {d / b:8.3f}  (overhead {100 * (1 - d / b):.1f} %)")


def scaling(args) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    cases = [("unet_small", "segmentation", 512), ("unet", "segmentation", 512), ("unet_large", "segmentation", 512),
             ("segresnet", "segmentation", 512), ("mobilenet_v2", "classification", 224),
             ("resnet50", "classification", 224), ("resnext50_32x4d", "classification", 224)]
    print("per model: gradient bytes per step (fp32), compute per step for 16 samples per GPU, and the")
    print("all-reduce time against it; ring all-reduce moves 2 (W-1)/W of the gradient per GPU\n")
    print(f"{'model':<16} {'params':>8} {'grad MB':>8} {'GFLOP/img':>10} {'compute ms':>11} "
          f"{'NVLink ms':>10} {'IB ms':>7} {'IB/compute':>11}")
    for name, task, size in cases:
        model = build_model(ModelSpec(name, task, 3, 2, 2, 0.3, image_size=(size, size)))
        params = sum(p.numel() for p in model.parameters())
        x = torch.randn(1, 3, size, size)
        with FlopCounterMode(display=False) as counter:
            out = model(x)
            out.float().sum().backward()
        flops = counter.get_total_flops()
        compute = 16 * flops / SUSTAINED_BF16_FLOPS
        grad_bytes = 4 * params
        ring = 2 * grad_bytes  # (W-1)/W -> 1 for many GPUs
        nvlink, ib = ring / NVLINK_BYTES_PER_SECOND, ring / INFINIBAND_BYTES_PER_SECOND
        print(f"{name:<16} {params / 1e6:7.1f}M {grad_bytes / 2**20:8.1f} {flops / 1e9:10.1f} {1e3 * compute:11.2f} "
              f"{1e3 * nvlink:10.2f} {1e3 * ib:7.2f} {ib / compute:11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--device", default="auto")
    o.add_argument("--size", type=int, default=512)
    o.add_argument("--batch", type=int, default=16)
    o.add_argument("--steps", type=int, default=10)
    o.add_argument("--rounds", type=int, default=5)
    sub.add_parser("scaling")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    overhead(args) if args.command == "overhead" else scaling(args)


if __name__ == "__main__":
    main()
