"""What a head-only MC dropout would save on SegResNet: the time of the whole network against the time of
its last decoder stage and final convolution, on a batch of sliding-window patches.

SegResNet's one dropout layer follows its first convolution, so each of the 20 MC samples runs the whole
network. Were the dropout before the last decoder stage instead, the rest would run once and each sample
would cost only that stage: 20 samples would cost about 1 + 19 x (its share) passes.

    .venv/bin/python bench/mc_head_share.py            # 16 patches of 128², two threads (ISBI's plan)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import torch  # noqa: E402
from monai.networks.nets import SegResNet  # noqa: E402


def median_seconds(run, repeats: int) -> float:
    return benchlib.median(benchlib.time_calls(run, torch.device("cpu"), repeats))


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
    net = SegResNet(spatial_dims=2, in_channels=1, out_channels=2, init_filters=16, dropout_prob=0.3).eval()
    x = torch.randn(args.patches, 1, args.side, args.side)
    # the encoder and all decoder stages but the last, run once (as MONAI's SegResNet.decode runs them)
    skips = []
    h = net.convInit(x)
    for down in net.down_layers:
        h = down(h)
        skips.append(h)
    skips.reverse()
    h = skips[0]
    for i in range(len(net.up_layers) - 1):
        h = net.up_layers[i](net.up_samples[i](h) + skips[i + 1])
    last_up, last_layer, last_skip = net.up_samples[-1], net.up_layers[-1], skips[-1]

    whole = median_seconds(lambda: net(x), args.repeats)
    last_stage = median_seconds(lambda: net.conv_final(last_layer(last_up(h) + last_skip)), args.repeats)
    share = last_stage / whole
    print(f"{args.patches} patches of {args.side}², {args.threads} threads: whole network {whole * 1000:.0f} ms, "
          f"last decoder stage + final convolution {last_stage * 1000:.0f} ms ({share:.0%})")
    print(f"{args.samples} MC samples: {args.samples} passes today, about {1 + (args.samples - 1) * share:.1f} "
          "with the dropout before the last stage")


if __name__ == "__main__":
    main()
