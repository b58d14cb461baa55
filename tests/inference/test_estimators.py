"""Estimators against exact evidence: PPCA (closed-form ML and log p(x)) and a Normal-Normal model."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pprogen
from pprogen.inference import fit, make_elbo, make_guide
from pprogen.inference.estimators import ELBOS
from pprogen.models.ppca import PPCA


@pytest.fixture
def ppca_data():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 1, generator=g)
    x = z @ torch.tensor([[1.5, -0.8, 0.5]]) + torch.tensor([0.5, 1.0, -1.0]) + 0.3 * torch.randn(300, 3, generator=g)
    return x


def exact_mean_log_lik(model, x):
    with torch.no_grad():
        return model.log_prob(x).mean().item()


def mle_mean_log_lik(x):
    mle = PPCA.closed_form_mle(x, 1)
    return dist.MultivariateNormal(mle["loc"], covariance_matrix=mle["cov"]).log_prob(x).mean().item()


def test_closed_form_mle_is_a_maximum(ppca_data):
    mle = PPCA.closed_form_mle(ppca_data, 1)
    best = mle_mean_log_lik(ppca_data)
    for eps in (0.05, -0.05):
        cov = mle["cov"] + eps * torch.eye(3)
        assert dist.MultivariateNormal(mle["loc"], covariance_matrix=cov).log_prob(ppca_data).mean() < best
    assert mle["noise_var"] > 0


ESTIMATORS = ["analytic", "trace", "stl", "meanfield", "graph", "enum", "renyi", "iwae", "iwae_dreg"]
GUIDES = ["default", "amortized_normal", "amortized_lowrank", "amortized_iaf", "amortized_planar"]


def test_every_amortized_family_is_covered():
    from pprogen.inference.guides import FAMILIES

    assert sorted(GUIDES[1:]) == sorted(f"amortized_{f}" for f in FAMILIES)


def test_every_estimator_name_is_covered():
    assert sorted(ESTIMATORS) == sorted(ELBOS)


@pytest.mark.parametrize("elbo", ESTIMATORS)
def test_every_estimator_trains_ppca_to_maximum_likelihood(elbo, ppca_data):
    model = pprogen.create_model("ppca", x_dim=3, z_dim=1)
    guide = make_guide("default", model)
    particles = 1 if elbo in ("analytic", "trace", "stl", "meanfield", "graph", "enum") else 4
    fit(model, guide, ppca_data, epochs=400, batch_size=300, lr=0.03, elbo=elbo, num_particles=particles,
        progress=False)
    assert exact_mean_log_lik(model, ppca_data) > mle_mean_log_lik(ppca_data) - 0.02


@pytest.mark.parametrize("guide_name", GUIDES[1:])
def test_every_amortized_guide_trains_ppca_to_maximum_likelihood(guide_name, ppca_data):
    model = pprogen.create_model("ppca", x_dim=3, z_dim=1)
    guide = make_guide(guide_name, model, hidden_dims=(32,))
    fit(model, guide, ppca_data, epochs=400, batch_size=300, lr=0.03, progress=False)
    assert exact_mean_log_lik(model, ppca_data) > mle_mean_log_lik(ppca_data) - 0.03


def bound_mean(elbo, model, guide, x, reps=300):
    values = torch.stack([-elbo.differentiable_loss(model, guide, x).detach() for _ in range(reps)])
    return values.mean().item(), values.std().item() / math.sqrt(reps)


def test_elbo_below_iwae_k_below_iwae_k_prime_below_log_evidence():
    model = pprogen.create_model("ppca", x_dim=3, z_dim=1)
    guide = make_guide("amortized_normal", model, hidden_dims=(8,))
    x = model.sample(5)
    exact = model.log_prob(x).sum().item()
    elbo = bound_mean(make_elbo("trace"), model, guide, x)
    iwae_5 = bound_mean(make_elbo("iwae", num_particles=5), model, guide, x)
    iwae_50 = bound_mean(make_elbo("iwae", num_particles=50), model, guide, x)
    for (low, se_low), (high, se_high) in [(elbo, iwae_5), (iwae_5, iwae_50)]:
        assert low < high + 3 * math.hypot(se_low, se_high)
    assert elbo[0] < iwae_50[0]
    assert iwae_50[0] < exact + 3 * iwae_50[1]


def guide_grads(elbo, model, guide, x, reps):
    grads = []
    params = list(guide.parameters())
    for _ in range(reps):
        loss = elbo.differentiable_loss(model, guide, x)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(grads)


def exact_posterior_ppca():
    """PPCA with its default guide set to the exact posterior (float64)."""
    model = pprogen.create_model("ppca", x_dim=3, z_dim=1).double()
    guide = make_guide("default", model).double()
    w, psi = model.weight.detach(), model.noise_scale().detach() ** 2
    m = torch.eye(1, dtype=torch.float64) + w.T @ (w / psi[:, None])
    post_cov = torch.linalg.inv(m)
    with torch.no_grad():
        guide.encoder.weight.copy_(post_cov @ (w.T / psi))
        guide.encoder.bias.copy_(-(post_cov @ (w.T / psi)) @ model.loc)
        chol = torch.linalg.cholesky(post_cov)
        guide.raw_tril.copy_(torch.diag(torch.log(torch.expm1(chol.diagonal() - 1e-5))))
    return model, guide


@pytest.mark.parametrize("name, reference", [("stl", "trace"), ("iwae_dreg", "iwae")])
def test_path_derivative_gradients_are_unbiased_and_vanish_at_the_optimum(name, reference):
    model, guide = exact_posterior_ppca()
    x = model.sample(4).double()
    particles = {"num_particles": 3} if reference == "iwae" else {}
    # at the exact posterior the path-derivative estimators have zero variance, the plain ones do not
    at_optimum = guide_grads(make_elbo(name, **particles), model, guide, x, 20)
    plain = guide_grads(make_elbo(reference, **particles), model, guide, x, 20)
    assert at_optimum.abs().max() < 1e-6
    assert plain.std(0).max() > 1e-2
    # away from it both estimate the same gradient
    with torch.no_grad():
        guide.encoder.bias.add_(0.4)
        guide.raw_tril.add_(0.3)
    pyro.set_rng_seed(1)
    ours = guide_grads(make_elbo(name, **particles), model, guide, x, 1500)
    theirs = guide_grads(make_elbo(reference, **particles), model, guide, x, 1500)
    se = torch.sqrt(ours.var(0) / len(ours) + theirs.var(0) / len(theirs))
    assert ((ours.mean(0) - theirs.mean(0)).abs() < 4 * se + 1e-6).all()


def test_dreg_keeps_the_iwae_value_and_model_gradient():
    model, guide = exact_posterior_ppca()
    x = model.sample(4).double()
    results = []
    for name in ("iwae", "iwae_dreg"):
        pyro.set_rng_seed(3)
        loss = make_elbo(name, num_particles=5).differentiable_loss(model, guide, x)
        results.append((loss.detach(), torch.autograd.grad(loss, [model.weight, model.loc])))
    assert torch.allclose(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b)


def test_global_latents_are_shared_by_the_particles_and_kept_out_of_the_log_sum_exp():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(pyro.param("m", torch.tensor(0.2)), 0.3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.8 * x, 0.4))

    x = torch.tensor([0.3, -1.2, 2.0])
    elbo = make_elbo("iwae", num_particles=7)
    bound, global_term, scale = elbo.per_datum_bound(model, guide, x)
    assert bound.shape == (3,) and global_term.dim() == 0 and scale == 1.0
    assert elbo.last_terms["z"].shape == (7, 3) and elbo.last_terms["guide.mu"].shape == ()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_elbo("iwea"), "did you mean 'iwae'"),
        (lambda: make_elbo("iwae", num_particles=0), "num_particles must be a positive integer"),
        (lambda: make_elbo("renyi", alpha=1.5), "alpha must lie in"),
        (lambda: make_guide("amortized_nromal", None), "did you mean 'amortized_normal'"),
    ],
)
def test_bad_estimator_and_guide_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_non_reparameterized_latent_is_refused_by_path_derivative_estimators():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.3))

    for name in ("stl", "iwae_dreg", "iwae"):
        with pytest.raises(ValueError, match="needs reparameterized latents.*guide site 'c'"):
            make_elbo(name).differentiable_loss(model, guide, torch.zeros(2))


def test_amortized_guide_refuses_global_latents_with_the_fix():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    guide = make_guide("amortized_normal", model)
    with pytest.raises(ValueError, match="'mu' sits outside the 'data' plate.*auto_"):
        guide(torch.zeros(4, 1))


AUTO = ["auto_normal", "auto_diag", "auto_mvn", "auto_lowrank", "auto_iaf", "auto_delta", "auto_laplace"]


@pytest.mark.parametrize("name", AUTO)
def test_every_autoguide_fits_a_global_latent(name):
    """mu ~ N(0, 2^2), x_n ~ N(mu, 1): the posterior of mu is Normal with a closed-form mean."""
    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 2.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)

    g = torch.Generator().manual_seed(0)
    x = torch.tensor([1.0, -0.5]) + torch.randn(40, 2, generator=g)
    post_mean = x.sum(0) / (len(x) + 0.25)
    guide = make_guide(name, model)
    fit(model, guide, x, epochs=400, batch_size=40, lr=0.02, schedule="cosine", num_particles=4, progress=False)
    with torch.no_grad():
        if name in ("auto_delta", "auto_laplace"):
            fitted = guide(x)["mu"]  # the MAP point
        elif name == "auto_iaf":
            fitted = torch.stack([guide(x)["mu"] for _ in range(2000)]).mean(0)  # no closed-form median
        else:
            fitted = guide.median()["mu"]
    assert torch.allclose(fitted, post_mean, atol=0.05)


def test_amortized_guide_uses_a_conv_encoder_for_images_or_the_one_passed():
    model = pprogen.create_model("conv_vae", x_shape=(1, 8, 8), z_dim=3, hidden_dims=(16,), channels=(4, 8))
    x = model.sample(5)
    guide = make_guide("amortized_normal", model)
    guide(x)
    from pprogen.nn import ConvEncoder

    assert isinstance(guide.encoder, ConvEncoder)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    mine = make_guide("amortized_lowrank", model, encoder=encoder, feature_dim=10)
    values = mine(x)
    assert mine.encoder is encoder and values["z"].shape == (5, 3)
    with pytest.raises(ValueError, match="feature_dim"):
        make_guide("amortized_normal", model, encoder=encoder)
