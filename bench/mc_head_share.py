"""What head-only MC dropout saves on SegResNet: the time of the whole network against that of the head
it samples (`sampling_split()`: its last decoder stage and final convolution), on a batch of
sliding-window patches.

SegResNet's dropout sits before its last decoder stage, so `engine.inference.sample_dropout` runs the
trunk once and the head once per sample: 20 samples cost about 1 + 20 x (the head's share) passes, where
MONAI's placement (dropout after the first convolution) made each sample a whole pass.

    .venv/bin/python bench/mc_head_share.py            # 16 patches of 128², two threads (ISBI's plan)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import torch  # noqa: E402

from snakescope.engine.models import ModelSpec, build_model  # noqa: E402


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=16)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_model(ModelSpec("segresnet", "segmentation", 1, 2, dropout=0.3)).eval()
    trunk, head = net.sampling_split()
    x = torch.randn(args.patches, 1, args.side, args.side)
    features = trunk(x)

    cpu = torch.device("cpu")
    whole = benchlib.median_seconds(lambda: net(x), cpu, args.repeats)
    head_only = benchlib.median_seconds(lambda: head(features), cpu, args.repeats)
    share = head_only / whole
    print(f"{args.patches} patches of {args.side}², {args.threads} threads: whole network {whole * 1000:.0f} ms, "
          f"head (last decoder stage + final convolution) {head_only * 1000:.0f} ms ({share:.0%})")
    print(f"{args.samples} MC samples: about {1 + args.samples * share:.1f} passes, "
          f"{args.samples} with the dropout after the first convolution")


if __name__ == "__main__":
    main()
