"""Point-mass guides never pass for evidence: a MAP guide's "estimate" is log p(x, z_hat), not log p(x).

On the 2-d Normal model with Pyro's ``AutoDelta`` at the exact posterior mode, every importance weight is
log p(x, z_hat) = log p(x) + log p(z_hat | x), here 2.78 nats per datum above log p(x) (the posterior density at
its mode exceeds 1): the estimators must refuse, naming the site and what to use, while the prior (guide=None) and
a guide with a density (AutoNormal) still give the closed form.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal
from torch.distributions import constraints

from pprogen.inference import ais, bdmc, evaluate, fit, log_marginal
from pprogen.inference.guides import PosteriorDraws
from tests.clients.pyro_examples import NOISE, normal_2d, normal_2d_data, normal_2d_evidence, normal_2d_mode

REFUSED = r"guide site '{}' is a point mass.*in place of log p\(x\).*guide=None"


def _map_guide(x):
    return AutoDelta(normal_2d, init_loc_fn=lambda site: normal_2d_mode(x))


def test_a_map_guide_at_the_mode_would_overstate_the_evidence():
    """The premise: the weight of the point mass lies above the exact evidence (by -log det(2 pi Sigma_post))."""
    x = normal_2d_data(6)
    guide = _map_guide(x)
    guide(x)
    z_hat = guide.median(x)["z"]
    joint = dist.Normal(0.0, 1.0).log_prob(z_hat).sum(-1) + dist.Normal(z_hat, NOISE).log_prob(x).sum(-1)
    assert torch.allclose(z_hat, normal_2d_mode(x))
    posterior_var = NOISE**2 / (1 + NOISE**2)
    above = -math.log(2 * math.pi * posterior_var)  # log p(z_hat | x) at the mode of a 2-d Normal
    assert above == pytest.approx(2.78, abs=0.01)
    assert torch.allclose(joint - normal_2d_evidence(x), torch.full_like(joint, above))


@pytest.mark.parametrize("estimator", ["log_marginal", "refine", "evaluate", "ais", "bdmc"])
def test_every_evidence_path_refuses_autodelta(estimator):
    x = normal_2d_data(6)
    guide = _map_guide(x)
    calls = {
        "log_marginal": lambda: log_marginal(normal_2d, guide, x, num_samples=50),
        "refine": lambda: log_marginal(normal_2d, guide, x, num_samples=50, refine=5),
        "evaluate": lambda: evaluate(normal_2d, guide, x, num_samples=50),
        "ais": lambda: ais(normal_2d, guide, x, num_steps=3, num_chains=2),
        "bdmc": lambda: bdmc(normal_2d, guide, x, num_steps=3, num_chains=2),
    }
    with pytest.raises(ValueError, match=REFUSED.format("z")):
        calls[estimator]()


def test_the_prior_and_a_guide_with_a_density_still_give_the_closed_form():
    x = normal_2d_data(6)
    exact = normal_2d_evidence(x)
    prior = log_marginal(normal_2d, None, x, num_samples=20000)
    assert ((prior.log_prob.double() - exact).abs() <= 4 * prior.stderr.double() + 0.01).all()
    guide = AutoNormal(normal_2d)
    fit(normal_2d, guide, x, epochs=300, batch_size=6, lr=0.05, progress=False)
    guided = log_marginal(normal_2d, guide, x, num_samples=2000)
    assert ((guided.log_prob.double() - exact).abs() <= 4 * guided.stderr.double() + 0.01).all()
    annealed = ais(normal_2d, guide, x, num_steps=200, num_chains=8)
    assert ((annealed.log_prob.double() - exact).abs() < 0.15).all()


def test_an_lda_like_guide_with_a_delta_in_a_subsampled_plate_is_refused():
    """LDA's guide: topic weights with a density, each document's topics a Delta of a per-document table indexed by
    the guide's own subsampled plate (the model's plate does not subsample)."""
    docs, words, vocab, topics = 8, 4, 5, 2
    data = torch.randint(0, vocab, (docs, words), generator=torch.Generator().manual_seed(0)).double()

    def model(data):
        with pyro.plate("topics", topics):
            topic_words = pyro.sample("topic_words", dist.Dirichlet(torch.ones(vocab, dtype=data.dtype) / vocab))
        with pyro.plate("documents", data.shape[0], dim=-2) as ind:
            doc_topics = pyro.sample("doc_topics", dist.Dirichlet(torch.ones(topics, dtype=data.dtype)))
            with pyro.plate("words", words, dim=-1):
                word_topics = pyro.sample("word_topics", dist.Categorical(doc_topics), infer={"enumerate": "parallel"})
                pyro.sample("doc_words", dist.Categorical(topic_words[word_topics]), obs=data[ind])

    def guide(data):
        concentration = pyro.param("concentration", torch.ones(topics, vocab, dtype=data.dtype),
                                   constraint=constraints.positive)
        with pyro.plate("topics", topics):
            pyro.sample("topic_words", dist.Dirichlet(concentration))
        table = pyro.param("doc_topics_table", torch.ones(data.shape[0], topics, dtype=data.dtype) / topics,
                           constraint=constraints.simplex)
        with pyro.plate("documents", data.shape[0], 4, dim=-2) as ind:
            pyro.sample("doc_topics", dist.Delta(table[ind].unsqueeze(-2), event_dim=1))

    for call in (lambda: log_marginal(model, guide, data, num_samples=10),
                 lambda: ais(model, guide, data, num_steps=2, num_chains=2)):
        with pytest.raises(ValueError, match=REFUSED.format("doc_topics")):
            call()


def test_masked_deltas_and_stored_draws_are_point_masses_too():
    x = normal_2d_data(4)

    def masked_delta(x):
        loc = pyro.param("loc", normal_2d_mode(x))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(loc, event_dim=1).mask(torch.ones(x.shape[0], dtype=torch.bool)))

    with pytest.raises(ValueError, match=REFUSED.format("z")):
        log_marginal(normal_2d, masked_delta, x, num_samples=10)

    def mu_model(x):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    draws = PosteriorDraws({"mu": torch.randn(50, dtype=x.dtype)})  # a mixture of point masses: no density either
    with pytest.raises(ValueError, match=REFUSED.format("mu")):
        log_marginal(mu_model, draws, x[:, 0], num_samples=10)
