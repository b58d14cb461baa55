"""Exact queries on the sprinkler network, then its tables learned back from data with missing values.

The network (Cloudy -> {Sprinkler, Rain} -> GrassWet) is a Pyro program with one site per node. Queries
sum the unobserved nodes out with Pyro's enumeration; learning runs SVI with the missing entries
enumerated, beside the closed-form counts on the complete rows.

    python examples/bayesian_network_queries.py
"""

import argparse
import math

import pyro
import torch

import pprogen
from pprogen.inference import fit, make_elbo
from pprogen.models import BayesianNetwork


def main(args):
    pyro.set_rng_seed(args.seed)
    truth = pprogen.create_model("sprinkler", cpt="fixed")
    print(truth.describe())
    print(f"P(Rain = yes | GrassWet = yes)      = {truth.query('Rain', {'GrassWet': 'yes'})[1]:.4f}")
    print(f"P(Sprinkler = on | GrassWet = yes)  = {truth.query('Sprinkler', {'GrassWet': 'yes'})[1]:.4f}")
    both = truth.query(["Sprinkler", "Rain"], {"GrassWet": "yes"})
    print(f"P(Sprinkler = on, Rain = yes | GrassWet = yes) = {both[1, 1]:.4f}")
    print("most probable explanation of wet grass:", truth.most_probable({"GrassWet": "yes"}))

    data = truth.sample(args.num_rows)
    hidden = data.clone()
    hidden[torch.rand(hidden.shape) < args.missing] = math.nan
    complete = hidden[~torch.isnan(hidden).any(1)]
    counted = BayesianNetwork("sprinkler", init="uniform").fit_counts(complete)
    learned = BayesianNetwork("sprinkler", init="uniform")
    fit(learned, learned.default_guide(), hidden, elbo=make_elbo("enum"), epochs=args.epochs, lr=0.05,
        batch_size=500, progress=not args.quiet, seed=args.seed)
    print(f"\n{args.num_rows} rows, {args.missing:.0%} of entries missing ({len(complete)} complete rows)")
    for name, net in (("counts on complete rows", counted), ("SVI, missing enumerated", learned)):
        error = max((a - b).abs().max().item() for a, b in zip(net.cpts(), truth.cpts()))
        answer = net.query("Rain", {"GrassWet": "yes"})[1].item()
        print(f"{name:24s} max |CPT error| {error:.3f}   P(Rain = yes | GrassWet = yes) = {answer:.4f}")
    return learned


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-rows", type=int, default=20000)
    parser.add_argument("--missing", type=float, default=0.3, help="fraction of entries hidden at random")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    main(parser.parse_args())
