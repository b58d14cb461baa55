"""Training-step time of every fully observed autoregressive model against a hand-written PyTorch step, in one run.

Binarized MNIST rows (random binary images when ../shared/data lacks them), batch 100, D = 784, fused Adam on
every side, one thread by default. For each model:

- ``pprogen``: ``TrainStep`` as ``fit`` builds it (the Pyro program, replayed once settled; NaN guard);
- ``hand``: the same network and loss written in plain PyTorch (``F.binary_cross_entropy_with_logits``);

and for NADE also ``old``: the (B, H, D) cumulative-sum formulation pprogen's ``nade`` used before the blocked
sweep (``pprogen.models.autoregressive.nade_logits``), written by hand, the issue's baseline. Contenders take
turns, a few steps each; the script prints each median and the ratios. EoNADE's step also draws and applies a
random ordering; PixelCNN (two-stack and single-stack) has no hand-written twin here.

Run: ``python benchmarks/bench_ar_step.py [--models fvsbn,nade,eonade,made,rnn_ar --rounds 3 --steps 3]``.

History
-------

2026-12-02, `python benchmarks/bench_ar_step.py` (batch 100, D = 784, one thread, fused Adam on both sides, median of
9 steps): pprogen's step against the same network written in plain PyTorch.

| model | pprogen | hand-written | ratio |
| --- | --- | --- | --- |
| `fvsbn` | 6.0 ms | 5.6 ms | 1.08 |
| `nade` (500 hidden units) | 0.277 s | 1.971 s (a (B, H, D) cumulative sum) | **0.14** |
| `eonade` (500 hidden units, a random ordering each step) | 0.408 s | 2.049 s (the cumulative sum, one ordering) | 0.20 |
| `made` (one hidden layer of 500) | 10.6 ms | 10.1 ms | 1.05 |
| `rnn_ar` (LSTM 256) | 2.98 s | 3.03 s | 0.98 |

NADE's conditionals come from one custom operator (`nade_logits`) that sweeps the dimensions in blocks of 32 with
one rank-one update per dimension and recomputes each block's hidden units in the backward pass; its logits equal the
cumulative sum's to 1e-12 in float64 and its gradients pass `gradcheck`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import pyro
import torch
import torch.nn.functional as F
from torch import nn

import pprogen
from common import binarized_mnist_or_random, record, table, timed
from pprogen.inference.train import TrainStep, build_loss, collect_parameters, make_optimizer

BATCH, LR = 100, 1e-3
CONFIGS = {
    "fvsbn": {},
    "nade": {"hidden_dim": 500},
    "eonade": {"hidden_dim": 500, "num_orders": 8},
    "made": {"hidden_dims": (500,)},
    "rnn_ar": {"hidden_dim": 256},
}


def cumsum_nade_logits(x, w, c, v, b):
    contributions = x.unsqueeze(-2) * w  # (B, H, D)
    hidden = torch.sigmoid(c.unsqueeze(-1) + contributions.cumsum(-1) - contributions)
    return b + torch.einsum("bhd,dh->bd", hidden, v)


class HandNADE(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.w = nn.Parameter(torch.randn(h, d) / math.sqrt(d))
        self.c = nn.Parameter(torch.zeros(h))
        self.v = nn.Parameter(torch.randn(d, h) / math.sqrt(h))
        self.b = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return cumsum_nade_logits(x, self.w, self.c, self.v, self.b)


class HandFVSBN(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.linear = nn.Linear(d, d)
        self.register_buffer("mask", torch.ones(d, d).tril(-1))

    def forward(self, x):
        return F.linear(x, self.linear.weight * self.mask, self.linear.bias)


class HandMADE(nn.Module):
    """One hidden layer, masks from the natural ordering's degrees."""

    def __init__(self, d, h):
        super().__init__()
        self.hidden, self.out = nn.Linear(d, h), nn.Linear(h, d)
        degrees = torch.randint(0, d - 1, (h,))
        self.register_buffer("m1", (torch.arange(d)[None, :] <= degrees[:, None]).float())
        self.register_buffer("m2", (degrees[None, :] < torch.arange(d)[:, None]).float())

    def forward(self, x):
        h = F.relu(F.linear(x, self.hidden.weight * self.m1, self.hidden.bias))
        return F.linear(h, self.out.weight * self.m2, self.out.bias)


