"""Write a generative story as a Pyro program, fit it with pprogen, and estimate log p(x) per point.

The story: a one-dimensional latent position on a curve, pushed through a small network, with
Gaussian noise — a nonlinear factor model for the two-moons data:

    z_n ~ N(0, 1),   x_n | z_n ~ N(f_theta(z_n), sigma^2 I)

The guide is written by hand too (amortized: q(z_n | x_n) = N(g_phi(x_n))). Nothing here is a zoo
model: ``fit`` and ``log_marginal`` take any model/guide pair with a ``data`` plate.

    python examples/custom_model.py --epochs 200
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pprogen.data import load_dataset
from pprogen.inference import fit, log_marginal


class Curve(PyroModule):
    def __init__(self, hidden=64):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        self.log_sigma = nn.Parameter(torch.tensor(-1.0))

    def forward(self, x=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.f(z), self.log_sigma.exp()).to_event(1), obs=x)


class CurveGuide(PyroModule):
    def __init__(self, hidden=64):
        super().__init__()
        self.g = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, x=None):
        loc, log_scale = self.g(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def main(args):
    data = load_dataset("moons")
    train, valid = data.train[: args.num_train], data.valid[: args.num_valid]
    model, guide = Curve(), CurveGuide()
    history = fit(model, guide, train, valid_data=valid, epochs=args.epochs, batch_size=256, lr=3e-3,
                  num_particles=args.particles, seed=args.seed, progress=not args.quiet)
    evidence = log_marginal(model, guide, valid, num_samples=args.num_samples)
    summary = evidence.summary()
    print(f"final validation -ELBO {history.valid_loss[-1]:.3f} nats, noise sigma {model.log_sigma.exp().item():.3f}")
    print(f"validation NLL {summary['nll']:.3f} ± {summary['nll_stderr']:.3f} nats "
          f"(K = {args.num_samples}, mean ESS {summary['mean_ess']:.1f})")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=10000)
    parser.add_argument("--num-valid", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    main(parser.parse_args())
