"""The 2-D mode benchmarks of VEEGAN / PacGAN over seeds: modes covered, high-quality share, reverse KL.

    python benchmarks/bench_gan_modes.py --data grid25 --seeds 10 --cli RUNS   # what `pprogen train gan` gives
    python benchmarks/bench_gan_modes.py --data ring8 --steps 8000 --seeds 10
    python benchmarks/bench_gan_modes.py --data grid25 --steps 16000 --seeds 10 [--z-dim 16 --r1 0.1 ...]

With ``--cli RUNS`` each seed is ``pprogen train gan --data DATA --seed S`` with the model's default settings (a
resumable run folder ``RUNS/DATA-seedS``; a finished one is read again), scored by the command's own evaluation
(2500 samples of the averaged G on the validation split). Without it, the settings below (the defaults before R1):

Each seed trains pprogen's ``gan`` (z in R^2, G and D 3 x 128 MLPs) with the non-saturating loss, Adam
(lr 1e-3 for both, betas 0.5 / 0.9) decayed linearly to 0, batch 256, and scores 2500 samples of the moving
average of G (decay 0.999) against the data's modes (high quality: within 3 sigma of the nearest mode).

History
-------

2026-12-03, `python benchmarks/bench_gan_modes.py --data grid25 --seeds 10 --cli RUNS` (one thread per seed): `pprogen
train gan --data grid25 --seed S` with the card's defaults (z in R^2, 3 x 128 MLPs, non-saturating loss, R1 0.1, Adam
1e-3 / betas (0.5, 0.9) decayed linearly to 0, batch 256, 400 epochs), 1000 samples of the averaged generator; *high
quality* is within 3 sigma of the nearest mode.

| data | seeds | modes | high quality | reverse KL | time per seed | target |
| --- | --- | --- | --- | --- | --- | --- |
| grid25 (sigma 0.05) | 10 | **25.00 ± 0.00 / 25** | **96.7 ± 0.6%** (lowest 95.6%) | 0.0154 ± 0.0028 | 403 s | >= 24.8 / 25 and >= 94%: met |
| grid25 without R1, 16 000 steps | 10 | 22.60 ± 3.53 / 25 | 95.6 ± 2.0% | 0.167 ± 0.226 | | not met |
| ring8 (sigma 0.01), the same defaults | 10 | **8.00 ± 0.00 / 8** | 98.1 ± 0.5% (lowest 97.3%) | 0.0049 ± 0.0015 | 288 s | 8/8, >= 95%: met |

The R1 penalty keeps the critic's gradient small on the data, so the generator is not pushed off a mode it has found.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

import pprogen
from common import record, table
from pprogen.data import MODES, load_toy
from pprogen.inference.adversarial import AdversarialTrainer
from pprogen.inference.metrics import mode_metrics


def one_seed(data: str, seed: int, steps: int, batch_size: int, num_train: int, pack: int = 1, z_dim: int = 2,
             loss: str = "nonsaturating", r1: float = 0.0, lr: float = 1e-3) -> dict:
    torch.manual_seed(seed)
    model = pprogen.create_model("gan", hidden_dims=(128, 128, 128), d_hidden_dims=(128, 128, 128), pack=pack,
                                 z_dim=z_dim)
    train = load_toy(data, num_train=num_train).train
    per_epoch = train.shape[0] // batch_size
    trainer = AdversarialTrainer(model, loss=loss, lr_g=lr, lr_d=lr, betas=(0.5, 0.9), schedule="linear", ema=0.999,
                                 r1_weight=r1, batch_size=batch_size, device="cpu", seed=seed, progress=False)
    started = time.perf_counter()
    trainer.fit(train, epochs=max(1, round(steps / per_epoch)))
    torch.manual_seed(10_000 + seed)
    out = mode_metrics(model.sample(2500), *MODES[data])
    out.update(seed=seed, seconds=time.perf_counter() - started)
    return out


def cli_seed(data: str, seed: int, root: str) -> dict:
    """``pprogen train gan --data DATA --seed SEED`` with the card's defaults; its validation mode metrics."""
    from pathlib import Path

    from pprogen.cli import main as pprogen

    out = Path(root) / f"{data}-seed{seed}"
    if not (out / "summary.json").is_file():
        started = time.perf_counter()
        argv = ["train", "--resume", str(out)] if out.exists() else ["train", "gan", "--data", data, "--seed", str(seed),
                                                                        "--out", str(out)]
        if pprogen([*argv, "--no-progress"]) != 0:
            raise SystemExit(f"seed {seed} failed")
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    summary = json.loads((out / "summary.json").read_text())
    result = summary["valid_evaluation"]
    return {**result, "seed": seed, "seconds": summary.get("train_seconds", float("nan"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ring8", choices=sorted(MODES))
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-train", type=int, default=10000, help="training examples drawn once per seed")
    p.add_argument("--pack", type=int, default=1, help="PacGAN: examples the discriminator judges jointly")
    p.add_argument("--only-seeds", type=int, nargs="*", help="run just these seeds")
    p.add_argument("--z-dim", type=int, default=2, help="dimension of G's noise")
    p.add_argument("--loss", default="nonsaturating")
    p.add_argument("--r1", type=float, default=0.0, help="R1 penalty weight on real data")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of G and D")
    p.add_argument("--cli", metavar="RUNS", help="train with `pprogen train gan` defaults, run folders under RUNS")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.only_seeds if args.only_seeds is not None else range(args.seeds):
        if args.cli:
            row = cli_seed(args.data, seed, args.cli)
        else:
            row = one_seed(args.data, seed, args.steps, args.batch_size, args.num_train, args.pack, args.z_dim,
                           args.loss, args.r1, args.lr)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("seed", "modes", "high_quality", "reverse_kl", "seconds")}), flush=True)

    def stat(key):  # a seed with no high-quality sample has no reverse KL (None): counted as inf
        values = [math.inf if r[key] is None else r[key] for r in rows]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    (m, ms), (h, hs), (k, ks) = stat("modes"), stat("high_quality"), stat("reverse_kl")
    steps = "pprogen train gan defaults" if args.cli else f"{args.steps} steps"
    median_seconds = statistics.median(r['seconds'] for r in rows)
    print(f"{args.data}: {len(rows)} seeds, {steps}: modes {m:.2f} ± {ms:.2f} / {rows[0]['num_modes']}, "
          f"high quality {100 * h:.1f} ± {100 * hs:.1f}%, reverse KL {k:.4f} ± {ks:.4f}, "
          f"median {median_seconds:.0f} s per seed")
    summary = table(f"{args.data}, {steps}: mean ± sd over seeds", ["data", "seeds", "modes", "high quality",
                                                                    "reverse KL", "median seconds per seed"],
                    [[args.data, len(rows), f"{m:.2f} ± {ms:.2f} / {rows[0]['num_modes']}",
                      f"{100 * h:.1f} ± {100 * hs:.1f}%", f"{k:.4f} ± {ks:.4f}", f"{median_seconds:.0f}"]])
    seeds = table("each seed", ["seed", "modes", "high quality", "reverse KL", "seconds"],
                  [[r["seed"], r["modes"], f"{100 * r['high_quality']:.1f}%",
                    "-" if r["reverse_kl"] is None else f"{r['reverse_kl']:.4f}", f"{r['seconds']:.0f}"] for r in rows])
    record(__file__, [summary, seeds], args=args, variant=args.data + ("-cli" if args.cli else ""))


if __name__ == "__main__":
    main()
