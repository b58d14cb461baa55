"""Write a generative story as a Pyro program, fit it with three ELBOs and two guides, compare log p(x).

The story: a one-dimensional latent position on a curve, pushed through a small network, with
Gaussian noise — a nonlinear factor model for the two-moons data:

    z_n ~ N(0, 1),   x_n | z_n ~ N(f_theta(z_n), sigma^2 I)

Two guides: one written by hand (amortized: q(z_n | x_n) = N(g_phi(x_n))) and one that pprogen builds
from the model (``make_guide("amortized_iaf", model)``). Three estimators: ``trace``, ``iwae`` and
``stl``. Nothing here is a zoo model: ``fit``, ``make_guide`` and ``log_marginal`` take any Pyro
program with a ``data`` plate, with no change to the model's code.

    python examples/write_a_generative_story.py --epochs 60
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pprogen.data import load_dataset
from pprogen.inference import fit, log_marginal, make_guide


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
    results = {}
    for guide_name in ("hand_written", "amortized_iaf"):
        for elbo in ("trace", "iwae", "stl"):
            pyro.set_rng_seed(args.seed)
            model = Curve()
            guide = CurveGuide() if guide_name == "hand_written" else make_guide(guide_name, model, hidden_dims=(64,))
            particles = 1 if elbo == "trace" else args.particles
            fit(model, guide, train, valid_data=valid, epochs=args.epochs, batch_size=256, lr=3e-3,
                elbo=elbo, num_particles=particles, seed=args.seed, progress=not args.quiet)
            summary = log_marginal(model, guide, valid, num_samples=args.num_samples).summary()
            results[guide_name, elbo] = summary
            print(f"{guide_name:14s} {elbo:6s} validation NLL {summary['nll']:.3f} ± {summary['nll_stderr']:.3f} "
                  f"nats (K = {args.num_samples}, mean ESS {summary['mean_ess']:.1f}, "
                  f"k-hat bands {summary['khat_bands']})")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=10000)
    parser.add_argument("--num-valid", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    main(parser.parse_args())
