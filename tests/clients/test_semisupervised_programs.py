"""Kingma et al.'s M2 written as Pyro's SS-VAE writes it: a guide that enumerates the label of unlabelled rows.

- ``fit(elbo="enum")`` takes the same steps as Pyro's ``SVI`` with ``TraceEnum_ELBO(max_plate_nesting=1)`` on the
  same draws (the random state at each step's guide call replayed into Pyro's step), labelled and unlabelled.
- The enumerated-label ELBO is the sum over the label written out by hand, at the draws of z the guide made.
- log_marginal sums the guide's label exactly: each particle's weight is :math:`\\sum_y p(x, y, z_y) / q(z_y | x, y)`
  (checked at one particle against the hand-written sum), and the estimate lies within its standard error of the
  evidence computed by summing the label and integrating the 2-d latent on a grid; labelled rows give log p(x, y).
"""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO

from pprogen.inference import ais, fit, log_marginal, make_elbo
from tests.clients.helpers import recording_states
from tests.clients.pyro_programs_more import (
    SemiSupervised,
    enumerated_elbo,
    enumerated_log_weight,
    semisupervised_data,
    semisupervised_log_evidence,
)

pytestmark = pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites configured for enumeration")

ROWS, EPOCHS = 8, 8


def recording_draws(guide, seen: dict):
    """The guide, keeping the latent z it drew at its last call (enumerated label dims included)."""

    def recorded(*args, **kwargs):
        with poutine.trace() as tracer:
            guide(*args, **kwargs)
        seen["z"] = tracer.trace.nodes["z"]["value"].detach()

    return recorded


@pytest.mark.parametrize("labelled", [False, True], ids=["unlabelled", "labelled"])
def test_fit_takes_pyros_svi_steps_on_the_same_draws(labelled):
    x, y = semisupervised_data(ROWS)
    program, states = SemiSupervised(), []
    condition = {"ys": program.labels(y)} if labelled else None
    history = fit(program.model, recording_states(program.enumerated_guide(), states), x, condition=condition,
                  elbo="enum", epochs=EPOCHS, batch_size=ROWS, lr=0.05, seed=3, progress=False)
    ours = [loss * ROWS for loss in history.train_loss]  # full batch: one step an epoch, rows in their order

    pyro.clear_param_store()
    program = SemiSupervised()  # the same initial networks
    svi = SVI(program.model, program.enumerated_guide(), pyro.optim.Adam({"lr": 0.05}),
              TraceEnum_ELBO(max_plate_nesting=1))
    theirs = []
    for state in states[-EPOCHS:]:
        torch.set_rng_state(state)
        theirs.append(svi.step(x, **(condition or {})))
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-9, (ours, theirs)
    assert ours[-1] < ours[0] - 3  # it trains


@pytest.mark.parametrize("one_hot", [True, False], ids=["one_hot", "categorical"])
def test_enumerated_label_elbo_is_the_sum_over_the_label_by_hand(one_hot):
    x, _ = semisupervised_data(5, seed=1)
    program, seen = SemiSupervised(one_hot), {}
    loss = make_elbo("enum").loss(program.model, recording_draws(program.enumerated_guide(), seen), x)
    assert seen["z"].shape == (3, 5, 2)  # one draw per label and row
    assert loss == pytest.approx(-enumerated_elbo(program, x, seen["z"]).sum().item(), rel=1e-12)


@pytest.mark.parametrize("one_hot", [True, False], ids=["one_hot", "categorical"])
def test_a_weight_sums_the_guides_label_exactly(one_hot):
    x, _ = semisupervised_data(5, seed=1)
    program, seen = SemiSupervised(one_hot), {}
    estimate = log_marginal(program.model, recording_draws(program.enumerated_guide(), seen), x, num_samples=1)
    assert estimate.vectorized and seen["z"].shape == (3, 1, 5, 2)  # (label, particle, row, latent)
    by_hand = enumerated_log_weight(program, x, seen["z"][:, 0])
    torch.testing.assert_close(estimate.log_prob.double(), by_hand, rtol=0, atol=1e-5)


@pytest.mark.parametrize("labelled", [False, True], ids=["unlabelled", "labelled"])
def test_evidence_is_the_label_summed_and_the_latent_integrated_on_a_grid(labelled):
    x, y = semisupervised_data(6, seed=1)
    program = SemiSupervised()
    exact = semisupervised_log_evidence(program, x, y if labelled else None)
    condition = {"ys": program.labels(y)} if labelled else None
    estimate = log_marginal(program.model, program.enumerated_guide(), x, num_samples=4000, condition=condition)
    error = (estimate.log_prob.double() - exact).abs()
    assert (error <= 4 * estimate.stderr.double()).all(), (error, estimate.stderr)  # |z| < 2.7 in 6 seeds


def test_the_guides_enumerated_label_makes_the_weights_steadier_than_sampling_it():
    """Enumerating the label instead of drawing it removes its share of the spread of the weights."""
    x, _ = semisupervised_data(6, seed=1)
    program = SemiSupervised()
    enumerated = log_marginal(program.model, program.enumerated_guide(), x, num_samples=2000)
    sampled = log_marginal(program.model, program.guide, x, num_samples=2000)  # Pyro's Trace_ELBO view: y drawn
    assert (enumerated.ess > sampled.ess).all() and enumerated.ess.sum() > 2 * sampled.ess.sum(), (enumerated.ess,
                                                                                                sampled.ess)


def test_annealing_refuses_the_guides_discrete_label_in_one_line():
    x, _ = semisupervised_data(4, seed=1)
    program = SemiSupervised()
    with pytest.raises(ValueError, match=r"^latent site 'y' is discrete.*infer=\{'enumerate': 'parallel'\} in the "
                                         r"model[^\n]*$"):
        ais(program.model, program.enumerated_guide(), x, num_steps=3, num_chains=2)


def test_a_label_the_guide_enumerates_beside_one_the_model_enumerates_is_exact():
    """A plain-function guide enumerating y (exact q(z | x, y)) beside a site c the model enumerates, in a plate of
    another name: the model's enumerated dims sit left of the guide's, and every weight is exactly
    log p(x, w) = log sum_y pi_y N(x; mu_y, sqrt 2) + log sum_c p_c N(w; 3c, 1)."""
    import math

    import pyro.distributions as dist
    from pyro.infer import config_enumerate

    weights, means = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([-2.0, 0.0, 3.0])

    def model(d):
        with pyro.plate("rows", d.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
            y = pyro.sample("y", dist.Categorical(weights))
            z = pyro.sample("z", dist.Normal(means[y], 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=d[:, 0])
            pyro.sample("w", dist.Normal(3 * c, 1.0), obs=d[:, 1])

    @config_enumerate
    def guide(d):
        with pyro.plate("rows", d.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=torch.zeros(d.shape[0], 3)))
            pyro.sample("z", dist.Normal((d[:, 0] + means[y]) / 2, math.sqrt(0.5)))

    d = 2 * torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    exact = (torch.logsumexp(weights.log() + dist.Normal(means, math.sqrt(2)).log_prob(d[:, :1]), -1)
             + torch.logsumexp(torch.tensor([0.7, 0.3]).log() + dist.Normal(torch.tensor([0.0, 3.0]), 1.0)
                               .log_prob(d[:, 1:]), -1))
    for num_samples in (1, 4):
        estimate = log_marginal(model, guide, d, num_samples=num_samples)
        torch.testing.assert_close(estimate.log_prob, exact, rtol=0, atol=1e-5)
