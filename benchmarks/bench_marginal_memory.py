"""Peak memory and speed of ``log_marginal``: a 784-200-200-50 VAE on binarized MNIST validation images.

Each figure comes from its own child process (peak resident memory is a per-process high-water mark): the
resident memory after the VAE and the images are loaded is subtracted from the process's peak, so the
figure is what the estimator itself took; next to it, the most bytes its tensors held at once
(:class:`pprogen.inference.memory.PeakBytes`), and the resident peak again with glibc told to hand large
freed blocks straight back (its default keeps freed chunk-sized blocks in the heap, which the resident
figure then counts). ``--max-memory`` is ``log_marginal``'s chunk budget in bytes.
Then, in one process, the time of ``log_marginal`` against a hand-written vectorized estimator that takes
5 images x 1000 particles at a time (median of ``--rounds``).

Run: ``python benchmarks/bench_marginal_memory.py [--images 1000 --ks 500,5000 --rounds 3]``.

History
-------

784-200-200-50 VAE, 1000 validation images, peak resident memory above the loaded model and data (no date recorded):
177 MiB at K = 500 and 181 MiB at K = 5000, where chunks sized by element counts took 472 and
4597 MiB.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import pprogen
from common import binarized_mnist_or_random, record, table
from pprogen.inference import log_marginal
from pprogen.inference.memory import PeakBytes


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def setup(images: int):
    torch.manual_seed(0)
    _, valid, name = binarized_mnist_or_random()
    model = pprogen.create_model("vae", x_dim=784, z_dim=50, hidden_dims=(200, 200))
    guide = model.default_guide()
    return model.eval(), guide.eval(), valid[:images], name


@torch.no_grad()
def hand(model, guide, x, num_samples, rows=5, particles=1000):
    out = []
    for start in range(0, x.shape[0], rows):
        xb = x[start : start + rows]
        loc, scale = guide.encode(xb)
        parts = []
        for done in range(0, num_samples, particles):
            k = min(particles, num_samples - done)
            z = loc + scale * torch.randn((k,) + loc.shape)
            logits = model.decoder(z)
            log_px = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
            log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_qz = (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
            parts.append(log_px + log_pz - log_qz)
        out.append(torch.logsumexp(torch.cat(parts), 0) - math.log(num_samples))
    return torch.cat(out)


def child(args) -> None:
    model, guide, x, _ = setup(args.images)
    before = rss_mib()
    budget = {"max_memory": args.max_memory} if "max_memory" in inspect.signature(log_marginal).parameters else {}
    with PeakBytes() as meter:
        log_marginal(model, guide, x, num_samples=args.child, khat=False, **budget)  # (older versions: no budget)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{peak - before:.0f} {meter.peak / 2**20:.0f}")


def main(args) -> None:
    _, _, _, name = setup(1)
    title = (f"VAE 784-200-200-50 (untrained: memory depends on shapes), {args.images} images of {name}, "
             f"max_memory {args.max_memory / 2**30:.2f} GiB, torch {torch.__version__}, "
             f"threads {torch.get_num_threads()}")
    print(title)
    memory = []
    for k in map(int, args.ks.split(",")):
        figures = []
        for env in ({}, {"MALLOC_MMAP_THRESHOLD_": "131072"}):
            out = subprocess.run([sys.executable, __file__, "--child", str(k), "--images", str(args.images),
                                  "--max-memory", str(args.max_memory)], capture_output=True, text=True, check=True,
                                 env={**os.environ, **env})
            figures.append(out.stdout.split())
        print(f"K = {k:5d}: tensors held at once {figures[0][1]} MiB; peak resident memory above the loaded model "
              f"and data {figures[0][0]} MiB ({figures[1][0]} MiB when glibc returns freed large blocks at once, "
              "MALLOC_MMAP_THRESHOLD_=131072)")
        memory.append([k, figures[0][1], figures[0][0], figures[1][0]])
    model, guide, x, _ = setup(args.speed_images)
    budget = {"max_memory": args.max_memory} if "max_memory" in inspect.signature(log_marginal).parameters else {}
    times = {"hand (5 images x 1000 particles)": [], "log_marginal": []}
    for _ in range(args.rounds):
        for label, fn in (("hand (5 images x 1000 particles)", lambda: hand(model, guide, x, 1000)),
                          ("log_marginal", lambda: log_marginal(model, guide, x, num_samples=1000, khat=False,
                                                                **budget))):
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    base = statistics.median(times["hand (5 images x 1000 particles)"])
    speed_title = f"K = 1000 on {args.speed_images} images, median of {args.rounds}"
    print(f"{speed_title}:")
    speed = []
    for label, ts in times.items():
        print(f"  {label:34s} {statistics.median(ts):7.3f} s  ratio {statistics.median(ts) / base:.2f}")
        speed.append([label, f"{statistics.median(ts):.3f}", f"{statistics.median(ts) / base:.2f}"])
    record(__file__, [table(title, ["K", "tensors held at once (MiB)", "peak resident above the loaded model and "
                                    "data (MiB)", "the same with MALLOC_MMAP_THRESHOLD_=131072 (MiB)"], memory),
                      table(speed_title, ["estimator", "median s", "ratio"], speed)], args=args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--ks", default="500,5000")
    parser.add_argument("--max-memory", type=int, default=2**30)
    parser.add_argument("--speed-images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    child(args) if args.child else main(args)
