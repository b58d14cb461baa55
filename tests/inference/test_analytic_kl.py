"""The ``analytic`` estimator: each latent site's KL term in closed form where that is exact, sampled elsewhere.

Checked against hand computations with the same draws (the closed-form KL of two Gaussians), the exact ELBO of a
conjugate model, and ``trace`` itself wherever a site must stay sampled. The programs are written as Pyro users
write them: ``pyro.param`` guides, a chain of latents, plates, ``poutine.mask``, Pyro's autoguides.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal

import pprogen
from pprogen.inference.elbo import TraceELBO
from pprogen.inference.estimators import make_elbo
from pprogen.inference.train import Objective, build_loss, fit

X = torch.tensor([0.3, -1.2, 2.0, 0.7])
SIGMA = 0.8


def gauss_kl(m, s, mp, sp):
    """KL(N(m, s^2) || N(mp, sp^2)), by the textbook formula."""
    return torch.log(sp / s) + (s ** 2 + (m - mp) ** 2) / (2 * sp ** 2) - 0.5


def chain_model(x):
    z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
        pyro.sample("x", dist.Normal(z2, SIGMA), obs=x)


def chain_guide(x):
    a = pyro.param("a", torch.tensor(0.4))
    b = pyro.param("b", torch.tensor(0.7), constraint=dist.constraints.positive)
    c = pyro.param("c", torch.full((4,), 0.5))
    d = pyro.param("d", torch.linspace(-1.0, 1.0, 4))
    e = pyro.param("e", torch.full((4,), 0.6), constraint=dist.constraints.positive)
    z1 = pyro.sample("z1", dist.Normal(a, b))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z2", dist.Normal(c * z1 + d, e))


def test_a_chain_of_latents_takes_each_kl_in_closed_form_given_the_draws_before_it():
    pyro.clear_param_store()
    elbo = make_elbo("analytic")
    torch.manual_seed(3)
    loss = elbo.differentiable_loss(chain_model, chain_guide, X)
    assert elbo.last_analytic == ("z1", "z2")
    store = pyro.get_param_store()
    a, b, c, d, e = (store[n].detach() for n in "abcde")
    torch.manual_seed(3)  # the guide's draws, by hand
    z1 = a + b * torch.randn(())
    z2 = c * z1 + d + e * torch.randn(4)
    expected = (dist.Normal(z2, SIGMA).log_prob(X).sum() - gauss_kl(a, b, 0.0, 1.0)
                - gauss_kl(c * z1 + d, e, z1, 1.0).sum())
    assert torch.allclose(-loss.detach(), expected, rtol=1e-6, atol=1e-6)


def test_its_mean_is_the_exact_elbo_of_a_conjugate_model():
    m, s = torch.tensor(0.2), torch.tensor(0.5)

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z, SIGMA), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(pyro.param("m", m), pyro.param("s", s, constraint=dist.constraints.positive)))

    n = X.shape[0]
    exact = (-n * math.log(SIGMA * math.sqrt(2 * math.pi)) - (((X - m) ** 2).sum() + n * s ** 2) / (2 * SIGMA ** 2)
             - gauss_kl(m, s, 0.0, 1.0))
    pyro.clear_param_store()
    torch.manual_seed(0)
    elbo = make_elbo("analytic", num_particles=20000)
    draws = torch.stack([-elbo.differentiable_loss(model, guide, X).detach() for _ in range(20)])
    assert elbo.last_analytic == ("z",)
    assert abs(draws.mean() - exact) < 5 * draws.std() / math.sqrt(20) + 1e-6


def test_a_guide_that_draws_the_latents_in_another_order_stays_sampled():
    def mean_field(x):  # z2 first: its density must not be replaced by a KL given a z1 drawn after it
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z2", dist.Normal(pyro.param("d", torch.zeros(4)), 1.0))
        pyro.sample("z1", dist.Normal(pyro.param("a", torch.tensor(0.0)), 1.0))

    values, elbos = {}, {}
    for name in ("analytic", "trace"):
        pyro.clear_param_store()
        elbos[name] = make_elbo(name)
        torch.manual_seed(5)
        values[name] = elbos[name].differentiable_loss(chain_model, mean_field, X)
    assert elbos["analytic"].last_analytic == ()
    assert torch.equal(values["analytic"], values["trace"])


def test_sites_without_a_closed_form_or_under_a_mask_stay_sampled_and_the_rest_does_not():
    def model(x):
        rate = pyro.sample("rate", dist.Gamma(2.0, 2.0))  # no KL(LogNormal || Gamma) in torch
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with poutine.mask(mask=torch.tensor(True)):
            shift = pyro.sample("shift", dist.Normal(0.0, 2.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc + shift, 1.0 / rate), obs=x)

    def guide(x):
        pyro.sample("rate", dist.LogNormal(pyro.param("r", torch.tensor(0.1)), 0.3))
        pyro.sample("loc", dist.Normal(pyro.param("l", torch.tensor(0.2)), 0.4))
        pyro.sample("shift", dist.Normal(pyro.param("h", torch.tensor(-0.1)), 0.5))

    pyro.clear_param_store()
    elbo = make_elbo("analytic")
    torch.manual_seed(2)
    loss = elbo.differentiable_loss(model, guide, X)
    assert elbo.last_analytic == ("loc",)
    torch.manual_seed(2)
    rate = dist.LogNormal(torch.tensor(0.1), 0.3).rsample()
    loc = dist.Normal(torch.tensor(0.2), 0.4).rsample()
    shift = dist.Normal(torch.tensor(-0.1), 0.5).rsample()
    expected = (dist.Normal(loc + shift, 1.0 / rate).log_prob(X).sum()
                + dist.Gamma(2.0, 2.0).log_prob(rate) - dist.LogNormal(torch.tensor(0.1), 0.3).log_prob(rate)
                - gauss_kl(torch.tensor(0.2), torch.tensor(0.4), 0.0, 1.0)
                + dist.Normal(0.0, 2.0).log_prob(shift) - dist.Normal(torch.tensor(-0.1), 0.5).log_prob(shift))
    assert torch.allclose(-loss.detach(), expected, rtol=1e-6, atol=1e-6)


def test_a_per_datum_parameter_table_under_a_data_scale_takes_the_closed_form():
    def model(x):
        with pyro.plate("rows", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.linspace(-1, 1, 12).reshape(4, 3))
        std = pyro.param("std", torch.full((4, 3), 0.3), constraint=dist.constraints.positive)
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, std).to_event(1))

    pyro.clear_param_store()
    scale = 2.5
    elbo = make_elbo("analytic", num_particles=4000)
    torch.manual_seed(0)
    with poutine.scale(scale=scale):
        value = elbo.differentiable_loss(model, guide, X).detach()
    assert elbo.last_analytic == ("z",)
    loc, std = pyro.param("loc").detach(), pyro.param("std").detach()
    exact_lik = (dist.Normal(loc.sum(-1), 1.0).log_prob(X) - std.pow(2).sum(-1) / 2).sum()
    exact = -scale * (exact_lik - gauss_kl(loc, std, 0.0, 1.0).sum())
    assert abs(value - exact) < 0.01 * abs(exact)


def test_an_autoguide_with_auxiliary_sites_stays_sampled_and_equals_trace():
    def model(x):
        with pyro.plate("rows", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)

    pyro.clear_param_store()
    guide = AutoNormal(model)  # z_unconstrained (auxiliary) and a Delta at z: no closed form to take
    guide(X)  # its parameters, made (and initialised from random draws) before the seeded comparison
    values, elbos = {}, {}
    for name in ("analytic", "trace"):
        elbos[name] = make_elbo(name)
        torch.manual_seed(0)
        values[name] = elbos[name].differentiable_loss(model, guide, X)
    assert elbos["analytic"].last_analytic == ()
    assert torch.equal(values["analytic"], values["trace"])


def test_stl_and_the_closed_form_do_not_combine():
    with pytest.raises(ValueError, match="stl and analytic_kl do not combine"):
        TraceELBO(stl=True, analytic_kl=True)


def test_the_analytic_estimator_is_fits_default_and_trains_a_vae():
    assert Objective().elbo == "analytic"
    torch.manual_seed(0)
    x = (torch.rand(64, 8) < 0.3).float()
    model = pprogen.create_model("vae", x_dim=8, z_dim=2, hidden_dims=(16,))
    guide = model.default_guide()
    loss_module = build_loss(model, guide)
    loss_module(x[:8])
    assert loss_module.elbo.last_analytic == ("z",)
    history = fit(model, guide, x, epochs=3, batch_size=16, lr=1e-2, progress=False)
    assert history.records[-1]["train_loss"] < history.records[0]["train_loss"]
