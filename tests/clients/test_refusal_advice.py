"""Each case the examples of Pyro brought gets its answer, or a one-line refusal naming the cause and the fix.

- One particle: the estimate is its one log weight; no k-hat (no tail to fit) and no standard error, said so.
- Eight schools (a constant-size plate) handed fewer rows: the plate is named as the cause, in log_marginal and in
  ``fit`` (validation data, minibatches); handed all its rows, the evidence is the quadrature's.
- AIS from Pyro's autoguides with auxiliary sites: started from AutoNormal, AutoDiagonalNormal and
  AutoMultivariateNormal (global latents), the estimate is the quadrature's; a guide it cannot read names those.
- Guide-side subsampling (LDA's idiom): trained, with the loss Pyro's ``Trace_ELBO`` gives on the same seed.
- An enumerated model site under an estimator that does not enumerate: the refusal names ``elbo='enum'``.
- iwae / renyi with no local latent: a warning, at the user's line, that they equal ``trace`` there.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

from pprogen.inference import ais, evaluate, fit, log_marginal, make_elbo, make_guide
from tests.clients.pyro_examples import (
    INDEXED_DATA,
    MEAN_DATA,
    NOISE,
    SCHOOLS_Y,
    indexed,
    mean_and_scale,
    mean_and_scale_log_evidence,
    normal_2d,
    normal_2d_data,
    normal_2d_evidence,
    normal_2d_mode,
    schools,
    schools_log_evidence,
)


def test_one_particle_is_its_log_weight_with_no_khat_and_no_stderr():
    x = normal_2d_data(5, seed=11)
    estimate = log_marginal(normal_2d, None, x, num_samples=1, keep_weights=True)
    assert torch.equal(estimate.log_prob, estimate.log_weights[:, 0])
    assert estimate.khat is None and torch.isnan(estimate.stderr).all() and (estimate.ess == 1).all()
    summary = estimate.summary()
    assert "one sample" in summary["khat_bands"] and math.isnan(summary["mean_is_stderr"])
    assert "one sample" in evaluate(normal_2d, None, x, num_samples=1).summary["khat_bands"]

    def exact_posterior(x):  # every weight is p(x): one particle is the exact evidence
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(normal_2d_mode(x), NOISE / math.sqrt(1 + NOISE**2)).to_event(1))

    one = log_marginal(normal_2d, exact_posterior, x, num_samples=1)
    assert torch.allclose(one.log_prob.double(), normal_2d_evidence(x), atol=1e-4)


def test_eight_schools_names_its_constant_size_plate():
    with pytest.raises(ValueError, match=r"no plate has one entry per row of the 4 rows.*'J' \(size 8\).*constant"):
        log_marginal(schools, None, SCHOOLS_Y[:4], num_samples=10)
    with pytest.raises(ValueError, match=r"plate 'J' has 8 entries whatever the rows.*\(4 here\).*constant-size"):
        log_marginal(schools, None, SCHOOLS_Y[:4], num_samples=10, plate_name="J")
    guide = AutoNormal(schools)
    with pytest.raises(ValueError, match=r"plate 'J' has 8 entries.*constant-size.*validation data of 4 rows"):
        fit(schools, guide, SCHOOLS_Y, valid_data=SCHOOLS_Y[:4], epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"plate 'J' has 8 entries.*constant-size.*minibatches.*batch_size >= 8"):
        fit(schools, guide, SCHOOLS_Y, epochs=1, batch_size=4, progress=False)


def test_eight_schools_evidence_with_all_its_rows_is_the_quadratures():
    with pytest.warns(UserWarning, match="joint estimate"):
        estimate = log_marginal(schools, None, SCHOOLS_Y, num_samples=20000)
    assert abs(estimate.log_prob.item() - schools_log_evidence()) < 4 * estimate.stderr.item() + 0.01


@pytest.mark.parametrize("make", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal,
                                  lambda model: make_guide("auto_normal", model)])
def test_ais_starts_from_autoguides_with_auxiliary_sites(make):
    guide = make(mean_and_scale)
    fit(mean_and_scale, guide, MEAN_DATA, epochs=500, batch_size=10, lr=0.02, progress=False)
    with pytest.warns(UserWarning, match="joint estimate"):
        annealed = ais(mean_and_scale, guide, MEAN_DATA, num_steps=100, num_chains=8)
    assert abs(annealed.log_prob.item() - mean_and_scale_log_evidence(MEAN_DATA)) < 0.2  # within 0.07 in 6 runs


def test_ais_names_the_guides_it_can_start_from():
    def noisy_guide(x):  # an auxiliary draw of its own, moved to z: q(z | x) at other z is unknown
        noise = pyro.sample("noise", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1),
                            infer={"is_auxiliary": True})
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(0.9 * x + 0.1 * noise, event_dim=1))

    with pytest.raises(ValueError, match="'noise' is an auxiliary site.*AutoNormal.*amortized_normal.*guide=None"):
        ais(normal_2d, noisy_guide, normal_2d_data(4), num_steps=2, num_chains=2)


def _subsampled_program(num_docs: int, batch: int):
    """LDA's idiom: the model's plate spans every document and indexes the data by the plate's indices; only the
    guide's plate subsamples (Pyro replays its indices into the model, scaled by N / B)."""

    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        with pyro.plate("documents", num_docs) as ind:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("obs", dist.Normal(z.unsqueeze(-1), 0.5).to_event(1), obs=x[ind])

    def guide(x):
        m = pyro.param("m", torch.tensor(0.1, dtype=x.dtype))
        pyro.sample("mu", dist.Normal(m, 0.3))
        loc = pyro.param("z_loc", torch.zeros(num_docs, dtype=x.dtype))
        with pyro.plate("documents", num_docs, subsample_size=batch) as ind:
            pyro.sample("z", dist.Normal(loc[ind], 0.5))

    return model, guide


