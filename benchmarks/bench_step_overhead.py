"""Per-step overhead of pprogen's SVI step against hand-written PyTorch steps, in one process.

Two VAEs, each at batch 128 with fused Adam on every side and the loss read from the device once per step on
every side (pprogen reads the loss and the gradient norm together, its one synchronisation):

- ``tiny``: 64-16-4 (encoder 64-16-8, decoder 4-16-64), where the arithmetic is negligible and what is left is
  the framework's fixed cost per step;
- ``vae``: 784-400-400-50 on binarized MNIST (random binary images when ../shared/data lacks it).

Contenders:

- ``hand``: hand-written step with the analytic KL term (what a PyTorch user writes; the issue's baseline);
- ``hand_mc``: hand-written step computing exactly the arithmetic of pprogen's ``trace`` estimator (a sampled
  KL, log p(z) - log q(z), with torch's Normal and Bernoulli formulas), so ``pprogen_mc / hand_mc`` is the
  framework's overhead and nothing else;
- ``pprogen``: ``TrainStep`` as ``fit`` builds it (the default ``analytic`` estimator, whose KL term is the
  closed form as in ``hand``; data-plate scale; NaN guard), with the replayed fast path (the default);
- ``pprogen_mc``: the same with the ``trace`` estimator (sampled KL, the arithmetic of ``hand_mc``);
- ``general``: ``pprogen`` with ``fast_path=False`` (the Pyro program runs every step).

Same arithmetic, so the framework's overhead: ``pprogen / hand`` and ``pprogen_mc / hand_mc``.

Contenders take turns on the same batches (the order rotating), ``--block`` steps each (10): a contender's steps
run back to back, as in training, where nothing else runs between them (``--block 1`` alternates step by step,
which puts the caches another contender left behind into every step: that costs the Python-heavier step more).
The script prints each median step time, its ratio to ``hand`` and to ``hand_mc``, the median of the per-step
ratios (paired: same batch, same moment of the machine's load), and the overhead in microseconds over each. Run:
``python benchmarks/bench_step_overhead.py [--models tiny,vae --rounds 7 --steps 100 --block 10 --device cpu
--threads 1]``.

History
-------

2026-12-02, `python benchmarks/bench_step_overhead.py --block 10` (one thread, batch 128, fused Adam everywhere, the
loss read once a step; contenders take turns of 10 steps). `hand` is a hand-written step with the analytic KL,
`hand_mc` one computing exactly the `trace` estimator's arithmetic; `pprogen` is `fit`'s replayed step with its
default estimator, `pprogen_mc` with `trace`; `general` runs the Pyro program every step. Two runs, median step time,
ratios of medians (and of paired per-step ratios):

| model | hand | pprogen / hand (paired) | pprogen_mc / hand_mc (paired) | general / hand |
| --- | --- | --- | --- | --- |
| tiny VAE 64-16-4 | 1012, 993 us | **1.196, 1.148** (1.158, 1.140) | 1.118, 1.114 (1.113, 1.122) | 1.86, 1.79 |
| VAE 784-400-400-50 | 15930, 14854 us | **1.022, 1.012** (1.017, 1.019) | 1.016, 1.061 (1.024, 1.045) | 1.09, 1.09 |

The targets (at most 1.25x and 1.05x the hand-written step) held in both runs.
"""

from __future__ import annotations

import argparse
import math
import statistics

import pyro
import torch
import torch.nn.functional as F
from torch import nn

import pprogen
from bench_svi_step import mlp
from common import binarized_mnist_or_random, record, table, timed
from pprogen.inference.train import TrainStep, build_loss, collect_parameters, make_optimizer

MODELS = {"tiny": (64, (16,), 4), "vae": (784, (400, 400), 50)}
BATCH, LR = 128, 1e-3
HALF_LOG_2PI = math.log(math.sqrt(2 * math.pi))


class HandVAE(nn.Module):
    """Encoder and decoder as pprogen's ``vae`` builds them (MLP, ReLU, softplus scale head)."""

    def __init__(self, x_dim, hidden, z_dim, analytic_kl: bool, scale: float):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = mlp([x_dim, *hidden[::-1], 2 * z_dim])
        self.decoder = mlp([z_dim, *hidden, x_dim])
        self.analytic_kl = analytic_kl
        self.scale = scale  # N / B, as pprogen scales the data plate

    def forward(self, x):
        out = self.encoder(x)
        loc, raw = out[..., :self.z_dim], out[..., self.z_dim:]
        scale = F.softplus(raw) + 1e-5
        z = loc + torch.randn_like(loc) * scale
        log_lik = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1).sum()
        if self.analytic_kl:
            kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1) - scale.log()).sum()
            return -(log_lik - kl) * self.scale
        # torch's Normal.log_prob, term by term, for q(z | x) and p(z) = N(0, I)
        log_q = (-((z - loc) ** 2) / (2 * scale ** 2) - scale.log() - HALF_LOG_2PI).sum(-1).sum()
        log_p = (-(z ** 2) / 2 - HALF_LOG_2PI).sum(-1).sum()
        return -(log_lik * self.scale + (log_p * self.scale - log_q * self.scale))


