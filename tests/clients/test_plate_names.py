"""A per-datum plate not named "data": ``pyro.plate("batch", N)``.

Every entry point finds the per-datum plate by itself when it is unambiguous and takes ``plate_name=``.
With the exact posterior as the guide every importance weight and every ELBO term is log p(x_n), so the
per-datum evidence, the bounds and the losses ``fit`` reports all have closed forms.
"""

import pytest
import torch
from pyro import poutine

from pprogen.inference import fit, log_marginal, make_elbo, make_guide
from tests.clients import programs as p


def program(plate_name="batch"):
    return p.linear_gaussian_model(plate_name), p.PosteriorGuide(p.exact_encoder(), plate_name=plate_name)


@pytest.mark.parametrize("kw", [{}, {"plate_name": "batch"}], ids=["found", "named"])
def test_log_marginal_gives_one_row_per_datum(kw):
    model, guide = program()
    x = p.sample_linear_gaussian(10)
    evidence = log_marginal(model, guide, x, num_samples=32, **kw)
    assert evidence.log_prob.shape == (10,)
    assert evidence.joint is False
    torch.testing.assert_close(evidence.log_prob.double(), p.log_evidence(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("plate_name,kw", [("data", {}), ("batch", {}), ("batch", {"plate_name": "batch"})],
                         ids=["data-control", "batch-found", "batch-named"])
def test_fit_reports_the_per_datum_loss(plate_name, kw):
    # a learning rate of 1e-7 leaves the exact guide in place, so the train and valid losses are exactly
    # -mean log p(x_n) over their rows, batch by batch (3 minibatches of 8 rows here)
    model, guide = program(plate_name)
    train, valid = p.sample_linear_gaussian(24), p.sample_linear_gaussian(16, seed=1)
    # the sampled-KL estimator: at the exact posterior log p(x, z) - log q(z) is log p(x) for every draw (the
    # default closed-form KL is exact only in expectation)
    history = fit(model, guide, train, valid_data=valid, epochs=2, batch_size=8, lr=1e-7, progress=False,
                  elbo="trace", **kw)
    assert history.train_loss[-1] == pytest.approx(-p.log_evidence(train).mean().item(), abs=1e-3)
    assert history.valid_loss[-1] == pytest.approx(-p.log_evidence(valid).mean().item(), abs=1e-3)


@pytest.mark.parametrize("kw", [{}, {"plate_name": "batch"}], ids=["found", "named"])
def test_make_guide_amortizes_over_the_batch_plate(kw):
    model, _ = program()
    x = p.sample_linear_gaussian(10).float()  # the amortized guide's networks are float32
    guide = make_guide("amortized_normal", model, hidden_dims=(16,), **kw)
    guide_trace = poutine.trace(guide).get_trace(x)
    site = guide_trace.nodes["z"]
    assert [f.name for f in site["cond_indep_stack"]] == ["batch"]
    assert site["value"].shape == (10, p.Z_DIM)
    # an untrained guide is a fine proposal for this 2-d posterior: the evidence comes out within its error bar
    evidence = log_marginal(model, guide, x, num_samples=4000, plate_name="batch")
    error = (evidence.log_prob.double() - p.log_evidence(x.double())).abs()
    assert (error < 5 * evidence.stderr.double() + 0.02).all(), error


ESTIMATORS = [("trace", {}), ("stl", {}), ("iwae", {"num_particles": 4}), ("iwae_dreg", {"num_particles": 4}),
              ("renyi", {"num_particles": 4, "alpha": 0.5})]


@pytest.mark.parametrize("kw", [{}, {"plate_name": "batch"}], ids=["found", "named"])
@pytest.mark.parametrize("estimator,options", ESTIMATORS, ids=[e for e, _ in ESTIMATORS])
def test_make_elbo_on_the_batch_plate_is_the_evidence_at_the_exact_posterior(estimator, options, kw):
    model, guide = program()
    x = p.sample_linear_gaussian(10)
    elbo = make_elbo(estimator, **options, **kw)
    assert elbo.loss(model, guide, x) == pytest.approx(-p.log_evidence(x).sum().item(), abs=1e-6)
