"""Sequence programs written Pyro's way, with ``pyro.markov``, against their closed forms.

- A linear-Gaussian state-space model in the deep Markov model's idiom (``pyro.module`` networks, a mask per step
  for sequences of different lengths): log_marginal and ais against the Kalman filter's evidence, and ``fit`` with
  every estimator.
- A hidden Markov model whose states are enumerated inside ``pyro.markov``: log_marginal against the forward
  algorithm (Pyro recycles the enumerated dims along the chain; the sum must still treat each state as its own).
"""

import pyro
import pytest
import torch

from pprogen.inference import ais, fit, log_marginal, make_elbo
from pprogen.inference.estimators import ELBOS
from tests.clients.pyro_examples import (
    StateSpace,
    forward_log_evidence,
    hmm,
    kalman_log_evidence,
    state_space_data,
)


def test_state_space_evidence_is_the_kalman_filters():
    program = StateSpace()
    x, lengths = state_space_data(6)
    exact = kalman_log_evidence(x, lengths)
    estimate = log_marginal(program.model, program.guide, x, num_samples=4000, condition={"lengths": lengths})
    error = (estimate.log_prob.double() - exact).abs()
    assert (error <= 4 * estimate.stderr.double() + 0.01).all(), (error, estimate.stderr)
    assert estimate.vectorized


def test_state_space_evidence_by_annealing_from_the_guide_and_from_the_prior():
    program = StateSpace()
    x, lengths = state_space_data(6)
    exact = kalman_log_evidence(x, lengths)
    for guide, tolerance in ((program.guide, 0.2), (None, 0.3)):  # 32 chains: errors up to 0.1 / 0.22 in 6 seeds
        annealed = ais(program.model, guide, x, num_steps=200, num_chains=32, condition={"lengths": lengths})
        assert (annealed.log_prob.double() - exact).abs().max() < tolerance


@pytest.mark.parametrize("elbo", sorted(ELBOS))
def test_fit_trains_the_state_space_model_with_every_estimator(elbo):
    program = StateSpace()
    x, lengths = state_space_data(32, seed=1)
    history = fit(program.model, program.guide, x, condition={"lengths": lengths}, elbo=elbo, num_particles=2,
                  epochs=3, batch_size=16, lr=0.01, progress=False)
    assert all(torch.isfinite(torch.tensor(history.train_loss)))


def test_the_lean_trace_estimator_is_pyros_on_a_markov_program():
    program = StateSpace()
    x, lengths = state_space_data(8)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        ours = make_elbo("trace").loss(program.model, program.guide, x, lengths)
        pyro.set_rng_seed(seed)
        theirs = pyro.infer.Trace_ELBO().loss(program.model, program.guide, x, lengths)
        assert ours == pytest.approx(theirs, rel=1e-10)


def test_hmm_evidence_with_enumerated_states_is_the_forward_algorithms():
    x = 2.0 * torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def no_latents(x):  # every latent is enumerated in the model: the guide has nothing to sample
        pass

    exact = forward_log_evidence(x)
    for guide in (None, no_latents):
        estimate = log_marginal(hmm, guide, x, num_samples=3)
        assert torch.allclose(estimate.log_prob.double(), exact, atol=1e-4)
