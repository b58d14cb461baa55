"""The client suite's closed forms and exact guides, checked with Pyro alone (no pprogen) and by quadrature.

The other client tests compare pprogen against these values; here the values themselves are checked, so a
failure elsewhere points at pprogen and not at the suite.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_value

from tests.clients import programs as p
from tests.clients.helpers import log_mean_exp, pyro_log_weights


def pyro_loss(model, guide, x, elbo=None):
    return (elbo or Trace_ELBO()).loss(model, guide, x)


def exact_linear_gaussian_guides(x):
    """Every idiom's guide at the exact posterior of the linear-Gaussian model on ``x``."""
    loc, std = p.posterior_loc(x), p.posterior_std()
    return {
        "pyromodule": p.PosteriorGuide(p.exact_encoder()),
        "function": p.function_guide(p.exact_encoder()),
        "method": p.linear_gaussian_vae(p.exact_encoder()).guide,
        "table": p.table_guide(loc, torch.full((p.Z_DIM,), std, dtype=p.DTYPE)),
        "auto_normal": AutoNormal(p.linear_gaussian_model(), init_loc_fn=init_to_value(values={"z": loc}),
                                  init_scale=std),
        "auto_diagonal_normal": AutoDiagonalNormal(p.linear_gaussian_model(),
                                                   init_loc_fn=init_to_value(values={"z": loc}), init_scale=std),
        "easyguide": p.LocalEasyGuide(p.linear_gaussian_model()),
    }


@pytest.mark.parametrize("idiom", ["pyromodule", "function", "method", "table", "auto_normal",
                                   "auto_diagonal_normal", "easyguide"])
def test_linear_gaussian_guides_are_exact_for_pyro(idiom):
    # at the exact posterior every draw's log p(x, z) - log q(z | x) is log p(x): Pyro's one-sample ELBO is exact
    x = p.sample_linear_gaussian(10)
    if idiom == "easyguide":
        pyro.param("easy_loc", p.posterior_loc(x))
        pyro.param("easy_scale", torch.full((10, p.Z_DIM), p.posterior_std(), dtype=p.DTYPE))
    guide = exact_linear_gaussian_guides(x)[idiom]
    model = p.linear_gaussian_vae(p.exact_encoder()).model if idiom == "method" else p.linear_gaussian_model()
    for _ in range(3):
        assert pyro_loss(model, guide, x) == pytest.approx(-p.log_evidence(x).sum().item(), abs=1e-6)


def test_linear_gaussian_evidence_by_quadrature():
    # p(x_n) = integral of p(z) p(x_n | z) over a grid around the posterior (+-10 posterior std per dimension)
    x = p.sample_linear_gaussian(3)
    std = p.posterior_std()
    axis = torch.linspace(-10 * std, 10 * std, 801, dtype=p.DTYPE)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, p.Z_DIM)
    cell = (axis[1] - axis[0]).log() * p.Z_DIM
    for row, loc in zip(x, p.posterior_loc(x)):
        z = loc + grid
        log_lik = dist.Normal(z @ p.WEIGHT.T + p.BIAS, p.OBS_SCALE).log_prob(row).sum(1)
        log_joint = dist.Normal(0.0, 1.0).log_prob(z).sum(1) + log_lik
        assert (torch.logsumexp(log_joint, 0) + cell).item() == pytest.approx(p.log_evidence(row).item(), abs=1e-6)


@pytest.mark.parametrize("num_data", [4, 8, 16])
def test_normal_normal_evidence_by_quadrature_and_pyro(num_data):
    x = p.sample_normal_normal(num_data)
    theta = torch.linspace(-12, 12, 200_001, dtype=p.DTYPE)
    log_lik = dist.Normal(theta[:, None], p.NOISE_SCALE).log_prob(x).sum(1)
    log_joint = dist.Normal(0.0, p.PRIOR_SCALE).log_prob(theta) + log_lik
    quadrature = (torch.logsumexp(log_joint, 0) + math.log(theta[1] - theta[0])).item()
    exact = p.global_log_evidence(x, p.NOISE_SCALE)
    assert quadrature == pytest.approx(exact, abs=1e-6)
    guide = p.normal_normal_guide(*p.global_posterior(x, p.NOISE_SCALE))
    assert pyro_loss(p.normal_normal_model, guide, x) == pytest.approx(-exact, abs=1e-6)
    renyi = RenyiELBO(alpha=0.5, num_particles=7)
    assert pyro_loss(p.normal_normal_model, guide, x, renyi) == pytest.approx(-exact, abs=1e-6)


