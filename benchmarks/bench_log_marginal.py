"""Importance-sampled log p(x) for a trained 784-400-400-50 VAE: K = 1000 samples on 100 images.

Contenders, on the same trained VAE and the same images, in one process:

- ``hand``: hand-written vectorized PyTorch (encode, draw (K, B, 50) latents, decode, log-mean-exp);
- ``pprogen``: ``pprogen.inference.log_marginal`` (per-datum estimates, stderr, ESS; ``khat=False``),
  and with Pareto k-hat through ArviZ (``khat=True``);
- ``pyro_importance``: ``pyro.infer.Importance(model, guide, num_samples=K).run(x_n)`` and its
  ``get_log_normalizer()``, one image at a time (Pyro's documented way to get one log p(x) per image).
  It is timed on ``--importance-images`` images and scaled to 100 (it is linear in the images).

Run: ``python benchmarks/bench_log_marginal.py [--train-steps 400 --rounds 3]``.

History
-------

A trained VAE, K = 1000, 100 images, three runs (no date recorded): `log_marginal` was 1.01 - 1.08x a hand-written
vectorized estimator (1.01 - 1.17x with Pareto k-hat), and 78 - 86x faster than `pyro.infer.Importance` called per
image.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import pyro
import torch
import torch.nn.functional as F

import pprogen
from common import binarized_mnist_or_random, record, table
from pprogen.inference import fit, log_marginal


@torch.no_grad()
def hand_log_marginal(model, guide, x, num_samples, max_elements=2_000_000):
    """What a user writes by hand for this VAE: one vectorized pass per chunk of particles."""
    loc, scale = guide.encode(x)
    chunk = max(1, min(num_samples, max_elements // x.shape[0]))
    parts = []
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        z = loc + scale * torch.randn((k,) + loc.shape, device=loc.device)
        logits = model.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        parts.append(log_px + log_pz - log_qz)
        done += k
    return torch.logsumexp(torch.cat(parts), 0) - math.log(num_samples)


def pyro_importance(model, guide, x, num_samples):
    out = []
    for row in x:
        posterior = pyro.infer.Importance(model, guide, num_samples=num_samples).run(row[None])
        out.append(posterior.get_log_normalizer())
    return torch.stack(out)


def main(args):
    torch.manual_seed(0)
    train, valid, name = binarized_mnist_or_random()
    model = pprogen.create_model("vae")
    guide = model.default_guide()
    steps_data = train[: args.train_steps * 128]
    fit(model, guide, steps_data, epochs=1, batch_size=128, progress=False)
    model.eval()
    x = valid[: args.images]
    k = args.num_samples
    timings = {"hand": [], "pprogen": [], "pprogen_khat": [], "pyro_importance": []}
    values = {}
    with pyro.validation_enabled(False):
        for _ in range(args.rounds):
            for label, fn in (
                ("hand", lambda: hand_log_marginal(model, guide, x, k)),
                ("pprogen", lambda: log_marginal(model, guide, x, num_samples=k, khat=False).log_prob),
                ("pprogen_khat", lambda: log_marginal(model, guide, x, num_samples=k, khat=True).log_prob),
            ):
                start = time.perf_counter()
                values[label] = fn()
                timings[label].append(time.perf_counter() - start)
        few = x[: args.importance_images]
        start = time.perf_counter()
        with torch.no_grad():
            values["pyro_importance"] = pyro_importance(model, guide, few, k)
        timings["pyro_importance"].append((time.perf_counter() - start) * len(x) / len(few))
    base = statistics.median(timings["hand"])
    title = (f"VAE 784-400-400-50 trained {args.train_steps} steps on {name}; K = {k}, {len(x)} images; "
             f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}")
    print(title)
    print(f"{'contender':16s} {'median s':>9s} {'ratio to hand':>14s}   mean log p(x)")
    rows = []
    for label, ts in timings.items():
        med = statistics.median(ts)
        note = f" (timed on {args.importance_images} images, scaled to {len(x)})" if label == "pyro_importance" else ""
        print(f"{label:16s} {med:9.3f} {med / base:14.2f}   {values[label].float().mean():.3f}{note}")
        rows.append([label + note, f"{med:.3f}", f"{med / base:.2f}", f"{values[label].float().mean():.3f}"])
    speedup = statistics.median(timings["pyro_importance"]) / statistics.median(timings["pprogen"])
    print(f"pprogen is {speedup:.0f}x faster than Importance per image")
    record(__file__, [table(title, ["contender", "median s", "ratio to hand", "mean log p(x)"], rows)],
           [f"pprogen is {speedup:.0f}x faster than Importance per image"], args=args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--importance-images", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    main(parser.parse_args())
