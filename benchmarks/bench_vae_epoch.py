"""One epoch of the 784-400-400-50 VAE on binarized MNIST, pprogen's ``fit`` against a hand-written PyTorch
loop on the same device in the same process; then K = 5000 importance-sampled log p(x) on the 10 000
validation images, pprogen's ``log_marginal`` against a hand-written vectorized estimator.

Epochs alternate: ``fit`` trains pprogen's VAE and, after each of its epochs (its ``callback``), one epoch of
the hand-written loop runs on its own copy of the network (the same architecture, the same fused Adam, the
same batch of 128 drawn from a fresh permutation, the data already on the device). The script prints the
median epoch time of each and their ratio, then trains on for ``--train-epochs`` and reports the evidence:
mean NLL ± standard error, mean effective sample size, and the time of each estimator.

Run: ``python benchmarks/bench_vae_epoch.py --device cuda [--rounds 5 --train-epochs 20 --num-samples 5000]``.
Options: ``--autocast bf16`` and ``--compile`` time pprogen's epoch with those options (the hand loop stays
float32 and eager); ``--no-fast-path`` times it running the Pyro program every step instead of replaying it.

History
-------

2026-12-02, `python benchmarks/bench_vae_epoch.py --device cpu --rounds 5 --num-samples 0` (784-400-400-50 on
binarized MNIST, 2 threads): 7.07 s against 6.38 s (1.11x) replayed, 7.61 s against 6.23 s (1.22x) with
`--no-fast-path`. With 5 timed epochs each (`--device cpu`): 4.61 s against 4.48 s, **1.03x**.

2026-12-04, `--device cuda` (one NVIDIA H200, torch 2.11.0+cu130, pyro 1.9.2, commit 607a79c, the GPU to itself):
1.317 s an epoch hand-written against 1.667 s for pprogen (1.27x), and K = 5000 evidence on the 10 000 validation
images 94.561 ± 0.271 nats (hand-written 94.568) in 3.0 s against 2.1 s.
"""

from __future__ import annotations

import argparse
import statistics

import pyro
import torch

import pprogen
from bench_log_marginal import hand_log_marginal
from bench_svi_step import BATCH, HIDDEN, LR, X_DIM, Z_DIM, HandVAE
from common import binarized_mnist_or_random, record, table, timed
from pprogen.inference import fit, log_marginal


def hand_epoch(vae, opt, data, generator):
    """The loop a user writes by hand: a permutation, minibatches by index, loss, backward, step."""
    order = torch.randperm(data.shape[0], generator=generator).to(data.device)
    for start in range(0, data.shape[0], BATCH):
        opt.zero_grad(set_to_none=True)
        vae(data[order[start : start + BATCH]]).backward()
        opt.step()


