"""Global latents outside the data plate, counted once: log_marginal and the importance-weighted bounds.

With the exact posterior as the guide, every importance weight equals p(x_1..N), so the joint estimate and
every bound (ELBO, IWAE, Rényi, DReG's value) must equal the closed-form evidence to rounding, whatever the
draws. Counting the global prior once per data point, or dropping the global term, moves them by O(1).
"""

import math

import pytest

from pprogen.inference import log_marginal, make_elbo
from tests.clients import programs as p

SIZES = [4, 8, 16]
HIERARCHICAL_NOISE = math.hypot(p.LOCAL_SCALE, p.LEAF_SCALE)


def normal_normal(num_data):
    x = p.sample_normal_normal(num_data)
    guide = p.normal_normal_guide(*p.global_posterior(x, p.NOISE_SCALE))
    return p.normal_normal_model, guide, x, p.global_log_evidence(x, p.NOISE_SCALE)


def hierarchical(num_data):
    x = p.sample_normal_normal(num_data, seed=1)
    return p.hierarchical_model, p.hierarchical_guide(x), x, p.global_log_evidence(x, HIERARCHICAL_NOISE)


PROGRAMS = {"normal_normal": normal_normal, "hierarchical": hierarchical}


@pytest.mark.parametrize("num_data", SIZES)
@pytest.mark.parametrize("name", PROGRAMS)
def test_log_marginal_is_the_joint_evidence(name, num_data):
    model, guide, x, exact = PROGRAMS[name](num_data)
    evidence = log_marginal(model, guide, x, num_samples=64)
    assert evidence.log_prob.shape == (1,)
    assert evidence.log_prob.item() == pytest.approx(exact, abs=1e-4)
    assert evidence.stderr.item() == pytest.approx(0.0, abs=1e-3)
    assert evidence.ess.item() == pytest.approx(64, rel=1e-3)


@pytest.mark.parametrize("name", PROGRAMS)
def test_log_marginal_says_the_estimate_is_joint(name):
    model, guide, x, _ = PROGRAMS[name](8)
    evidence = log_marginal(model, guide, x, num_samples=16)
    assert evidence.joint is True
    assert evidence.summary()["joint"] is True


ESTIMATORS = [
    ("trace", {}),
    ("stl", {}),
    ("iwae", {"num_particles": 5}),
    ("iwae_dreg", {"num_particles": 5}),
    ("renyi", {"num_particles": 5, "alpha": 0.5}),
    ("renyi", {"num_particles": 5, "alpha": 0.2}),
]


@pytest.mark.parametrize("num_data", [4, 16])
@pytest.mark.parametrize("name", PROGRAMS)
@pytest.mark.parametrize("estimator,kw", ESTIMATORS, ids=[f"{e}-{kw.get('alpha', '')}" for e, kw in ESTIMATORS])
def test_bounds_at_the_exact_posterior_equal_the_evidence(estimator, kw, name, num_data):
    # the global term log p(theta) - log q(theta) is in every bound exactly once
    model, guide, x, exact = PROGRAMS[name](num_data)
    elbo = make_elbo(estimator, **kw)
    for _ in range(3):
        assert elbo.loss(model, guide, x) == pytest.approx(-exact, abs=1e-6)
        assert elbo(model, guide)(x).item() == pytest.approx(-exact, abs=1e-6)
