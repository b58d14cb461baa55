"""AIS on a trained 784-400-400-50 VAE: pprogen's ``ais`` against hand-written vectorized PyTorch AIS.

Both run the same algorithm on the same images, in one process: C chains per image drawn from the guide,
the geometric path q(z | x)^(1 - b) p(x, z)^b along the sigmoid schedule, one HMC transition (L leapfrog
steps) per intermediate distribution, one step size per image shared by its chains and adapted towards
0.65 acceptance. The hand-written version knows the model: it encodes once, then calls the decoder and
the closed-form Normal densities on a ``(C, B, 50)`` tensor. pprogen's runs the Pyro program (model and
guide traced at every leapfrog step, the guide's distributions cached). The issue's target: pprogen at
most 1.15x the hand-written time.

Run: ``python benchmarks/bench_ais.py [--run RUN] [--images 100 --steps 100 --chains 16 --rounds 3]
[--device cuda]``. Without ``--run`` a VAE is trained for ``--train-steps`` steps first.

History
-------

100 images, T = 100, C = 16, L = 10, one thread (no date recorded): `ais` 113.1 s against the hand-written vectorized
AIS's 119.9 s (0.94x; 1.14x at T = 20 on 50 images).
"""

from __future__ import annotations

import argparse
import math
import statistics

import pyro
import torch
import torch.nn.functional as F

import pprogen
from common import binarized_mnist_or_random, record, table, timed
from pprogen.inference import ais, annealing_schedule, fit
from pprogen.inference.ais import ADAPT_DOWN, ADAPT_UP, DIVERGENCE

LOG_2PI = math.log(2 * math.pi)


def hand_ais(model, guide, x, num_steps, num_chains, leapfrog_steps, step_size=0.05, target=0.65):
    """Vectorized AIS for this VAE, written by hand: returns log p(x) per image."""
    with torch.no_grad():
        loc, scale = guide.encode(x)
    betas = annealing_schedule("sigmoid", num_steps).tolist()

    def densities(z):
        z = z.detach().requires_grad_(True)
        log_q = (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)
        logits = model.decoder(z)
        log_p = (-F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
                 + (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1))
        grad_q = (-(z - loc) / scale.pow(2)).detach()  # closed form
        (grad_p,) = torch.autograd.grad(log_p.sum(), z)
        return log_q.detach(), log_p.detach(), grad_q, grad_p

    z = loc + scale * torch.randn((num_chains,) + loc.shape, device=x.device)
    log_q, log_p, grad_q, grad_p = densities(z)
    eps = torch.full((1, x.shape[0], 1), float(step_size), device=x.device)
    log_w = torch.zeros(log_p.shape, dtype=torch.float64, device=x.device)
    for t in range(1, num_steps + 1):
        log_w += (betas[t] - betas[t - 1]) * (log_p.double() - log_q.double())
        if t == num_steps:
            break
        b = betas[t]
        momentum = torch.randn_like(z)
        energy = -((1 - b) * log_q + b * log_p) + 0.5 * momentum.pow(2).sum(-1)
        p = momentum + 0.5 * eps * ((1 - b) * grad_q + b * grad_p)
        position = z
        for step in range(leapfrog_steps):
            position = position + eps * p
            new = densities(position)
            g = (1 - b) * new[2] + b * new[3]
            p = p + (0.5 if step == leapfrog_steps - 1 else 1.0) * eps * g
        delta = -((1 - b) * new[0] + b * new[1]) + 0.5 * p.pow(2).sum(-1) - energy
        divergent = ~torch.isfinite(delta) | (delta > DIVERGENCE)
        prob = torch.where(divergent, torch.zeros_like(delta), torch.exp(torch.clamp(-delta, max=0.0)))
        accept = torch.rand_like(prob) < prob
        z = torch.where(accept[..., None], position, z)
        log_q, log_p = torch.where(accept, new[0], log_q), torch.where(accept, new[1], log_p)
        grad_q = torch.where(accept[..., None], new[2], grad_q)
        grad_p = torch.where(accept[..., None], new[3], grad_p)
        rate = prob.mean(0)[None, :, None]
        eps = eps * torch.where(rate > target, ADAPT_UP, ADAPT_DOWN)
    return torch.logsumexp(log_w, 0) - math.log(num_chains)


def main(args):
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.run:
        from pprogen.engine import load_run as _load_run

        _, _, dataset, model, guide, _ = _load_run(args.run, device)
        x, name = dataset.split("valid")[: args.images].to(device), f"run {args.run}"
    else:
        train, valid, name = binarized_mnist_or_random()
        model = pprogen.create_model("vae")
        guide = model.default_guide()
        fit(model, guide, train[: args.train_steps * 128], epochs=1, batch_size=128, progress=False)
        model.to(device).eval(), guide.to(device).eval()
        x = valid[: args.images].to(device)
        name += f", trained {args.train_steps} steps"
    settings = dict(num_steps=args.steps, num_chains=args.chains, leapfrog_steps=args.leapfrog)
    contenders = {
        "hand": lambda: hand_ais(model, guide, x, args.steps, args.chains, args.leapfrog),
        "pprogen": lambda: ais(model, guide, x, **settings).log_prob,
    }
    timings = {k: [] for k in contenders}
    values = {}
    with pyro.validation_enabled(False):
        for _ in range(args.rounds):
            for label, fn in contenders.items():
                seconds, values[label] = timed(fn, device)
                timings[label].append(seconds)
    base = statistics.median(timings["hand"])
    title = (f"VAE 784-400-400-50 ({name}); {x.shape[0]} images, T = {args.steps}, C = {args.chains}, "
             f"L = {args.leapfrog}; {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
             f"{args.rounds} rounds")
    print(title)
    print(f"{'contender':10s} {'median s':>9s} {'ratio to hand':>14s}   mean log p(x)")
    rows = []
    for label, ts in timings.items():
        med = statistics.median(ts)
        print(f"{label:10s} {med:9.3f} {med / base:14.3f}   {values[label].double().mean():.3f}")
        rows.append([label, f"{med:.3f}", f"{med / base:.3f}", f"{values[label].double().mean():.3f}"])
    record(__file__, [table(title, ["contender", "median s", "ratio to hand", "mean log p(x)"], rows)], args=args,
           device=device)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained `pprogen train vae` run folder (default: train one here)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--leapfrog", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    main(parser.parse_args())
