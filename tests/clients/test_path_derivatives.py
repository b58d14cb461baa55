"""STL and DReG on every guide idiom: zero guide gradient at the exact posterior, unbiased away from it.

At the exact posterior of the linear-Gaussian model, log p(x, z) - log q(z | x) = log p(x) for every z, so the
path derivative (what STL and DReG keep) is exactly zero, whatever the draws; ``trace`` and ``iwae`` keep the
score term -d log q / d phi as well, which is not. Away from it, DReG's guide gradient has the IWAE gradient's
mean (Tucker et al., 2019, arXiv:1810.04152), which 200 seeds check component by component.
"""

import math

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value

from pprogen.inference import make_elbo
from tests.clients import programs as p
from tests.clients.helpers import flat_grad, guide_parameters, paired_z_scores

IDIOMS = ["pyromodule", "function", "method", "table", "auto_normal"]


def program(idiom: str, x: torch.Tensor, offset: float = 0.0, log_scale_offset: float = 0.0):
    """``(model, guide)`` in one idiom, with the guide at the exact posterior moved by the offsets."""
    encoder = p.exact_encoder(offset, log_scale_offset)
    loc = p.posterior_loc(x) + offset * torch.linspace(-1, 1, x.shape[0] * p.Z_DIM, dtype=p.DTYPE).view(-1, p.Z_DIM)
    std = p.posterior_std() * math.exp(log_scale_offset)
    model = p.linear_gaussian_model()
    if idiom == "pyromodule":
        return model, p.PosteriorGuide(encoder)
    if idiom == "function":
        return model, p.function_guide(encoder)
    if idiom == "method":
        vae = p.linear_gaussian_vae(encoder)
        return vae.model, vae.guide
    if idiom == "table":
        return model, p.table_guide(loc, torch.full((p.Z_DIM,), std, dtype=p.DTYPE))
    if idiom == "auto_normal":
        return model, AutoNormal(model, init_loc_fn=init_to_value(values={"z": loc}), init_scale=std)
    raise AssertionError(idiom)


def guide_gradient(estimator, model, guide, params, x) -> torch.Tensor:
    return flat_grad(estimator(model, guide)(x), params)


def norms_at_the_exact_posterior(name: str, idiom: str, seeds: int) -> list[float]:
    """The guide-gradient norm of estimator ``name`` at the exact posterior (16 data points), one per seed;
    single-particle estimators use 1 particle, importance-weighted ones 8."""
    x = p.sample_linear_gaussian(16)
    model, guide = program(idiom, x)
    params = guide_parameters(guide, x)
    estimator = make_elbo(name, num_particles=1 if name in ("stl", "trace") else 8)
    norms = []
    for seed in range(seeds):
        pyro.set_rng_seed(seed)
        norms.append(guide_gradient(estimator, model, guide, params, x).norm().item())
    return norms


@pytest.mark.parametrize("idiom", IDIOMS)
@pytest.mark.parametrize("name", ["stl", "iwae_dreg"])
def test_path_derivative_vanishes_at_the_exact_posterior(name, idiom):
    for norm in norms_at_the_exact_posterior(name, idiom, seeds=3):
        assert norm < 1e-4, f"{name} guide gradient {norm:.3g} at the exact posterior ({idiom} guide)"


@pytest.mark.parametrize("idiom", IDIOMS)
@pytest.mark.parametrize("name", ["trace", "iwae"])
def test_score_term_is_not_zero_at_the_exact_posterior(name, idiom):
    # the control: the same point with the score term kept has a clearly nonzero guide gradient
    (norm,) = norms_at_the_exact_posterior(name, idiom, seeds=1)
    assert norm > 0.5


def mean_gap(idiom: str, estimator, reference, seeds: int = 200) -> torch.Tensor:
    """Per-component z-scores of the mean difference between two estimators' guide gradients, paired by seed,
    away from the exact posterior (4 data points)."""
    x = p.sample_linear_gaussian(4)
    model, guide = program(idiom, x, offset=0.3, log_scale_offset=0.4)
    params = guide_parameters(guide, x)
    rows: dict[str, list] = {"estimator": [], "reference": []}
    for seed in range(seeds):
        for key, elbo in (("estimator", estimator), ("reference", reference)):
            pyro.set_rng_seed(seed)
            rows[key].append(guide_gradient(elbo, model, guide, params, x))
    return paired_z_scores(torch.stack(rows["estimator"]), torch.stack(rows["reference"]))


@pytest.mark.parametrize("idiom", IDIOMS)
def test_dreg_guide_gradient_is_unbiased_for_the_iwae_gradient(idiom):
    z = mean_gap(idiom, make_elbo("iwae_dreg", num_particles=4), make_elbo("iwae", num_particles=4))
    assert z.max() < 4.5, f"DReG mean differs from IWAE mean by {z.max():.1f} standard errors ({idiom} guide)"


@pytest.mark.parametrize("idiom", IDIOMS)
def test_stl_guide_gradient_is_unbiased_for_the_elbo_gradient(idiom):
    z = mean_gap(idiom, make_elbo("stl"), make_elbo("trace"))
    assert z.max() < 4.5, f"STL mean differs from the ELBO gradient's mean by {z.max():.1f} standard errors"


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_dreg_is_unbiased_for_the_beta_weighted_iwae_gradient(beta):
    # with log w = log p(x|z) + beta (log p(z) - log q(z)) the path derivatives carry (1 - beta) w + beta w^2
    z = mean_gap("function", make_elbo("iwae_dreg", num_particles=4, beta=beta),
                 make_elbo("iwae", num_particles=4, beta=beta))
    assert z.max() < 4.5, f"DReG mean differs from the beta = {beta} IWAE mean by {z.max():.1f} standard errors"
