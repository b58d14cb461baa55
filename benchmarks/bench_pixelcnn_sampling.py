"""Two-stack PixelCNN sampling: the row-by-row sampler (``PixelCNN.sample``: the vertical stack once a row, the
horizontal stack on one row a pixel) against the generic one (a full network pass a pixel,
``AutoregressiveBernoulli.sample``), on the leaderboard's architecture (64 channels, 5 blocks, 7x7) at 28 x 28.
Both draw from the same conditionals (tests/models/test_autoregressive.py); this prints their times and the ratio,
measured in one process.

Run: ``python benchmarks/bench_pixelcnn_sampling.py [--images 4 --rounds 3 --device cpu]``.

History
-------

`python benchmarks/bench_pixelcnn_sampling.py --images 4 --rounds 3` (one thread; reported with the autoregressive
steps of 2026-12-02): sampling the two-stack `pixelcnn` row by row took 6.68 s against 208.98 s for a full network
pass a pixel.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import pprogen
from common import record, table, timed


def main(args) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = pprogen.create_model("pixelcnn", x_shape=(1, 28, 28), hidden_channels=64, num_blocks=5,
                                 kernel_size=7).to(device).eval()
    generic = lambda: model.distribution().sample((args.images,))  # noqa: E731
    rowwise = lambda: model.sample(args.images)  # noqa: E731
    times = {"generic": [], "row by row": []}
    for _ in range(args.rounds):  # alternating, so that a noisy neighbour hits both
        times["generic"].append(timed(generic, device)[0])
        times["row by row"].append(timed(rowwise, device)[0])
    base = statistics.median(times["generic"])
    title = (f"pixelcnn 64 channels, 5 blocks, 7x7, 28 x 28, {args.images} images on {device}, threads "
             f"{torch.get_num_threads()}, median of {args.rounds} rounds")
    print(title)
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:12s} {median:9.2f} s  {median / base:6.3f} of generic")
        rows.append([name, f"{median:.2f}", f"{median / base:.3f}"])
    record(__file__, [table(title, ["sampler", "seconds", "of generic"], rows)], args=args, device=device)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    main(parser.parse_args())
