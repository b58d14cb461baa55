"""AIS and BDMC against exact evidence: PPCA (Gaussian, closed form), a Gamma-Poisson model with an enumerated
discrete latent (closed form per component), and a global latent (joint closed form)."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal

from pprogen.inference import ais, annealing_schedule, bdmc

D, K = 6, 2


class PPCA:
    """x = W z + mu + noise, written as a plain-function Pyro model."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(D, K, generator=g) * 1.5
        self.mu = torch.randn(D, generator=g)
        self.sigma = 0.3
        self.cov = self.W @ self.W.T + self.sigma**2 * torch.eye(D)
        self.post_cov = self.sigma**2 * torch.linalg.inv(self.W.T @ self.W + self.sigma**2 * torch.eye(K))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.mu, self.sigma).to_event(1), obs=x)

    def exact_guide(self, x):
        """The exact posterior p(z | x) as the initial distribution."""
        loc = (x - self.mu) @ self.W @ self.post_cov.T / self.sigma**2
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=self.post_cov))

    def log_evidence(self, x):
        return dist.MultivariateNormal(self.mu, self.cov).log_prob(x)

    def data(self, n: int):
        return dist.MultivariateNormal(self.mu, self.cov).sample((n,))


def _below(diff: torch.Tensor) -> float:
    """How many standard errors the mean of ``diff`` lies below 0."""
    return -diff.mean().item() / (diff.std().item() / math.sqrt(diff.numel()))


def test_exact_posterior_start_is_exact_for_every_T():
    ppca = PPCA()
    x = ppca.data(10)
    for steps in (1, 3, 20):
        e = ais(ppca.model, ppca.exact_guide, x, num_steps=steps, num_chains=3)
        assert torch.allclose(e.log_prob, ppca.log_evidence(x), atol=1e-4), steps
        assert e.num_steps == steps and e.method == "ais"


def test_prior_start_is_below_at_small_T_and_converges_at_large_T():
    ppca = PPCA()
    x = ppca.data(40)
    exact = ppca.log_evidence(x)
    short = ais(ppca.model, None, x, num_steps=3, num_chains=8)
    assert _below(short.log_prob - exact) > 3  # a stochastic lower bound far from converged
    long = ais(ppca.model, None, x, num_steps=400, num_chains=16)
    diff = long.log_prob - exact
    assert abs(diff.mean().item()) < 3 * diff.std().item() / math.sqrt(diff.numel()) + 1e-3
    assert diff.abs().mean() < 0.3
    assert long.divergences.sum() < 0.01 * 40 * 16 * 399
    assert 0.4 < long.accept_rate.mean() < 0.95


def test_bdmc_sandwiches_the_exact_evidence_and_its_gap_shrinks():
    ppca = PPCA()
    template = torch.zeros(40, D)
    short = bdmc(ppca.model, None, template, num_steps=5, num_chains=8)
    exact = ppca.log_evidence(short.data)
    assert not torch.equal(short.data, template)
    assert _below(short.lower.log_prob - exact) > 3
    assert _below(exact - short.upper.log_prob) > 3  # the reverse chain lies above
    assert short.upper.method == "reverse ais"
    long = bdmc(ppca.model, None, template, num_steps=200, num_chains=8)
    assert long.gap.mean() < 0.25 * short.gap.mean()
    assert long.summary()["gap"] == pytest.approx(long.gap.double().mean().item())


def test_bdmc_with_the_exact_posterior_has_no_gap():
    ppca = PPCA()
    sandwich = bdmc(ppca.model, ppca.exact_guide, torch.zeros(8, D), num_steps=4, num_chains=2)
    exact = ppca.log_evidence(sandwich.data)
    assert torch.allclose(sandwich.lower.log_prob, exact, atol=1e-4)
    assert torch.allclose(sandwich.upper.log_prob, exact, atol=1e-4)


# a positive latent and an enumerated discrete one, in a plate named "rows"
A, B, PI, RATES = 2.0, 1.0, 0.3, (1.0, 3.0)


def gamma_poisson(x):
    with pyro.plate("rows", x.shape[0]):
        k = pyro.sample("k", dist.Bernoulli(PI), infer={"enumerate": "parallel"})
        lam = pyro.sample("lam", dist.Gamma(A, B))
        rate = lam * (RATES[0] + (RATES[1] - RATES[0]) * k)
        pyro.sample("x", dist.Poisson(rate.unsqueeze(-1).expand(*rate.shape, x.shape[-1])).to_event(1), obs=x)