def test_hierarchical_guide_is_exact_for_pyro():
    x = p.sample_normal_normal(6)
    exact = p.global_log_evidence(x, math.hypot(p.LOCAL_SCALE, p.LEAF_SCALE))
    for _ in range(3):
        assert pyro_loss(p.hierarchical_model, p.hierarchical_guide(x), x) == pytest.approx(-exact, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7])
def test_scalar_renyi_bound_by_quadrature(alpha):
    x = torch.tensor([0.3, -1.2, 2.0], dtype=p.DTYPE)
    loc, scale = p.scalar_posterior(x)
    loc, scale = loc + 0.4, 1.5 * scale
    z = torch.linspace(-15, 15, 300_001, dtype=p.DTYPE)[:, None]
    log_integrand = alpha * dist.Normal(loc, scale).log_prob(z) + (1 - alpha) * (
        dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, p.SCALAR_OBS_SCALE).log_prob(x)
    )
    quadrature = ((torch.logsumexp(log_integrand, 0) + math.log(z[1, 0] - z[0, 0])) / (1 - alpha)).sum().item()
    assert p.scalar_renyi_bound(x, loc, scale, alpha) == pytest.approx(quadrature, abs=1e-6)
    # the limit lies below log p(x) for alpha > 0, is log p(x) at alpha = 0, and reaches it at the exact posterior
    evidence = p.scalar_log_evidence(x).sum().item()
    if alpha == 0:
        assert p.scalar_renyi_bound(x, loc, scale, alpha) == pytest.approx(evidence, abs=1e-6)
    else:
        assert p.scalar_renyi_bound(x, loc, scale, alpha) < evidence - 0.01
    exact_loc, exact_scale = p.scalar_posterior(x)
    assert p.scalar_renyi_bound(x, exact_loc, exact_scale, alpha) == pytest.approx(evidence, abs=1e-6)


def test_scalar_renyi_bound_matches_pyros_renyi_elbo_for_many_particles():
    # with local latents only, Pyro's RenyiELBO is the per-datum bound; with many particles it reaches the limit
    x = torch.tensor([0.3, -1.2, 2.0], dtype=p.DTYPE)
    loc, scale = p.scalar_posterior(x)
    loc, scale = loc + 0.4, 1.5 * scale
    guide = p.scalar_guide(loc, scale)
    elbo = RenyiELBO(alpha=0.5, num_particles=200_000, vectorize_particles=True, max_plate_nesting=1)
    assert -elbo.loss(p.scalar_model, guide, x) == pytest.approx(p.scalar_renyi_bound(x, loc, scale, 0.5), abs=0.01)


def test_pyro_importance_weights_reach_the_evidence():
    x = p.sample_linear_gaussian(3)
    loc = p.posterior_loc(x) + 0.1
    guide = p.table_guide(loc, torch.full((p.Z_DIM,), 1.3 * p.posterior_std(), dtype=p.DTYPE))
    estimate, stderr = log_mean_exp(pyro_log_weights(p.linear_gaussian_model(), guide, x, 20_000))
    assert estimate == pytest.approx(p.log_evidence(x).sum().item(), abs=max(4 * stderr, 1e-3))


def test_poisson_factorization_runs_in_pyro_with_full_tables():
    x = p.sample_poisson_factorization(12)
    model, guide = p.poisson_factorization(subsample_size=4)
    loss = Trace_ELBO().loss(model, guide, x)
    assert math.isfinite(loss)
    assert pyro.param("z_loc").shape == (12, p.NUM_FACTORS)


def test_subsampled_exact_guide_loss_is_the_scaled_subsample_evidence_for_pyro():
    program, x = p.subsampled_linear_gaussian(12, 4, exact=True)
    for elbo in (Trace_ELBO(), RenyiELBO(alpha=0.5, num_particles=3, vectorize_particles=True, max_plate_nesting=1)):
        program.seen.clear()
        loss = elbo.loss(program.model, program.guide, x)
        seen = program.last_indices()
        torch.testing.assert_close(seen["model"], seen["guide"])
        assert loss == pytest.approx(-12 / 4 * p.log_evidence(x[seen["guide"]]).sum().item(), abs=1e-6)
