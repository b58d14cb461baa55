"""The per-datum refined proposal of ``log_marginal(..., refine=N)``: checked against closed-form evidence of
linear-Gaussian programs written as Pyro users write them, and against the moved density in closed form."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pprogen
from pprogen.inference import log_marginal, make_guide
from pprogen.inference.refine import Refiner

SIGMA = 0.5
# orthogonal columns: the posterior of z given x is a diagonal Normal, inside the refined family
W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
B = torch.tensor([0.3, -0.2, 0.1])


def linear_gaussian(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)


def exact_evidence(x):
    covariance = W @ W.T + SIGMA**2 * torch.eye(3)
    return dist.MultivariateNormal(B, covariance).log_prob(x)


def data(n=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=generator)
    return z @ W.T + B + SIGMA * torch.randn(n, 3, generator=generator)


def encoder_guide(x):
    """A plain-function guide with an encoder registered by pyro.module and a poor, too-wide fixed scale."""
    encoder = pyro.module("encoder", ENCODER)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(encoder(x), 1.5).to_event(1))


ENCODER = nn.Linear(3, 2)


@pytest.fixture(autouse=True)
def fresh_encoder():
    pyro.clear_param_store()
    torch.manual_seed(1)
    ENCODER.reset_parameters()


def test_refined_proposal_reaches_the_exact_posterior_and_the_exact_evidence():
    x = data()
    exact = exact_evidence(x)
    pyro.set_rng_seed(0)
    plain = log_marginal(linear_gaussian, encoder_guide, x, num_samples=500, khat=False)
    pyro.set_rng_seed(0)
    refined = log_marginal(linear_gaussian, encoder_guide, x, num_samples=500, khat=False, refine=300,
                           refine_lr=0.1)
    assert (plain.log_prob - exact).abs().mean() > 0.1  # the guide itself proposes poorly: K = 500 falls short
    assert torch.allclose(refined.log_prob, exact, atol=0.04)  # the posterior is in the refined family
    assert refined.stderr.max() < 0.04 and refined.refine == 300 and refined.summary()["refine_steps"] == 300


def test_the_moved_site_density_is_the_affine_image_of_the_guides():
    loc, scale = torch.tensor([[0.5, -1.0], [2.0, 0.3]]), torch.tensor([[1.0, 0.5], [0.2, 2.0]])

    def guide(x):
        with pyro.plate("particles", 4, dim=-2), pyro.plate("data", 2):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    refiner = Refiner("data", particle_dim=-2, like=torch.zeros(2))
    with pyro.poutine.trace() as first, refiner:
        guide(None)
    centre = refiner.centres["z"]
    assert centre.shape == (1, 2, 2) and refiner.shifts["z"].shape == (1, 2, 2)
    assert torch.allclose(first.trace.nodes["z"]["fn"].log_prob(first.trace.nodes["z"]["value"]),
                          dist.Normal(loc, scale).to_event(1).log_prob(first.trace.nodes["z"]["value"]), atol=1e-5)
    with torch.no_grad():
        refiner.shifts["z"].copy_(torch.tensor([[[0.1, 0.2], [-0.3, 0.4]]]))
        refiner.log_scales["z"].copy_(torch.tensor([[[0.5, -0.2], [0.0, 0.7]]]))
    with pyro.poutine.trace() as tracer, refiner:
        guide(None)
    site = tracer.trace.nodes["z"]
    s = refiner.log_scales["z"].exp()
    moved = dist.Normal(centre + refiner.shifts["z"] + s * (loc - centre), s * scale).to_event(1)
    assert torch.allclose(site["fn"].log_prob(site["value"]), moved.log_prob(site["value"]), atol=1e-4)
    many = pyro.poutine.trace(lambda: pyro.sample("z", site["fn"].expand((2000, 4, 2)))).get_trace().nodes["z"]
    draws = many["value"].reshape(-1, 2, 2)
    assert ((draws.mean(0) - moved.mean[0]).abs() < 4 * moved.stddev[0] / draws.shape[0] ** 0.5).all()
    assert torch.allclose(draws.std(0), moved.stddev[0], rtol=0.1)


def test_refinement_leaves_guide_and_model_untouched():
    x = data()
    before = {k: v.detach().clone() for k, v in ENCODER.state_dict().items()}
    log_marginal(linear_gaussian, encoder_guide, x, num_samples=16, khat=False, refine=20)
    assert all(torch.equal(before[k], v) for k, v in ENCODER.state_dict().items())
    assert all(p.grad is None for p in ENCODER.parameters())


class HierarchicalGuide(nn.Module):
    """A class-method guide: z1 from the encoder, z2 given z1 (a two-layer story's guide, as in an HVAE)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 1)
        self.link = nn.Linear(1, 1)

    def guide(self, x):
        pyro.module("hierarchical", self)
        with pyro.plate("rows", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(self.encoder(x), 1.0).to_event(1))
            pyro.sample("z2", dist.Normal(self.link(z1), 1.0).to_event(1))


def two_layer(x):
    with pyro.plate("rows", x.shape[0]):
        z1 = pyro.sample("z1", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        z2 = pyro.sample("z2", dist.Normal(0.8 * z1, 0.6).to_event(1))
        pyro.sample("x", dist.Normal(torch.cat([z1, z2, z1 - z2], -1), SIGMA).to_event(1), obs=x)


def test_a_hierarchical_class_method_guide_refines_both_sites_and_the_second_sees_the_moved_first():
    a = torch.tensor([[1.0, 0.0], [0.8, 0.6]])  # (z1, z2) = a @ (e1, e2)
    mix = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    covariance = mix @ a @ a.T @ mix.T + SIGMA**2 * torch.eye(3)
    x = dist.MultivariateNormal(torch.zeros(3), covariance).sample((10,))
    exact = dist.MultivariateNormal(torch.zeros(3), covariance).log_prob(x)
    guide = HierarchicalGuide()
    pyro.set_rng_seed(0)
    plain = log_marginal(two_layer, guide.guide, x, num_samples=500, khat=False)
    pyro.set_rng_seed(0)
    refined = log_marginal(two_layer, guide.guide, x, num_samples=500, khat=False, refine=300, refine_lr=0.1)
    assert (refined.log_prob - exact).abs().mean() < (plain.log_prob - exact).abs().mean() / 3
    assert (refined.log_prob - exact).abs().max() < 0.05

    refiner = Refiner("rows", particle_dim=-2, like=x)
    with pyro.plate("particles", 3, dim=-2), pyro.poutine.trace() as tracer, refiner:
        guide.guide(x)
    assert refiner.sites == ["z1", "z2"]
    nodes = tracer.trace.nodes
    with torch.no_grad():
        assert torch.allclose(nodes["z2"]["fn"].base_dist.base_dist.loc, guide.link(nodes["z1"]["value"]))


def test_a_subsampled_plate_with_a_per_datum_table_refines_each_minibatch():
    x = data(n=8)
    exact = exact_evidence(x)

    def model(x):
        with pyro.plate("data", x.shape[0], subsample_size=4) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x[idx])

    def guide(x):
        loc = pyro.param("loc", torch.zeros(x.shape[0], 2))
        with pyro.plate("data", x.shape[0], subsample_size=4) as idx:
            pyro.sample("z", dist.Normal(loc[idx], 1.0).to_event(1))

    pyro.set_rng_seed(0)
    refined = log_marginal(model, guide, x, num_samples=500, khat=False, refine=300, refine_lr=0.1)
    assert torch.allclose(refined.log_prob, exact, atol=0.04)


def zoo_pairs():
    hvae = pprogen.create_model("hvae", x_dim=6, z_dims=[3, 2], hidden_dims=[8], top_hidden_dims=[4])
    vae = pprogen.create_model("vae", x_dim=6, z_dim=2, hidden_dims=[8])
    return [("hvae", hvae, hvae.default_guide()), ("vae_iaf", vae, make_guide("amortized_iaf", vae))]


@pytest.mark.parametrize("name", ["hvae", "vae_iaf"])
def test_a_zoo_hvae_and_an_iaf_guide_refine(name):
    _, model, guide = next(p for p in zoo_pairs() if p[0] == name)
    x = torch.bernoulli(torch.full((5, 6), 0.4))
    pyro.set_rng_seed(0)
    plain = log_marginal(model, guide, x, num_samples=300, khat=False)
    pyro.set_rng_seed(0)
    refined = log_marginal(model, guide, x, num_samples=300, khat=False, refine=100)
    assert refined.log_prob.isfinite().all()
    assert refined.log_prob.mean() > plain.log_prob.mean() - 3 * plain.stderr.mean()


@pytest.mark.parametrize("kwargs, message", [
    ({"refine": -1}, "refine is a number of Adam steps"),
    ({"refine": True}, "refine is a number of Adam steps"),
    ({"refine": 5, "refine_particles": 0}, "refine_particles must be a positive integer"),
    ({"refine": 5, "refine_lr": 0.0}, "refine_lr positive"),
])
def test_bad_refine_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        log_marginal(linear_gaussian, encoder_guide, data(), **kwargs)


def test_refine_without_a_guide_or_with_a_global_latent_is_refused():
    x = data()
    with pytest.raises(ValueError, match="there is no guide"):
        log_marginal(linear_gaussian, None, x, refine=5)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(torch.as_tensor(mu).unsqueeze(-1) * torch.ones(3), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.warns(UserWarning, match="joint"), pytest.raises(ValueError, match="'mu' outside the 'data' plate"):
        log_marginal(model, guide, x, refine=5)


def test_a_guide_with_only_discrete_sites_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c.unsqueeze(-1) * torch.ones(3), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="no real-valued guide site"):
        log_marginal(model, guide, data(), refine=5)
    assert math.isfinite(log_marginal(model, guide, data(), num_samples=10).log_prob.sum().item())
