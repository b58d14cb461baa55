"""Autoencoders against the VAE on the digits: the linear autoencoder's subspace against PCA's, reconstruction errors,
and one picture of the code spaces.

Runs (in ``ROOT``, each resumable: a finished run is read again, not retrained), all from the command line:

- ``pprogen train linear_ae`` with its defaults (digits, z_dim 2, full-batch Adam): the principal angles between
  its decoder's column space and the two leading principal directions of the training rows;
- ``pprogen train autoencoder --data digits_binary --set z_dim=2`` and ``pprogen train vae --data digits_binary
  --set z_dim=2`` (the same MLP, 400-400, Bernoulli reconstruction / likelihood; ``--epochs`` with early stopping).

It prints the validation reconstruction error of each (mean squared error per pixel of the decoder's mean at the
code of the image: the encoder's output, or the VAE guide's posterior mean), the VAE's importance-sampled NLL, and
writes ``OUT`` (default ``docs/figures/ae_vs_vae_codes.png``): the codes of the validation digits coloured by class
and the decoder's outputs on a grid over [-2.5, 2.5]^2, where a draw from N(0, I) lands.

Run: ``python benchmarks/bench_autoencoder.py --root /tmp/ae [--epochs 300]``.

History
-------

2026-12-03, `python benchmarks/bench_autoencoder.py --root RUNS --epochs 300`: `pprogen train linear_ae` with its
defaults (digits, z_dim 2, 1000 full-batch epochs, 28 s) ended 6.1e-4 and 8.3e-3 rad from PCA's leading plane; the
autoencoder and the VAE are the same MLP (400-400, z_dim 2, Bernoulli) on `digits_binary`, with early stopping:

| model (z_dim 2, digits_binary) | valid MSE per pixel | valid NLL (nats) | spread of the codes (std per dimension) |
| --- | --- | --- | --- |
| autoencoder | 0.08202 ± 0.00220 | - (no likelihood) | 2.58, 2.75 |
| vae | 0.07770 ± 0.00207 | 19.22 ± 0.31 (IS, K = 1000) | 0.96, 0.93 |
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import record, table
from pprogen.cli import main as pprogen
from pprogen.engine import load_run
from pprogen.latent import posterior_moments
from pprogen.models import principal_angles
from pprogen.plots import save_code_spaces


def trained(root: Path, name: str, argv: list[str]) -> Path:
    out = root / name
    if not (out / "summary.json").is_file():
        code = pprogen(["train", "--resume", str(out), "--no-progress"] if out.exists()
                       else ["train", *argv, "--out", str(out), "--no-progress"])
        if code != 0:
            raise SystemExit(f"training {name} failed ({code})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/figures/ae_vs_vae_codes.png"))
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    linear = trained(root, "linear_ae", ["linear_ae"])
    _, config, dataset, model, guide, _ = load_run(str(linear), torch.device("cpu"))
    x = dataset.train.flatten(1).double()
    centred = x - x.mean(0)
    pca = torch.linalg.eigh(centred.T @ centred / x.shape[0]).eigenvectors[:, -model.z_dim:]
    angles = principal_angles(model.subspace(), pca)
    summary = json.loads((linear / "summary.json").read_text())
    linear_line = (f"linear_ae (defaults: {summary['epochs_run']} epochs): principal angles to PCA's leading "
                   f"{model.z_dim}-dimensional subspace {', '.join(f'{a:.2e}' for a in angles.tolist())} rad; valid "
                   f"MSE {summary['valid_evaluation']['mse']:.5f} per value")
    print(linear_line)

    common = ["--data", "digits_binary", "--set", "z_dim=2", "--epochs", str(args.epochs)]
    panels, rows, cells = [], [], []
    for name in ("autoencoder", "vae"):
        path = trained(root, name, [name, *common])
        _, _, dataset, model, guide, _ = load_run(str(path), torch.device("cpu"))
        x, labels = dataset.split("valid"), dataset.labels["valid"]
        with torch.no_grad():
            codes = posterior_moments(model, guide, x)[0]  # the encoder's output / the guide's posterior mean
            recon = model.from_latent(codes, mean=True)
            values = torch.linspace(-2.5, 2.5, 9)
            grid = torch.stack(torch.meshgrid(values, values.flip(0), indexing="xy"), -1).reshape(-1, 2)
            decoded = model.from_latent(grid, mean=True)
        mse = (recon - x).pow(2).flatten(1).mean(1)
        evaluation = json.loads((path / "summary.json").read_text())["valid_evaluation"]
        nll = f"{evaluation['nll']:.2f} ± {evaluation['nll_stderr']:.2f}" if "nll" in evaluation else "- (no likelihood)"
        spread = codes.std(0).tolist()
        rows.append(f"| {name} | {mse.mean():.5f} ± {mse.std() / len(mse) ** 0.5:.5f} | {nll} | "
                    f"{spread[0]:.2f}, {spread[1]:.2f} |")
        cells.append([name, f"{mse.mean():.5f} ± {mse.std() / len(mse) ** 0.5:.5f}", nll,
                      f"{spread[0]:.2f}, {spread[1]:.2f}"])
        title = ("autoencoder: codes z = encoder(x)" if name == "autoencoder"
                 else "vae: posterior means of q(z | x)")
        panels.append((title, codes, decoded))
    columns = ["model (z_dim 2, digits_binary)", "valid MSE per pixel", "valid NLL (nats)", "spread of codes (std)"]
    print("| " + " | ".join(columns) + " |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))
    save_code_spaces(panels, labels, dataset.image_shape, Path(args.out))
    print(f"wrote {args.out}")
    record(__file__, [table(f"the autoencoder and the VAE, up to {args.epochs} epochs with early stopping", columns,
                            cells)], [linear_line, f"figure: {args.out}"], args=args)


if __name__ == "__main__":
    main()