class HandRNN(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.lstm = nn.LSTM(1, h, batch_first=True)
        self.head = nn.Linear(h, 1)

    def forward(self, x):
        out, _ = self.lstm(F.pad(x[:, :-1], (1, 0)).unsqueeze(-1))
        return self.head(out).squeeze(-1)


def hand_network(name, d):
    config = CONFIGS[name]
    if name == "fvsbn":
        return HandFVSBN(d)
    if name in ("nade", "eonade"):
        return HandNADE(d, config["hidden_dim"])
    if name == "made":
        return HandMADE(d, config["hidden_dims"][0])
    return HandRNN(config["hidden_dim"])


def hand_step(net, num_data):
    opt = torch.optim.Adam(net.parameters(), lr=LR, fused=True)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(net(x), x, reduction="sum") * (num_data / x.shape[0])
        loss.backward()
        opt.step()
        return loss.item()

    return step


def pprogen_step(name, d, num_data):
    model = pprogen.create_model(name, x_dim=d, **CONFIGS[name])
    loss_module = build_loss(model, model.default_guide())
    probe = torch.zeros(BATCH, d)
    params = collect_parameters(loss_module, probe)
    step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=LR))
    return lambda x: step(x, num_data / x.shape[0])[0], step


def main(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, _, data_name = binarized_mnist_or_random()
    d, n = train.shape[1], train.shape[0]
    title = (f"torch {torch.__version__}, data {data_name}, batch {BATCH}, D {d}, threads {torch.get_num_threads()}, "
             f"{args.rounds} rounds x {args.steps} steps per contender")
    print(title)
    print(f"{'model':8s} {'contender':9s} {'median s':>9s} {'/ hand':>7s}  notes")
    rows, notes = [], []
    for name in args.models.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(CONFIGS)}")
        ours, step = pprogen_step(name, d, n)
        contenders = {"pprogen": ours, "hand": hand_step(hand_network(name, d), n)}
        times = {label: [] for label in contenders}
        with pyro.validation_enabled(False):
            for label, fn in contenders.items():  # settle: lazy state, and pprogen's replay, recorded after 50
                start = time.perf_counter()  # steps (a slow model's Python is a small share: it may stay general)
                for _ in range(args.warmup if label == "pprogen" else 2):
                    fn(train[torch.randint(0, n, (BATCH,))])
                    if time.perf_counter() - start > args.warmup_seconds:
                        break
            for r in range(args.rounds):
                labels = list(contenders)[r % 2:] + list(contenders)[:r % 2]
                for _ in range(args.steps):
                    x = train[torch.randint(0, n, (BATCH,))]
                    for label in labels:
                        times[label].append(timed(lambda: contenders[label](x), torch.device("cpu"))[0])
        hand = statistics.median(times["hand"])
        for label in ("pprogen", "hand"):
            med = statistics.median(times[label])
            note = step.replay.summary() if label == "pprogen" else ""
            if name == "nade" and label == "hand":
                label, note = "hand=old", "the (B, H, D) cumulative sum, pprogen's NADE before the blocked sweep"
            print(f"{name:8s} {label:9s} {med:9.4f} {med / hand:7.2f}  {note}")
            rows.append([name, label, f"{med:.4f}", f"{med / hand:.2f}", note])
        if name == "nade":
            notes.append(f"speed-up of pprogen's NADE over the old formulation: "
                         f"{hand / statistics.median(times['pprogen']):.1f}x")
            print(f"{'':8s} {notes[-1]}")
    record(__file__, [table(title, ["model", "contender", "median s", "/ hand", "notes"], rows)], notes, args=args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fvsbn,nade,eonade,made,rnn_ar")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=55, help="pprogen's settling steps (its replay records after 50)")
    parser.add_argument("--warmup-seconds", type=float, default=30.0, help="at most this long settling per model")
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
