"""Cases a review of the Pyro-idioms change found wrong, each checked against a value or a refusal.

- DReG with a global latent that a local guide site depends on: the local log q's direct dependence on the
  global draw is a score term too, and must go (the global draw's path stays).
- Validation of a program that takes its subsample indices: Pyro's N / B scale must not inflate it.
- A program that subsamples its plate and has a global latent: no joint evidence can be had, refuse.
- Probes keep the handles users hold on their parameters; a guide at fault is named, not the model.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pprogen.inference import fit, log_marginal, make_elbo
from tests.clients.helpers import paired_z_scores

X = torch.tensor([1.5, -0.3, 2.0], dtype=torch.float64)


def global_model(x):
    theta = pyro.sample("theta", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(theta, 1.0))
        pyro.sample("obs", dist.Normal(z, 1.0), obs=x)


def global_guide(x):
    m = pyro.param("m", torch.tensor(0.3, dtype=x.dtype))
    s = pyro.param("s", torch.tensor(0.8, dtype=x.dtype), constraint=dist.constraints.positive)
    c = pyro.param("c", torch.tensor(0.2, dtype=x.dtype))
    d = pyro.param("d", torch.tensor(0.4, dtype=x.dtype))
    log_scale = pyro.param("log_scale", torch.tensor(-0.2, dtype=x.dtype))
    theta = pyro.sample("theta", dist.Normal(m, s))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(c * theta + d * x, log_scale.exp()))


def test_dreg_is_unbiased_when_local_guide_sites_depend_on_a_global_draw():
    global_guide(X)
    params = [pyro.param(n).unconstrained() for n in ("m", "s", "c", "d", "log_scale")]
    rows = {"iwae": [], "iwae_dreg": []}
    for seed in range(400):
        for name in rows:
            pyro.set_rng_seed(seed)
            loss = make_elbo(name, num_particles=4).differentiable_loss(global_model, global_guide, X)
            rows[name].append(torch.stack(torch.autograd.grad(loss, params)))
    z = paired_z_scores(torch.stack(rows["iwae_dreg"]), torch.stack(rows["iwae"]))
    assert z.max() < 4.5, f"DReG mean differs from the IWAE mean by {z.max():.1f} standard errors"


def test_validation_of_a_program_that_takes_its_indices_is_per_datum():
    n, nv = 400, 256
    x = torch.randn(n, generator=torch.Generator().manual_seed(0)) + 3.0
    xv = torch.randn(nv, generator=torch.Generator().manual_seed(1)) + 3.0

    def model(x, idx):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", n, subsample=idx):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)

    def guide(x, idx):
        pass

    history = fit(model, guide, x, condition={"idx": torch.arange(n)}, valid_data=xv,
                  valid_condition={"idx": torch.arange(nv)}, epochs=2, batch_size=50, lr=0.1, progress=False)
    loc = pyro.param("loc").detach()
    exact = -dist.Normal(loc, 1.0).log_prob(xv).mean().item()
    assert history.records[-1]["valid_loss"] == pytest.approx(exact, rel=1e-5)


def test_joint_evidence_of_a_subsampling_program_is_refused():
    def model(x):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x), subsample_size=2) as idx:
            pyro.sample("obs", dist.Normal(theta, 1.0), obs=x[idx])

    def guide(x):
        pyro.sample("theta", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    with pytest.raises(ValueError, match="outside plate 'data', which subsamples itself.*no subsample_size"):
        log_marginal(model, guide, torch.randn(6), num_samples=4)


def test_a_probe_keeps_the_handles_users_hold_on_their_parameters():
    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(pyro.param("loc", torch.zeros(1)), 1.0), obs=x)

    from pprogen.inference.tracing import probe_sites

    held = pyro.param("loc", torch.zeros(1))
    probe_sites(model, None, (torch.randn(5),), {})
    assert held.unconstrained() is pyro.get_param_store()._params["loc"]


def test_a_guide_table_without_a_plate_is_blamed_on_the_guide():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):  # a per-datum table sized by the rows it is handed, sampled without a plate
        loc = pyro.param("loc", lambda: torch.zeros(len(x), 2))
        pyro.sample("z", dist.Normal(loc, 1.0).to_event(2))

    with pytest.raises(ValueError, match=r"^the guide runs on a batch of 10 rows but not on 9"):
        fit(model, guide, torch.randn(40, 2), epochs=1, batch_size=10, progress=False)
    assert "loc" not in pyro.get_param_store()  # the probe made no parameter


def test_the_memory_probe_of_a_joint_estimate_keeps_to_the_budget():
    from pprogen.inference.memory import PeakBytes

    def model(x):
        w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1))
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(w, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("w", dist.Normal(pyro.param("w_loc", torch.zeros(x.shape[1])), 1.0).to_event(1))

    x = torch.randn(2000, 100)
    budget = 8_000_000
    with PeakBytes() as meter:
        evidence = log_marginal(model, guide, x, num_samples=200, khat=False, max_memory=budget)
    assert evidence.joint and meter.peak < 2 * budget
    assert math.isfinite(evidence.log_prob.item())
