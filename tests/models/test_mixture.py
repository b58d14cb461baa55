import itertools

import pyro
import pytest
import torch

import pprogen
from pprogen.inference import fit

MEANS = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]])
WEIGHTS = torch.tensor([0.2, 0.3, 0.5])


def mixture_data(n=1500, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
    return MEANS[c] + 0.5 * torch.randn(n, 2, generator=g), c


def initialised_gmm():
    pyro.set_rng_seed(3)
    model = pprogen.create_model("gmm", x_dim=2, num_components=3)
    with torch.no_grad():
        model.locs.copy_(torch.tensor([[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    return model


def matched(model):
    """Fitted (weights, means) ordered like MEANS, by nearest mean."""
    order = torch.cdist(MEANS, model.locs.detach()).argmin(1)
    assert len(set(order.tolist())) == 3
    return torch.softmax(model.weight_logits.detach(), -1)[order], model.locs.detach()[order]


def test_mixture_of_bernoullis_sums_to_one_over_all_configurations():
    model = pprogen.create_model("mixture_of_bernoullis", x_dim=10, num_components=4).double()
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=10)), dtype=torch.float64)
    assert abs(torch.logsumexp(model.log_prob(configs), 0).exp().item() - 1) < 1e-5


def test_svi_with_enumeration_recovers_means_and_weights_and_matches_em():
    x, _ = mixture_data()
    svi_model = initialised_gmm()
    fit(svi_model, svi_model.default_guide(), x, epochs=300, batch_size=1500, lr=0.05, elbo="enum", progress=False)
    weights, means = matched(svi_model)
    assert torch.allclose(means, MEANS, atol=0.1)
    assert torch.allclose(weights, WEIGHTS, atol=0.04)
    em_model = initialised_gmm()
    em_model.fit_em(x, num_iters=200)
    em_ll = em_model.log_prob(x).mean().item()
    svi_ll = svi_model.log_prob(x).mean().item()
    assert abs(em_ll - svi_ll) < 0.01
    history = initialised_gmm().fit_em(x, num_iters=20)
    assert all(b >= a - 1e-6 for a, b in zip(history, history[1:]))  # EM never decreases the likelihood


def test_map_assignments_by_infer_discrete_are_the_posterior_argmax():
    x, _ = mixture_data(200)
    model = initialised_gmm()
    model.fit_em(x, num_iters=50)
    assert torch.equal(model.map_assignments(x), model.log_joint(x).argmax(-1))


def test_enumerated_elbo_of_the_mixture_of_bernoullis_is_its_exact_log_likelihood():
    # the model scores x through an (N, K) table gathered by the enumerated c; TraceEnum_ELBO must still
    # sum c out exactly, matching logsumexp over the components broadcast against the data
    pyro.set_rng_seed(0)
    model = pprogen.create_model("mixture_of_bernoullis", x_dim=12, num_components=5).double()
    x = (torch.rand(7, 12, dtype=torch.float64) < 0.4).double()
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, model.default_guide(), x)
    broadcast = torch.distributions.Bernoulli(logits=model.logits).log_prob(x[:, None]).sum(-1)
    expected = torch.logsumexp(torch.log_softmax(model.weight_logits, -1) + broadcast, -1).sum()
    assert torch.allclose(-loss, expected, atol=1e-10)


def test_bayesian_gmm_nuts_recovers_the_mixture_and_reports_pointwise_likelihoods():
    import arviz as az

    x, _ = mixture_data(150, seed=1)
    model = pprogen.create_model("bayesian_gmm", x_dim=2, num_components=3)
    idata, mcmc = model.posterior(x, num_samples=100, warmup_steps=100)
    draws = mcmc.get_samples()
    order = torch.cdist(MEANS, draws["locs"].mean(0)).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2]
    assert (draws["locs"].mean(0)[order] - MEANS).abs().max() < 0.3
    assert (draws["weights"].mean(0)[order] - WEIGHTS).abs().max() < 0.1
    summary = az.summary(idata, var_names=["locs"])
    assert (summary["ess_bulk"] > 20).all()
    # the log_likelihood group, with c summed out, against torch's own mixture density for one draw
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(draws["weights"][7]),
        torch.distributions.Independent(torch.distributions.Normal(draws["locs"][7], draws["scales"][7]), 1))
    stored = torch.as_tensor(idata.log_likelihood["x"].values[0, 7])
    assert torch.allclose(stored, mixture.log_prob(x).to(stored.dtype), atol=1e-4)


@pytest.mark.parametrize("name", ["gmm", "mixture_of_bernoullis"])
def test_components_start_at_training_examples(name):
    torch.manual_seed(0)
    x = (torch.rand(50, 6) < 0.3).float()
    model = pprogen.create_model(name, x_dim=6, num_components=4)
    with torch.no_grad():
        model.weight_logits.normal_()  # unequal weights, which init_from_data must reset
    model.init_from_data(x)
    centers = model.locs if name == "gmm" else (torch.sigmoid(model.logits) - 0.05) / 0.9
    assert torch.cdist(centers.detach(), x).min(1).values.max() < 1e-5
    assert torch.allclose(torch.softmax(model.weight_logits, -1), torch.full((4,), 0.25))


def test_bayesian_gmm_predictive_log_prob_at_a_point_guide_is_the_mixture_density():
    # guide scales near zero: every vectorized draw sits at the guide's median, so the predictive density
    # must equal the mixture density there; a broadcasting slip in the batched draws would break this
    pyro.set_rng_seed(0)
    model = pprogen.create_model("bayesian_gmm", x_dim=2, num_components=3)
    guide = model.default_guide()
    for name in ("weights", "locs", "scales"):
        setattr(guide.scales, name, torch.full_like(getattr(guide.scales, name), 1e-6))
    x = torch.randn(20, 2)
    point = guide.median()
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(point["weights"]),
        torch.distributions.Independent(torch.distributions.Normal(point["locs"], point["scales"]), 1))
    assert torch.allclose(model.predictive_log_prob(x, guide, num_samples=50), mixture.log_prob(x), atol=1e-4)
