"""Planar and radial flows fitted by reverse KL to the four 2-D energies of Rezende & Mohamed (2015).

The target p(z) ∝ exp(-U(z)) is a Pyro model (a flat site ``z`` plus ``pyro.factor("energy", -U(z))``,
:class:`pprogen.models.flows.EnergyTarget`); a zoo flow becomes its guide with ``flow.as_guide("z")`` and
``pprogen.inference.fit`` maximizes the ELBO = log Z - KL(q || p). For each flow length the script writes
one figure (rows: U1-U4; columns: the target, planar, radial, drawn as histograms of 100 000 samples) and
prints KL(q || p) = log Z - ELBO, with log Z by quadrature on a grid.

    python examples/flow_energy_2d.py [--lengths 2 8 32] [--steps 200] [--out-dir energy_figures]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import pprogen
from pprogen.inference import fit
from pprogen.models.flows import ENERGIES, EnergyTarget

LIM = 4.0


def log_z(energy) -> float:
    """log of the integral of exp(-U) over [-6, 6]^2 (the targets have no mass beyond) by quadrature."""
    xs = torch.linspace(-6, 6, 1201)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    return (torch.logsumexp(-energy(grid), 0) + 2 * math.log(xs[1] - xs[0])).item()


def fit_flow(kind: str, energy: str, length: int, steps: int, batch: int, seed: int):
    torch.manual_seed(seed)
    flow = pprogen.create_model(kind, x_dim=2, flow_length=length)
    target = EnergyTarget(energy)
    # the data only set how many draws each step takes: the target has no data
    fit(target, flow.as_guide("z"), torch.zeros(batch, 2), epochs=steps, batch_size=batch, lr=1e-2,
        clip_norm=10.0, seed=seed, progress=False)
    with torch.no_grad():
        z, log_q = flow.sample_with_log_prob(20000)
        elbo = (target.log_density(z) - log_q).mean().item()
        samples = flow.sample(100000)
    return elbo, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per fit")
    parser.add_argument("--batch", type=int, default=256, help="draws per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="energy_figures")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pprogen.runs import atomic_write

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    names = list(ENERGIES)
    log_zs = {name: log_z(ENERGIES[name]) for name in names}
    xs = torch.linspace(-LIM, LIM, 300)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1)
    print(f"{'K':>3s} {'energy':6s} {'flow':7s} {'ELBO':>8s} {'log Z':>8s} {'KL(q||p)':>9s}")
    for length in args.lengths:
        fig, axes = plt.subplots(len(names), 3, figsize=(6.6, 2.2 * len(names)), squeeze=False)
        for row, name in enumerate(names):
            axes[row, 0].pcolormesh(xs, xs, torch.exp(-ENERGIES[name](grid)).numpy(), cmap="viridis", shading="auto")
            axes[row, 0].set_ylabel(name.upper())
            for col, kind in enumerate(("planar", "radial"), start=1):
                elbo, samples = fit_flow(kind, name, length, args.steps, args.batch, args.seed)
                kl = log_zs[name] - elbo
                print(f"{length:3d} {name:6s} {kind:7s} {elbo:8.3f} {log_zs[name]:8.3f} {kl:9.3f}", flush=True)
                axes[row, col].hist2d(samples[:, 0].numpy(), samples[:, 1].numpy(), bins=150,
                                      range=[[-LIM, LIM], [-LIM, LIM]], cmap="viridis")
                if row == 0:
                    axes[row, col].set_title(f"{kind}, K = {length}", fontsize=9)
        axes[0, 0].set_title("exp(-U)", fontsize=9)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
        path = out / f"energy_K{length}.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, bbox_inches="tight", format="png"))
        plt.close(fig)
        print(f"figure: {path}")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
