"""IS versus AIS versus BDMC on a trained VAE: the README's evidence table.

    python benchmarks/ais_mnist.py RUN --images 1000 --steps 100 1000 10000 --bdmc-images 100

RUN is a `pprogen train vae --data binarized_mnist ...` run folder. Prints one line per estimate and appends
it to RUN/ais_table.jsonl as it goes, so a long table survives an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pprogen.cli import _load_run
from pprogen.inference import ais, bdmc, log_marginal


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--is-samples", type=int, default=5000)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--bdmc-images", type=int, default=100)
    p.add_argument("--bdmc-steps", type=int, nargs="+")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run, config, dataset, model, guide, device = _load_run(args.run, torch.device("cpu"))
    x = dataset.split("valid")[: args.images]
    out = run.path / "ais_table.jsonl"

    def record(row: dict) -> None:
        print(json.dumps(row), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")

    torch.manual_seed(args.seed)
    t = time.perf_counter()
    e = log_marginal(model, guide, x, num_samples=args.is_samples)
    record({"method": "is", "K": args.is_samples, "images": x.shape[0], **_mean(e), "seconds": time.perf_counter() - t})
    for steps in args.steps:
        torch.manual_seed(args.seed)
        t = time.perf_counter()
        e = ais(model, guide, x, num_steps=steps, num_chains=args.chains, leapfrog_steps=args.leapfrog)
        s = e.summary()
        record({"method": "ais", "T": steps, "C": args.chains, "L": args.leapfrog, "images": x.shape[0], **_mean(e),
                "accept": s["mean_accept_rate"], "divergences": s["divergences"], "seconds": time.perf_counter() - t})
        if steps in (args.bdmc_steps or args.steps):
            torch.manual_seed(args.seed)
            t = time.perf_counter()
            sw = bdmc(model, guide, x[: args.bdmc_images], num_steps=steps, num_chains=args.chains,
                      leapfrog_steps=args.leapfrog)
            record({"method": "bdmc", "T": steps, "C": args.chains, "L": args.leapfrog, **sw.summary(),
                    "seconds": time.perf_counter() - t})


def _mean(e) -> dict:
    s = e.summary()
    return {"nll": s["nll"], "nll_stderr": s["nll_stderr"], "mean_chain_stderr": s["mean_is_stderr"]}


if __name__ == "__main__":
    main()
