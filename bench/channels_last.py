"""Training-step time in PyTorch's default (contiguous) memory layout against channels-last, on this machine.

`train` uses channels-last on every device; this is the measurement behind that default. Each
model (timm, random weights: the layout, not the weights, sets the speed) runs forward, backward
and an AdamW step on random pixels in both layouts, alternating, in one process; each side keeps
its best step time over the rounds (a busy machine only ever slows one down).

Usage:
    python bench/channels_last.py                                   # efficientnet_lite0 at 96 and 64 px
    python bench/channels_last.py --models resnet18,efficientnet_b0 --size 128 --batch 32
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
import torch.nn.functional as F


def step_time(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              channels_last: bool) -> float:  # fmt: skip
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    x = x.contiguous(memory_format=layout)
    started = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0")
    parser.add_argument("--sizes", default="96,64", help="input sides, comma-separated")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, num_classes=10).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            x, y = torch.randn(args.batch, 3, size, size), torch.randint(0, 10, (args.batch,))
            best = {False: float("inf"), True: float("inf")}
            for _ in range(args.rounds):
                for channels_last in (False, True):
                    step_time(model, optimizer, x, y, channels_last)  # warm-up after the layout change
                    tries = (step_time(model, optimizer, x, y, channels_last) for _ in range(3))
                    best[channels_last] = min(best[channels_last], *tries)
            print(f"{name} {size} px batch {args.batch}: contiguous {best[False]:.3f} s/step, channels-last "
                  f"{best[True]:.3f} s/step: {best[False] / best[True]:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
