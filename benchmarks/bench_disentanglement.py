"""The beta-VAE trade-off on the sprites: validation NLL against disentanglement (MIG, FactorVAE score) for
beta in {1, 2, 4, 8}.

Each (beta, seed) trains ``pprogen train vae --data sprites --beta B`` (an MLP VAE, z_dim 10, hidden 256-256,
batch 128, Adam 1e-3, ``--epochs`` with early stopping on the validation bound) in ``ROOT/beta<B>-seed<S>``
(resumable: a finished run is read again, not retrained), then reads its summary: the importance-sampled
validation NLL (K = 1000; the model's own log p(x), whatever beta trained it) and the disentanglement scores of the
guide's posterior means on all 2880 sprites.

Run: ``python benchmarks/bench_disentanglement.py --root /tmp/betas [--epochs 200 --seeds 0,1,2]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pprogen.cli import main as pprogen


def run(root: Path, beta: float, seed: int, epochs: int) -> dict:
    out = root / f"beta{beta:g}-seed{seed}"
    if not (out / "summary.json").is_file():
        if out.exists():
            code = pprogen(["train", "--resume", str(out), "--no-progress"])
        else:
            code = pprogen(["train", "vae", "--data", "sprites", "--beta", str(beta), "--seed", str(seed), "--epochs",
                            str(epochs), "--set", "z_dim=10", "--set", "hidden_dims=[256,256]", "--out", str(out),
                            "--no-progress"])
        if code != 0:
            raise SystemExit(f"training beta={beta} seed={seed} failed ({code})")
    summary = json.loads((out / "summary.json").read_text())
    evaluation = summary["valid_evaluation"]
    return {"nll": evaluation["nll"], "mig": evaluation["disentanglement"]["mig"],
            "factor_vae": evaluation["disentanglement"]["factor_vae_score"], "epochs": summary["epochs_run"],
            "per_factor": evaluation["disentanglement"]["mig_per_factor"]}


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--betas", default="1,2,4,8")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for beta in (float(b) for b in args.betas.split(",")):
        results = [run(root, beta, int(s), args.epochs) for s in args.seeds.split(",")]
        rows.append((beta, results))
    print(f"sprites, vae z_dim 10, hidden 256-256, up to {args.epochs} epochs, seeds {args.seeds} (mean ± sd)")
    print("| beta | valid NLL (nats, IS K = 1000) | MIG | FactorVAE score | epochs | MIG per factor (shape, scale, "
          "rotation, x, y) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for beta, results in rows:
        per = [statistics.fmean(r["per_factor"][k] for r in results) for k in results[0]["per_factor"]]
        print(f"| {beta:g} | {spread([r['nll'] for r in results])} | {spread([r['mig'] for r in results])} | "
              f"{spread([r['factor_vae'] for r in results])} | {', '.join(str(r['epochs']) for r in results)} | "
              f"{', '.join(f'{v:.2f}' for v in per)} |")


if __name__ == "__main__":
    main()