def make_steps(name: str, device: torch.device, num_data: int):
    x_dim, hidden, z_dim = MODELS[name]
    scale = num_data / BATCH
    steps = {}
    for label, analytic in (("hand", True), ("hand_mc", False)):
        net = HandVAE(x_dim, hidden, z_dim, analytic, scale).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=LR, fused=True)

        def hand_step(x, net=net, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = net(x)
            loss.backward()
            opt.step()
            return loss.item()

        steps[label] = hand_step
    for label, elbo, fast in (("pprogen", "analytic", True), ("pprogen_mc", "trace", True),
                              ("general", "analytic", False)):
        model = pprogen.create_model("vae", x_dim=x_dim, z_dim=z_dim, hidden_dims=hidden).to(device)
        guide = model.default_guide().to(device)
        loss_module = build_loss(model, guide, elbo)
        params = collect_parameters(loss_module, torch.zeros(BATCH, x_dim, device=device))
        step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=LR), fast_path=fast)

        def pprogen_step(x, step=step):
            return step(x, scale)[0]

        pprogen_step.replay = step.replay
        steps[label] = pprogen_step
    return steps


def run_model(name: str, args, device: torch.device, data: torch.Tensor) -> tuple[dict, list[str]]:
    torch.manual_seed(0)
    x_dim = MODELS[name][0]
    rows = data if x_dim == data.shape[1] else (torch.rand(10000, x_dim, device=device) < 0.3).float()
    steps = make_steps(name, device, rows.shape[0])
    timings = {label: [] for label in steps}
    labels = list(steps)
    with pyro.validation_enabled(False):
        for label in labels:  # settle each: lazy state, and the replay's recording (after 50 program steps)
            for _ in range(args.warmup):
                steps[label](rows[torch.randint(0, rows.shape[0], (BATCH,), device=device)])
        for round_ in range(args.rounds):
            for i in range(0, args.steps, args.block):  # contenders take turns, a block of steps each (the order
                # rotating), on the same batches, so that the machine's noise hits all alike; within a block a
                # contender's steps run back to back, as they do in training
                xs = [rows[torch.randint(0, rows.shape[0], (BATCH,), device=device)] for _ in range(args.block)]
                shift = (round_ + i // args.block) % len(labels)
                for label in labels[shift:] + labels[:shift]:
                    for x in xs:
                        timings[label].append(timed(lambda: steps[label](x), device)[0])
    hand = statistics.median(timings["hand"])
    hand_mc = statistics.median(timings["hand_mc"])
    sizes = f"{x_dim}-{'-'.join(map(str, MODELS[name][1]))}-{MODELS[name][2]}"
    title = (f"{name}: VAE {sizes}, batch {BATCH}, device {device}, threads {torch.get_num_threads()}, "
             f"{args.rounds} rounds x {args.steps} steps, in turns of {args.block} step(s) per contender")
    print(f"\n{title}")
    columns = ["contender", "median us", "/ hand", "/ hand_mc", "paired / hand", "paired / hand_mc", "over hand us",
               "over hand_mc us"]
    print(f"{'contender':10s} {'median us':>10s} {'/ hand':>8s} {'/ hand_mc':>10s} {'paired / hand':>14s} "
          f"{'paired / hand_mc':>17s} {'over hand us':>13s} {'over hand_mc us':>16s}")
    rows = []
    for label, values in timings.items():
        med = statistics.median(values)
        paired = statistics.median(v / h for v, h in zip(values, timings["hand"]))  # same batch, same moment
        paired_mc = statistics.median(v / h for v, h in zip(values, timings["hand_mc"]))
        print(f"{label:10s} {med * 1e6:10.0f} {med / hand:8.3f} {med / hand_mc:10.3f} {paired:14.3f} {paired_mc:17.3f} "
              f"{(med - hand) * 1e6:13.0f} {(med - hand_mc) * 1e6:16.0f}")
        rows.append([label, f"{med * 1e6:.0f}", f"{med / hand:.3f}", f"{med / hand_mc:.3f}", f"{paired:.3f}",
                     f"{paired_mc:.3f}", f"{(med - hand) * 1e6:.0f}", f"{(med - hand_mc) * 1e6:.0f}"])
    notes = []
    for label in ("pprogen", "pprogen_mc"):
        line = f"{label}'s steps: {steps[label].replay.summary()}"
        print(line)
        notes.append(f"{name}, {line}")
    return table(title, columns, rows), notes


def main(args):
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train, _, data_name = binarized_mnist_or_random()
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, data for 'vae': {data_name}")
    tables, notes = [], [f"data for 'vae': {data_name}"]
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        result, said = run_model(name, args, device, train.to(device))
        tables.append(result)
        notes += said
    record(__file__, tables, notes, args=args, device=device)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,vae")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--block", type=int, default=10,
                        help="steps a contender takes back to back before the next one's turn (1: step by step)")
    main(parser.parse_args())
