"""Importance-sampled log p(x) per data point, checked against the exact evidence of PPCA.

PPCA (z ~ N(0, I), x | z ~ N(Wz + mu, sigma^2 I)) has log p(x) in closed form, so the estimates, their
standard errors, effective sample sizes and Pareto k-hats can be read against the truth, for the prior
as proposal and for a trained amortized guide, at several K.

    python examples/importance_sampled_evidence.py
"""

import argparse

import pyro

import pprogen
from pprogen.data import load_dataset
from pprogen.inference import fit, log_marginal, make_guide


def main(args):
    pyro.set_rng_seed(args.seed)
    data = load_dataset("moons")
    train, test = data.train[: args.num_train], data.test[: args.num_test]
    model = pprogen.create_model("ppca", x_dim=2, z_dim=1)
    guide = make_guide("amortized_normal", model, hidden_dims=(32,))
    fit(model, guide, train, valid_data=data.valid[:500], epochs=args.epochs, batch_size=256, lr=1e-2,
        elbo="iwae", num_particles=8, progress=not args.quiet)
    exact = model.log_prob(test).detach()
    print(f"exact mean log p(x) on {len(test)} test points: {exact.mean():.4f}")
    for proposal, q in (("prior", None), ("guide", guide)):
        for k in args.num_samples:
            evidence = log_marginal(model, q, test, num_samples=k)
            error = (evidence.log_prob - exact).abs()
            within = (error <= 3 * evidence.stderr.clamp(min=1e-6)).float().mean()
            print(f"{proposal:5s} K = {k:5d}: mean log p(x) {evidence.log_prob.mean():.4f}, "
                  f"max |error| {error.max():.4f}, within 3 stderr {within:.0%}, "
                  f"mean ESS {evidence.ess.mean():.1f}, k-hat bands {evidence.khat_bands()}")
    return exact


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--num-train", type=int, default=10000)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--num-samples", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    main(parser.parse_args())
