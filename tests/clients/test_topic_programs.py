"""Latent Dirichlet allocation written as Pyro's example writes it: word topics enumerated in a plate nested inside
the documents plate, ``topic_words[word_topics]``, an amortized guide on each document's topic weights.

- Each word's topic is summed within its own entry of the ``words`` plate, and the words multiplied: with the topic
  weights given, log_marginal is exactly :math:`\\log p(w_d, \\theta_d) = \\log \\mathrm{Dir}(\\theta_d) + \\sum_n
  \\log \\sum_k \\theta_{dk} \\phi_{k w_{dn}}`; with them latent (the prior or a Dirichlet guide proposing), it lies
  within its standard error of the brute-force sum over every assignment of topics to words of Dirichlet moments.
- A corpus-wide genre outside every plate, enumerated in the model, is summed in the joint estimate.
- Pyro's own guide, a ``Delta`` on the topic weights, is refused in one line naming the site and the fix.
- ``fit(elbo="enum")`` takes the same steps as Pyro's ``SVI`` with ``TraceEnum_ELBO(max_plate_nesting=2)`` on the
  same draws, with fixed topics and with Pyro's global topic latents.
"""

import pyro
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO

from pprogen.inference import ais, evaluate, fit, log_marginal
from tests.clients.helpers import recording_states
from tests.clients.pyro_programs_more import (
    DOC_PRIOR,
    LDA_DATA,
    TopicModel,
    genre_log_evidence,
    lda_log_evidence,
    lda_log_joint,
)

DOCUMENTS, EPOCHS = LDA_DATA.shape[0], 8
REFUSED = r"^guide site 'doc_topics' is a point mass[^\n]*in place of log p\(x\)[^\n]*guide=None[^\n]*$"


@pytest.mark.parametrize("num_samples", [1, 3])
def test_word_topics_are_summed_within_their_nested_plate(num_samples):
    program = TopicModel()
    doc_topics = torch.distributions.Dirichlet(DOC_PRIOR).sample((DOCUMENTS,))
    estimate = log_marginal(program.model, None, LDA_DATA, num_samples=num_samples,
                            condition={"doc_topics": doc_topics})  # every latent given or enumerated: exact
    torch.testing.assert_close(estimate.log_prob.double(), lda_log_joint(LDA_DATA, doc_topics), rtol=0, atol=1e-5)


@pytest.mark.parametrize("proposal", ["prior", "dirichlet_guide"])
def test_document_evidence_is_the_sum_over_every_assignment_of_word_topics(proposal):
    program = TopicModel()
    exact = lda_log_evidence(LDA_DATA)
    guide = None if proposal == "prior" else program.guide
    estimate = log_marginal(program.model, guide, LDA_DATA, num_samples=4000)
    assert estimate.vectorized and not estimate.joint
    error = (estimate.log_prob.double() - exact).abs()
    assert (error <= 4 * estimate.stderr.double() + 0.005).all(), (error, estimate.stderr)


def test_a_corpus_wide_genre_is_summed_out_in_the_joint_estimate():
    program = TopicModel(genre=True)
    exact = genre_log_evidence(LDA_DATA)
    for guide in (None, program.guide):
        with pytest.warns(UserWarning, match="site 'genre' sits outside the 'documents' plate.*joint estimate"):
            estimate = log_marginal(program.model, guide, LDA_DATA, num_samples=2000)
        assert estimate.joint and estimate.log_prob.shape == (1,)
        assert abs(estimate.log_prob.item() - exact) <= 4 * estimate.stderr.item() + 0.02, (estimate, exact)


def test_pyros_point_mass_guide_on_document_topics_is_refused_in_one_line():
    program = TopicModel(point_mass=True)
    for call in (lambda: log_marginal(program.model, program.guide, LDA_DATA, num_samples=10),
                 lambda: evaluate(program.model, program.guide, LDA_DATA, num_samples=10),
                 lambda: ais(program.model, program.guide, LDA_DATA, num_steps=2, num_chains=2)):
        with pytest.raises(ValueError, match=REFUSED):
            call()


@pytest.mark.parametrize("fixed_topics", [True, False], ids=["fixed_topics", "global_topics"])
def test_fit_takes_pyros_svi_steps_on_the_same_draws(fixed_topics):
    program, states = TopicModel(fixed_topics), []
    history = fit(program.model, recording_states(program.guide, states), LDA_DATA, elbo="enum", epochs=EPOCHS,
                  batch_size=DOCUMENTS, lr=0.05, seed=3, progress=False)
    ours = [loss * DOCUMENTS for loss in history.train_loss]

    pyro.clear_param_store()
    program = TopicModel(fixed_topics)
    svi = SVI(program.model, program.guide, pyro.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=2))
    theirs = []
    for state in states[-EPOCHS:]:
        torch.set_rng_state(state)
        theirs.append(svi.step(LDA_DATA))
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-9, (ours, theirs)
