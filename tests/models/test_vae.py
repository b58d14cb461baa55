import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pprogen
from pprogen.inference import log_marginal, make_elbo
from pprogen.models.vae import LIKELIHOODS


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_every_likelihood_samples_in_its_support_and_trains(likelihood):
    model = pprogen.create_model("vae", x_dim=5, z_dim=2, hidden_dims=(6,), likelihood=likelihood)
    x = model.sample(8)
    if likelihood == "bernoulli":
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    if likelihood == "continuous_bernoulli":
        assert ((x >= 0) & (x <= 1)).all()
    guide = model.default_guide()
    loss_module = make_elbo("trace")(model, guide)
    loss_module(x).backward()
    assert all(p.grad is not None for p in loss_module.parameters())
    if likelihood == "gaussian":
        assert model.log_scale.grad.abs().sum() > 0


def test_mean_samples_are_likelihood_means():
    model = pprogen.create_model("vae", x_dim=4, z_dim=2, hidden_dims=(5,))
    means = model.sample(6, mean=True)
    assert ((means > 0) & (means < 1)).all() and not set(means.unique().tolist()) <= {0.0, 1.0}


def test_reconstruction_decodes_the_guide_draw():
    model = pprogen.create_model("vae", x_dim=4, z_dim=2, hidden_dims=(5,))
    guide = model.default_guide()
    x = model.sample(3)
    pyro.set_rng_seed(5)
    recon = model.reconstruct(x, guide)
    pyro.set_rng_seed(5)
    loc, scale = guide.encode(x)
    z = dist.Normal(loc, scale).sample()
    expected = torch.sigmoid(model.decoder(z))
    assert torch.allclose(recon, expected, atol=1e-6)


def test_conv_vae_keeps_image_shape():
    model = pprogen.create_model("conv_vae", x_shape=(1, 12, 10), z_dim=3, hidden_dims=(16,), channels=(4, 8))
    x = model.sample(2)
    assert x.shape == (2, 1, 12, 10)
    loc, scale = model.default_guide().encode(x)
    assert loc.shape == scale.shape == (2, 3)


@pytest.mark.parametrize("bad", [dict(z_dim=0), dict(hidden_dims=(0,)), dict(likelihood="poisson")])
def test_bad_arguments_raise_clear_errors(bad):
    with pytest.raises(ValueError, match="z_dim|hidden_dims|likelihood"):
        pprogen.create_model("vae", x_dim=4, **bad)


def linear_gaussian_vae():
    """With no hidden layer and a Gaussian likelihood the VAE is factor analysis: exact evidence."""
    torch.set_default_dtype(torch.float64)
    try:
        model = pprogen.create_model("vae", x_dim=3, z_dim=2, hidden_dims=(), likelihood="gaussian")
    finally:
        torch.set_default_dtype(torch.float32)
    model.double()
    with torch.no_grad():
        model.decoder[0].weight.copy_(torch.tensor([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4]]))
        model.decoder[0].bias.copy_(torch.tensor([0.2, -0.1, 0.5]))
        model.log_scale.copy_(torch.tensor([-0.2, -0.5, 0.1]))
    return model


def exact_log_evidence(model, x):
    weight, bias = model.decoder[0].weight, model.decoder[0].bias
    cov = weight @ weight.T + torch.diag(model.log_scale.exp() ** 2)
    return dist.MultivariateNormal(bias, covariance_matrix=cov).log_prob(x)


def exact_posterior_guide(model):
    weight, bias = model.decoder[0].weight, model.decoder[0].bias
    precision = torch.diag(model.log_scale.exp() ** -2)

    def guide(x):
        post_prec = torch.eye(2, dtype=x.dtype, device=x.device) + weight.T @ precision @ weight
        post_cov = torch.linalg.inv(post_prec)
        loc = (x - bias) @ (precision @ weight) @ post_cov
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=post_cov))

    return guide


def test_importance_sampled_evidence_matches_factor_analysis_closed_form():
    model = linear_gaussian_vae()
    x = model.sample(6).detach()
    exact = exact_log_evidence(model, x)
    with torch.no_grad():
        evidence = log_marginal(model, None, x, num_samples=20000)
    assert (evidence.log_prob.double() - exact).abs().max() < 3 * evidence.stderr.max() + 1e-3
    assert (evidence.stderr > 0).all()


def test_exact_posterior_as_proposal_gives_the_evidence_with_zero_variance():
    model = linear_gaussian_vae()
    x = model.sample(5).detach()
    with torch.no_grad():
        evidence = log_marginal(model, exact_posterior_guide(model), x, num_samples=50)
    assert torch.allclose(evidence.log_prob.double(), exact_log_evidence(model, x), atol=1e-4)
    assert evidence.stderr.max() < 1e-3
    assert torch.allclose(evidence.ess, torch.full_like(evidence.ess, 50.0), rtol=1e-3)
    assert math.isclose(evidence.summary()["nll"], -exact_log_evidence(model, x).mean().item(), abs_tol=1e-4)