def _component_evidence(x):
    """log p(x | k) for each k ``(N, 2)`` (negative-binomial form) and log p(k)."""
    s = x.sum(-1)
    d = x.shape[-1]
    out = []
    for c in RATES:
        out.append(A * math.log(B) + s * math.log(c) + torch.lgamma(A + s) - math.lgamma(A)
                   - torch.lgamma(x + 1).sum(-1) - (A + s) * torch.log(torch.tensor(B + d * c)))
    return torch.stack(out, -1), torch.log(torch.tensor([1 - PI, PI]))


def gamma_poisson_evidence(x):
    comp, prior = _component_evidence(x)
    return torch.logsumexp(comp + prior, -1)


def gamma_poisson_posterior(x):
    """The exact posterior of lam: a mixture of two Gammas, as a guide."""
    comp, prior = _component_evidence(x)
    weights = torch.softmax(comp + prior, -1)
    s = x.sum(-1, keepdim=True)
    rates = torch.stack([B + x.shape[-1] * torch.tensor(c) for c in RATES]).expand(x.shape[0], 2)
    with pyro.plate("rows", x.shape[0]):
        mixture = dist.MixtureSameFamily(dist.Categorical(weights), dist.Gamma((A + s).expand(-1, 2), rates))
        pyro.sample("lam", mixture)


def _counts(n: int):
    lam = dist.Gamma(A, B).sample((n,))
    k = dist.Bernoulli(PI).sample((n,))
    return dist.Poisson((lam * (1 + 2 * k)).unsqueeze(-1).expand(n, 10)).sample()


def test_constrained_and_enumerated_latents_exact_start():
    x = _counts(12)
    e = ais(gamma_poisson, gamma_poisson_posterior, x, num_steps=5, num_chains=2)
    assert torch.allclose(e.log_prob, gamma_poisson_evidence(x), atol=1e-3)


def test_constrained_and_enumerated_latents_converge_from_the_prior():
    x = _counts(400)
    exact = gamma_poisson_evidence(x)
    short = ais(gamma_poisson, None, x, num_steps=1, num_chains=2)  # importance sampling from the prior
    assert _below(short.log_prob - exact) > 3
    x, exact = x[:40], exact[:40]
    long = ais(gamma_poisson, None, x, num_steps=200, num_chains=16)
    diff = long.log_prob - exact
    assert abs(diff.mean().item()) < 3 * diff.std().item() / math.sqrt(diff.numel()) + 1e-3
    assert diff.abs().mean() < 0.1
    sandwich = bdmc(gamma_poisson, None, x, num_steps=3, num_chains=4, schedule="linear")
    assert _below(gamma_poisson_evidence(sandwich.data) - sandwich.upper.log_prob) > 2


def test_a_user_guide_with_pyro_params_is_a_valid_start():
    """A per-datum LogNormal guide written with pyro.param: AIS from it still converges to the truth."""
    x = _counts(20)

    def guide(x):
        loc = pyro.param("loc", torch.log1p(x.mean(-1)))
        scale = pyro.param("scale", torch.full((x.shape[0],), 0.5), constraint=dist.constraints.positive)
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("lam", dist.LogNormal(loc, scale))

    e = ais(gamma_poisson, guide, x, num_steps=100, num_chains=16)
    diff = e.log_prob - gamma_poisson_evidence(x)
    assert abs(diff.mean().item()) < 3 * diff.std().item() / math.sqrt(diff.numel()) + 1e-3


def test_a_global_latent_gives_the_joint_estimate():
    def model(x):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(theta, 1.0), obs=x)

    x = torch.randn(5) + 1.0
    n = x.shape[0]
    exact = dist.MultivariateNormal(torch.zeros(n), torch.eye(n) + torch.ones(n, n)).log_prob(x)

    def posterior(x):
        pyro.sample("theta", dist.Normal(x.sum() / (n + 1), (1.0 / (n + 1)) ** 0.5))

    with pytest.warns(UserWarning, match="joint"):
        e = ais(model, posterior, x, num_steps=3, num_chains=2)
    assert e.joint and e.log_prob.shape == (1,)
    assert e.log_prob.item() == pytest.approx(exact.item(), abs=1e-4)
    with pytest.warns(UserWarning, match="joint"):
        e = ais(model, None, x, num_steps=200, num_chains=32)
    assert e.log_prob.item() == pytest.approx(exact.item(), abs=0.1)