def main(args):
    device = torch.device(args.device)
    torch.manual_seed(0)
    train, valid, name = binarized_mnist_or_random()
    train, valid = train.to(device), valid.to(device)
    hand = HandVAE().to(device)
    hand_opt = torch.optim.Adam(hand.parameters(), lr=LR, fused=True)
    generator = torch.Generator().manual_seed(1)
    times = {"hand": [], "pprogen": []}
    fast_path = not args.no_fast_path

    def each_epoch(epoch, record):
        times["pprogen"].append(record["seconds"])  # fit's own timer: the epoch's steps (no validation data here)
        times["hand"].append(timed(lambda: hand_epoch(hand, hand_opt, train, generator), device)[0])

    model = pprogen.create_model("vae", x_dim=X_DIM, z_dim=Z_DIM, hidden_dims=HIDDEN)
    guide = model.default_guide()
    label = device.type + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    print(f"VAE {X_DIM}-{'-'.join(map(str, HIDDEN))}-{Z_DIM} on {name} ({train.shape[0]} images), batch {BATCH}, "
          f"device {label}, torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}, "
          f"autocast {args.autocast}, compile {args.compile}, fast path {fast_path}")
    history = fit(model, guide, train, epochs=args.rounds + 1, batch_size=BATCH, lr=LR, device=device, progress=False,
                  callback=each_epoch, autocast=args.autocast, compile=args.compile, fast_path=fast_path)
    rows = {k: v[1:] for k, v in times.items()}  # the first epoch of each warms up (and compiles)
    base = statistics.median(rows["hand"])
    first = (f"first epoch: {times['pprogen'][0]:.2f} s pprogen, {times['hand'][0]:.2f} s hand; {args.rounds} timed "
             "epochs each")
    print(f"{'contender':10s} {'median s/epoch':>15s} {'ratio to hand':>14s}   ({first})")
    epochs = []
    for key, values in rows.items():
        print(f"{key:10s} {statistics.median(values):15.3f} {statistics.median(values) / base:14.3f}")
        epochs.append([key, f"{statistics.median(values):.3f}", f"{statistics.median(values) / base:.3f}"])
    print(f"pprogen's steps: {history.fast_path}")
    title = (f"VAE {X_DIM}-{'-'.join(map(str, HIDDEN))}-{Z_DIM} on {name} ({train.shape[0]} images), batch {BATCH}, "
             f"device {label}, threads {torch.get_num_threads()}, autocast {args.autocast}, compile {args.compile}, "
             f"fast path {fast_path}: one epoch")
    tables = [table(title, ["contender", "median s/epoch", "ratio to hand"], epochs)]
    notes = [first, f"pprogen's steps: {history.fast_path}"]
    variant = "-".join(v for v in (args.autocast, "compile" if args.compile else None,
                                   None if fast_path else "no_fast_path") if v) or None
    if args.num_samples == 0:
        record(__file__, tables, notes, args=args, variant=variant, device=device)
        return
    if args.train_epochs > args.rounds + 1:
        fit(model, guide, train, epochs=args.train_epochs - args.rounds - 1, batch_size=BATCH, lr=LR, device=device,
            progress=False, autocast=args.autocast)
    model.eval()
    x = valid[: args.images]
    with pyro.validation_enabled(False):
        ours, evidence = timed(
            lambda: log_marginal(model, guide, x, num_samples=args.num_samples, dim=X_DIM, khat=False), device)
        theirs, by_hand = timed(lambda: torch.cat([hand_log_marginal(model, guide, x[i : i + 100], args.num_samples)
                                                   for i in range(0, x.shape[0], 100)]), device)
    summary = evidence.summary()
    trained = max(args.train_epochs, args.rounds + 1)
    print(f"evidence after {trained} epochs, K = {args.num_samples}, {x.shape[0]} "
          f"validation images: NLL {summary['nll']:.3f} ± {summary['nll_stderr']:.3f} nats, mean ESS "
          f"{summary['mean_ess']:.1f}; log_marginal {ours:.1f} s, hand-written {theirs:.1f} s (ratio "
          f"{ours / theirs:.2f}), hand-written NLL {-by_hand.double().mean().item():.3f}")
    tables.append(table(f"evidence after {trained} epochs, K = {args.num_samples}, {x.shape[0]} validation images",
                        ["estimator", "NLL (nats)", "mean ESS", "seconds", "ratio to hand-written"],
                        [["log_marginal", f"{summary['nll']:.3f} ± {summary['nll_stderr']:.3f}",
                          f"{summary['mean_ess']:.1f}", f"{ours:.1f}", f"{ours / theirs:.2f}"],
                         ["hand-written", f"{-by_hand.double().mean().item():.3f}", "-", f"{theirs:.1f}", "1.00"]]))
    record(__file__, tables, notes, args=args, variant=variant, device=device)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs of each")
    parser.add_argument("--train-epochs", type=int, default=20, help="epochs trained before the evidence")
    parser.add_argument("--num-samples", type=int, default=5000, help="K for the evidence (0: skip it)")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--autocast", default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-fast-path", action="store_true", help="run the Pyro program every step (no replay)")
    main(parser.parse_args())
