"""The figures of the issue on Pyro programs written in Pyro's own idioms, from the client suite's programs.

1. STL's and DReG's guide gradient at the exact posterior of a linear-Gaussian model, per guide idiom
   (zero in exact arithmetic), next to ``trace`` and ``iwae`` (which keep the score term);
2. ``log_marginal`` on the conjugate Normal-Normal model with a global latent and its exact posterior as the
   guide, against the closed-form log p(x_1..N), for N = 4, 8, 16;
3. the ``trace`` loss of a program that subsamples ``pyro.plate("data", 12, subsample_size=4)`` in model and
   guide (per-datum tables indexed by the plate), against Pyro's ``Trace_ELBO`` on the same draws.

Run from the repository root: ``python benchmarks/report_pyro_idioms.py``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import record, table  # noqa: E402
from pprogen.inference import log_marginal, make_elbo  # noqa: E402
from tests.clients import programs as p  # noqa: E402
from tests.clients.helpers import flat_grad, guide_parameters  # noqa: E402
from tests.clients.test_path_derivatives import IDIOMS, program  # noqa: E402


def main() -> None:
    torch.set_default_dtype(torch.float64)
    estimators = ("stl", "iwae_dreg", "trace", "iwae")
    tables = []
    title = "1. guide-gradient norm at the exact posterior (16 data points; max over 3 seeds)"
    print(title)
    print(f"   {'idiom':12s} " + " ".join(f"{n:>10s}" for n in estimators))
    x = p.sample_linear_gaussian(16)
    rows = []
    for idiom in IDIOMS:
        cells = []
        for name in ("stl", "iwae_dreg", "trace", "iwae"):
            pyro.clear_param_store()
            model, guide = program(idiom, x)
            params = guide_parameters(guide, x)
            estimator = make_elbo(name, num_particles=1 if name in ("stl", "trace") else 8)
            norms = []
            for seed in range(3):
                pyro.set_rng_seed(seed)
                norms.append(flat_grad(estimator(model, guide)(x), params).norm().item())
            cells.append(f"{max(norms):10.2e}")
        print(f"   {idiom:12s} " + " ".join(cells))
        rows.append([idiom, *(c.strip() for c in cells)])
    tables.append(table(title, ["idiom", *estimators], rows))

    title = "2. Normal-Normal with a global latent, exact posterior as the guide, K = 64"
    print(title)
    rows = []
    for n in (4, 8, 16):
        pyro.clear_param_store()
        x = p.sample_normal_normal(n)
        guide = p.normal_normal_guide(*p.global_posterior(x, p.NOISE_SCALE))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evidence = log_marginal(p.normal_normal_model, guide, x, num_samples=64)
        exact = p.global_log_evidence(x, p.NOISE_SCALE)
        print(f"   N = {n:2d}: log_marginal {evidence.log_prob.item():9.4f} ± {evidence.stderr.item():.1e} "
              f"(joint: {evidence.joint}), closed form {exact:9.4f}")
        rows.append([n, f"{evidence.log_prob.item():.4f} ± {evidence.stderr.item():.1e}", str(evidence.joint),
                     f"{exact:.4f}"])
    tables.append(table(title, ["N", "log_marginal", "joint", "closed form"], rows))

    title = "3. subsampled plates (N = 12, B = 4), trace loss on the same draws"
    print(title)
    rows = []
    pyro.clear_param_store()
    prog, x = p.subsampled_linear_gaussian(12, 4)
    pyro.param("z_loc", prog.init_loc.clone())
    for seed in range(3):
        pyro.set_rng_seed(seed)
        ours = make_elbo("trace").loss(prog.model, prog.guide, x)
        pyro.set_rng_seed(seed)
        theirs = Trace_ELBO().loss(prog.model, prog.guide, x)
        print(f"   seed {seed}: pprogen {ours:10.4f}   Pyro Trace_ELBO {theirs:10.4f}")
        rows.append([seed, f"{ours:.4f}", f"{theirs:.4f}"])
    tables.append(table(title, ["seed", "pprogen", "Pyro Trace_ELBO"], rows))
    record(__file__, tables)


if __name__ == "__main__":
    main()