def test_guide_side_subsampling_trains_with_pyros_loss():
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 1.0
    model, guide = _subsampled_program(12, 4)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        ours = make_elbo("trace").loss(model, guide, x)
        pyro.set_rng_seed(seed)
        theirs = pyro.infer.Trace_ELBO().loss(model, guide, x)
        assert ours == pytest.approx(theirs, rel=1e-10)
    history = fit(model, guide, x, epochs=60, batch_size=12, lr=0.05, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]
    assert pyro.param("z_loc").detach().sub(x.mean(-1)).abs().mean() < 0.5  # each document's z found its rows


@pytest.mark.parametrize("elbo", ["trace", "analytic", "iwae"])
def test_an_enumerated_model_site_points_to_the_enum_estimator(elbo):
    def guide(x):
        with pyro.plate("components", 2):
            pyro.sample("locs", dist.Normal(torch.tensor([-2.0, 2.0], dtype=x.dtype), 1.0))

    with pytest.raises(ValueError, match=r"'label' is marked for enumeration.*elbo='enum'"):
        fit(indexed, guide, INDEXED_DATA, elbo=elbo, epochs=1, batch_size=5, progress=False)


@pytest.mark.parametrize("elbo", ["iwae", "renyi", "iwae_dreg"])
def test_importance_weighted_bounds_warn_when_no_latent_is_local(elbo):
    def guide(x):
        loc = pyro.param("loc", torch.tensor(1.0, dtype=x.dtype))
        pyro.sample("mu", dist.Normal(loc, 0.3))
        pyro.sample("sigma", dist.LogNormal(torch.tensor(0.0, dtype=x.dtype), 0.3))

    with pytest.warns(UserWarning, match=f"no latent site of the guide sits inside plate 'data', so the {elbo} bound"
                                         ".*equals the trace ELBO") as caught:
        fit(mean_and_scale, guide, MEAN_DATA, elbo=elbo, num_particles=4, epochs=1, batch_size=10, progress=False)
    assert any(w.filename == __file__ for w in caught)  # at the user's call