def test_schedules():
    for kind in ("linear", "geometric", "sigmoid"):
        b = annealing_schedule(kind, 50)
        assert b.shape == (51,) and b[0] == 0 and b[-1] == 1 and bool((b.diff() >= 0).all())
    assert torch.equal(annealing_schedule("linear", 1), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert annealing_schedule([0, 0.5, 1], 2)[1] == 0.5


def test_bad_input_is_refused_in_one_line():
    ppca = PPCA()
    x = ppca.data(4)
    cases = [
        (dict(num_steps=0), "num_steps"),
        (dict(num_chains=0), "num_chains"),
        (dict(schedule=[0.1, 0.5, 1.0], num_steps=2), "start at 0"),
        (dict(schedule=[0.0, 0.7, 0.5, 1.0], num_steps=3), "never decrease"),
        (dict(schedule=[0.0, 1.0], num_steps=5), "num_steps=1"),
        (dict(schedule="cosine"), "unknown annealing schedule"),
        (dict(leapfrog_steps=0), "leapfrog_steps"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            ais(ppca.model, None, x, **kw)


def test_programs_that_cannot_be_annealed_are_refused():
    def observed_only(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match="no continuous latent"):
        ais(observed_only, None, torch.randn(4), num_steps=2)

    def discrete(x):
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("k", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(k, 1.0), obs=x)

    with pytest.raises(ValueError, match="'k' is discrete.*enumerate"):
        ais(discrete, None, torch.randn(4), num_steps=2)

    ppca = PPCA()
    with warnings.catch_warnings(), pytest.raises(ValueError, match="auxiliary"):
        warnings.simplefilter("error")  # refused before any word about a joint estimate
        ais(ppca.model, AutoDiagonalNormal(ppca.model), ppca.data(4), num_steps=2)

    def partial_guide(x):
        pass

    with pytest.raises(ValueError, match="'z' has no match in the guide"):
        ais(ppca.model, partial_guide, ppca.data(4), num_steps=2)

    class Opaque(dist.Normal):
        def log_prob(self, value):
            return super().log_prob(value.detach())

    def not_differentiable(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", Opaque(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.detach(), 1.0), obs=x)

    with pytest.raises(ValueError, match="no usable gradient in latent site 'z'"):
        ais(not_differentiable, None, torch.randn(4), num_steps=2)


def test_bdmc_refuses_programs_it_cannot_simulate():
    def two_observations(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            pyro.sample("y", dist.Normal(z, 1.0), obs=x + 1)

    with pytest.raises(ValueError, match="one sample site"):
        bdmc(two_observations, None, torch.randn(4), num_steps=2)

    def transformed(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=2 * x)

    with pytest.raises(ValueError, match="other than the data"):
        bdmc(transformed, None, torch.randn(4), num_steps=2)

    def broadcast(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"broadcasts against obs=.*expand"):
        bdmc(broadcast, None, torch.randn(4, 3), num_steps=2)


def test_chunks_give_the_same_estimate_as_one_batch():
    """Rows are split into chunks by batch_size: with the same seed each row's estimate is a function of its
    own chains, so the exact-start estimate is the same however the rows are chunked."""
    ppca = PPCA()
    x = ppca.data(10)
    whole = ais(ppca.model, ppca.exact_guide, x, num_steps=3, num_chains=2, batch_size=10)
    chunked = ais(ppca.model, ppca.exact_guide, x, num_steps=3, num_chains=2, batch_size=3)
    assert torch.allclose(whole.log_prob, chunked.log_prob, atol=1e-5)
    assert chunked.accept_rate.shape == (10,) and chunked.divergences.shape == (10,)


def test_result_converts_to_arviz():
    ppca = PPCA()
    e = ais(ppca.model, None, ppca.data(5), num_steps=5, num_chains=4)
    data = e.to_inference_data()
    assert data.log_likelihood["x"].shape == (1, 1, 5)
    assert set(data.sample_stats.data_vars) >= {"stderr", "ess", "accept_rate", "divergences", "step_size"}
    summary = e.summary()
    assert summary["method"] == "ais" and summary["num_steps"] == 5 and summary["num_chains"] == 4


def test_guides_as_pyro_users_write_them_anneal_to_the_exact_evidence():
    """A function guide registering an encoder with pyro.module, and a per-datum pyro.param table under a
    subsampled plate: AIS from either reaches PPCA's closed-form evidence."""
    ppca = PPCA()
    x = ppca.data(30)
    exact = ppca.log_evidence(x)
    encoder = torch.nn.Linear(D, 2 * K)

    def module_guide(x):
        pyro.module("encoder", encoder)
        loc, log_scale = encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def subsampled_model(x):
        with pyro.plate("data", x.shape[0], subsample_size=10) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
            pyro.sample("x", dist.Normal(z @ ppca.W.T + ppca.mu, ppca.sigma).to_event(1), obs=x[idx])

    def table_guide(x):
        loc = pyro.param("loc", torch.zeros(x.shape[0], K))
        with pyro.plate("data", x.shape[0], subsample_size=10) as idx:
            pyro.sample("z", dist.Normal(loc[idx], 0.5).to_event(1))

    for model, guide in ((ppca.model, module_guide), (subsampled_model, table_guide)):
        e = ais(model, guide, x, num_steps=300, num_chains=16)
        diff = e.log_prob - exact
        assert e.log_prob.shape == (30,)
        assert abs(diff.mean().item()) < 3 * diff.std().item() / math.sqrt(diff.numel()) + 0.05


def test_the_schedule_and_constants_stay_importable_from_ais_and_the_settings_are_frozen():
    import dataclasses
    import importlib

    from pprogen.inference import annealing
    from pprogen.inference.ais import ADAPT_DOWN, ADAPT_UP, DIVERGENCE, SCHEDULES

    ais_module = importlib.import_module("pprogen.inference.ais")  # the package's attribute `ais` is the function
    assert ais_module.annealing_schedule is annealing.annealing_schedule is annealing_schedule
    assert (ADAPT_UP, ADAPT_DOWN, DIVERGENCE, SCHEDULES) == (1.02, 0.98, 1000.0, ("linear", "geometric", "sigmoid"))
    settings = annealing.Annealing.checked(num_steps=2, num_chains=3, schedule=[0.0, 0.25, 1.0], leapfrog_steps=4,
                                           step_size=0.1, target_accept=0.7, adapt_step_size=False, max_memory=2**20)
    assert settings.schedule == "custom" and settings.num_chains == 3
    assert torch.equal(settings.betas, torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.num_chains = 4
    with pytest.raises(ValueError, match="target_accept"):
        annealing.Annealing.checked(num_steps=2, num_chains=3, schedule="linear", leapfrog_steps=4, step_size=0.1,
                                    target_accept=1.0, adapt_step_size=True, max_memory=2**20)


def test_the_chains_evaluate_the_programs_log_densities_and_their_gradients_in_closed_form():
    """From the prior, log q is the prior's density and log p the joint's, per chain and row, with their
    gradients in z: -z, and -z + W^T (x - W z - mu) / sigma^2."""
    from pprogen.inference.annealing import AnnealedChains, Annealing
    from pprogen.inference.weighting import make_plan, take_rows

    ppca = PPCA()
    x = ppca.data(5)
    plan = make_plan(ppca.model, None, x, {}, None, 100)
    settings = Annealing.checked(num_steps=2, num_chains=3, schedule="linear", leapfrog_steps=2, step_size=0.1,
                                 target_accept=0.65, adapt_step_size=True, max_memory=2**30)
    chains = AnnealedChains(ppca.model, None, take_rows(x, {}, plan, 0, 5), plan, settings)
    state = chains.initial(None)
    z = state["z"]
    assert z.shape == (3, 5, K) and set(chains.latents) == {"z"}
    log_q, log_p, grad_q, grad_p = chains.evaluate(state)
    prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    likelihood = dist.Normal(z @ ppca.W.T + ppca.mu, ppca.sigma).log_prob(x).sum(-1)
    assert log_q.shape == log_p.shape == (3, 5)
    assert torch.allclose(log_q, prior, atol=1e-5)
    assert torch.allclose(log_p, prior + likelihood, atol=1e-4)
    assert torch.allclose(grad_q["z"], -z, atol=1e-5)
    residual = (x - z @ ppca.W.T - ppca.mu) / ppca.sigma**2
    assert torch.allclose(grad_p["z"], -z + residual @ ppca.W, atol=1e-3)
