import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pprogen
from pprogen.inference import log_marginal, make_elbo
from pprogen.models.vae import LIKELIHOODS


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_every_likelihood_samples_in_its_support_and_trains(likelihood):
    model = pprogen.create_model("vae", x_dim=5, z_dim=2, hidden_dims=(6,), likelihood=likelihood)
    x = model.sample(8)
    if likelihood == "bernoulli":
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    if likelihood == "continuous_bernoulli":
        assert ((x >= 0) & (x <= 1)).all()
    guide = model.default_guide()
    loss_module = make_elbo("trace")(model, guide)
    loss_module(x).backward()
    assert all(p.grad is not None for p in loss_module.parameters())
    if likelihood == "gaussian":
        assert model.log_scale.grad.abs().sum() > 0


def test_mean_samples_are_likelihood_means():
    model = pprogen.create_model("vae", x_dim=4, z_dim=2, hidden_dims=(5,))
    means = model.sample(6, mean=True)
    assert ((means > 0) & (means < 1)).all() and not set(means.unique().tolist()) <= {0.0, 1.0}


def test_reconstruction_decodes_the_guide_draw():
    model = pprogen.create_model("vae", x_dim=4, z_dim=2, hidden_dims=(5,))
    guide = model.default_guide()
    x = model.sample(3)
    pyro.set_rng_seed(5)
    recon = model.reconstruct(x, guide)
    pyro.set_rng_seed(5)
    loc, scale = guide.encode(x)
    z = dist.Normal(loc, scale).sample()
    expected = torch.sigmoid(model.decoder(z))
    assert torch.allclose(recon, expected, atol=1e-6)


def test_conv_vae_keeps_image_shape():
    model = pprogen.create_model("conv_vae", x_shape=(1, 12, 10), z_dim=3, hidden_dims=(16,), channels=(4, 8))
    x = model.sample(2)
    assert x.shape == (2, 1, 12, 10)
    loc, scale = model.default_guide().encode(x)
    assert loc.shape == scale.shape == (2, 3)


@pytest.mark.parametrize("bad", [dict(z_dim=0), dict(hidden_dims=(0,)), dict(likelihood="poisson")])
def test_bad_arguments_raise_clear_errors(bad):
    with pytest.raises(ValueError, match="z_dim|hidden_dims|likelihood"):
        pprogen.create_model("vae", x_dim=4, **bad)


def linear_gaussian_vae():
    """With no hidden layer and a Gaussian likelihood the VAE is factor analysis: exact evidence."""
    torch.set_default_dtype(torch.float64)
    try:
        model = pprogen.create_model("vae", x_dim=3, z_dim=2, hidden_dims=(), likelihood="gaussian")
    finally:
        torch.set_default_dtype(torch.float32)
    model.double()
    with torch.no_grad():
        model.decoder[0].weight.copy_(torch.tensor([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4]]))
        model.decoder[0].bias.copy_(torch.tensor([0.2, -0.1, 0.5]))
        model.log_scale.copy_(torch.tensor([-0.2, -0.5, 0.1]))
    return model


def exact_log_evidence(model, x):
    weight, bias = model.decoder[0].weight, model.decoder[0].bias
    cov = weight @ weight.T + torch.diag(model.log_scale.exp() ** 2)
    return dist.MultivariateNormal(bias, covariance_matrix=cov).log_prob(x)


def exact_posterior_guide(model):
    weight, bias = model.decoder[0].weight, model.decoder[0].bias
    precision = torch.diag(model.log_scale.exp() ** -2)

    def guide(x):
        post_prec = torch.eye(2, dtype=x.dtype, device=x.device) + weight.T @ precision @ weight
        post_cov = torch.linalg.inv(post_prec)
        loc = (x - bias) @ (precision @ weight) @ post_cov
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=post_cov))

    return guide


def test_importance_sampled_evidence_matches_factor_analysis_closed_form():
    model = linear_gaussian_vae()
    x = model.sample(6).detach()
    exact = exact_log_evidence(model, x)
    with torch.no_grad():
        evidence = log_marginal(model, None, x, num_samples=20000)
    assert (evidence.log_prob.double() - exact).abs().max() < 3 * evidence.stderr.max() + 1e-3
    assert (evidence.stderr > 0).all()


def test_exact_posterior_as_proposal_gives_the_evidence_with_zero_variance():
    model = linear_gaussian_vae()
    x = model.sample(5).detach()
    with torch.no_grad():
        evidence = log_marginal(model, exact_posterior_guide(model), x, num_samples=50)
    assert torch.allclose(evidence.log_prob.double(), exact_log_evidence(model, x), atol=1e-4)
    assert evidence.stderr.max() < 1e-3
    assert torch.allclose(evidence.ess, torch.full_like(evidence.ess, 50.0), rtol=1e-3)
    assert math.isclose(evidence.summary()["nll"], -exact_log_evidence(model, x).mean().item(), abs_tol=1e-4)


# ----------------------------------------------------------------------------- flows in VAEs, cvae, hvae


def randomize(module, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


@pytest.mark.parametrize("prior", ["maf", "nsf"])
def test_flow_prior_is_the_flow_density_and_integrates_to_one(prior):
    torch.manual_seed(0)
    model = pprogen.create_model("vae", x_dim=3, z_dim=2, hidden_dims=(4,), prior=prior, prior_layers=2,
                                 prior_hidden_dims=(8,))
    randomize(model.prior_flow, 0.3)
    x = model.sample(5)
    guide = model.default_guide()
    guide_trace = pyro.poutine.trace(guide).get_trace(x)
    trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(x)
    z = trace.nodes["z"]["value"]
    direct = model.prior_flow.log_prob(z)
    assert torch.allclose(trace.nodes["z"]["fn"].log_prob(z), direct)
    xs = torch.linspace(-8, 8, 400)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = model.prior().log_prob(grid).exp().sum().item() * (xs[1] - xs[0]).item() ** 2
    assert abs(mass - 1) < 0.01
    with pytest.raises(ValueError, match="unknown prior 'flowy'; choose one of normal, maf, nsf"):
        pprogen.create_model("vae", prior="flowy")
    with pytest.raises(ValueError, match="prior_layers must be a positive integer, got 0"):
        pprogen.create_model("vae", prior=prior, prior_layers=0)


def test_amortized_planar_guide_scores_its_samples_with_the_exact_change_of_variables():
    from pprogen.inference import make_guide
    from pprogen.transforms import ConditionalPlanar

    torch.manual_seed(1)
    model = pprogen.create_model("vae", x_dim=4, z_dim=2, hidden_dims=(5,))
    guide = make_guide("amortized_planar", model, hidden_dims=(6,), num_flows=3)
    x = model.sample(3)
    tr = pyro.poutine.trace(guide).get_trace(x)
    site = tr.nodes["z"]
    z = site["value"]
    # recompute: base draw u from the same Normal, then the planar steps, with autograd log-dets
    h = guide.encoder(x)
    out = guide.heads["z"](h)
    loc, scale = out[:, :2], torch.nn.functional.softplus(out[:, 2:4]) + 1e-5
    planar = ConditionalPlanar(out[:, 4:], 2)
    u = tr.nodes["z"]["fn"].base_dist.base_dist.loc  # loc of the base equals the head's loc
    assert torch.allclose(u, loc)
    # invert nothing: the guide's log q must equal log N(u) - log|det| for the u that produced z
    base_u = site["fn"].transforms[0]._cached_x_y[0]
    assert torch.allclose(planar.forward_ladj(base_u)[0], z, atol=1e-6)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: ConditionalPlanar(out[i : i + 1].detach()[:, 4:], 2).forward_ladj(v[None])[0][0], base_u[i].detach())
        expected = dist.Normal(loc[i], scale[i]).log_prob(base_u[i]).sum() - torch.linalg.slogdet(jac)[1]
        assert torch.allclose(site["fn"].log_prob(z)[i], expected, atol=1e-5)


def test_cvae_conditional_evidence_matches_quadrature_and_labels_are_checked():
    """With z_dim = 1, log p(x | y) = log of the integral over z of N(z) p(x | z, y), by quadrature."""
    torch.manual_seed(2)
    model = pprogen.create_model("cvae", x_dim=5, num_classes=3, z_dim=1, hidden_dims=(6,))
    with torch.no_grad():
        model.decoder[0].weight[:, 1:] *= 8  # make the label matter a lot
    y = torch.tensor([0, 1, 2, 1])
    x = model.sample(4, y=y)
    zs = torch.linspace(-8, 8, 4001)[:, None]
    with torch.no_grad():
        exact = []
        for i in range(4):
            logits = model.decode(zs, y=y[i].expand(zs.shape[0]))
            lik = dist.Bernoulli(logits=logits).log_prob(x[i]).sum(-1)
            integrand = lik + dist.Normal(0.0, 1.0).log_prob(zs[:, 0])
            exact.append(torch.logsumexp(integrand, 0) + math.log(zs[1, 0] - zs[0, 0]))
    estimate = log_marginal(model, None, x, num_samples=20000, condition={"y": y})  # the prior as proposal
    assert torch.allclose(estimate.log_prob, torch.stack(exact).float(), atol=0.05)
    guided = log_marginal(model, model.default_guide(), x, num_samples=20000, condition={"y": y})
    assert (guided.log_prob < torch.stack(exact).float() + 3 * guided.stderr + 0.05).all()
    other = log_marginal(model, None, x, num_samples=20000, condition={"y": (y + 1) % 3})
    assert (other.log_prob - estimate.log_prob).abs().max() > 0.5  # the labels reach the decoder
    with pytest.raises(ValueError, match="conditioned on labels: pass y=labels"):
        model(x)
    with pytest.raises(ValueError, match="label 3 is out of range for num_classes=3"):
        model.sample(2, y=torch.tensor([0, 3]))


def test_cvae_trains_with_labels_through_fit():
    from pprogen.inference import fit

    torch.manual_seed(3)
    model = pprogen.create_model("cvae", x_dim=6, num_classes=2, z_dim=2, hidden_dims=(8,))
    y = torch.arange(200) % 2
    x = (torch.rand(200, 6) < torch.where(y[:, None] == 1, 0.9, 0.1)).float()  # the label decides the pixels
    history = fit(model, model.default_guide(), x, epochs=60, batch_size=50, lr=0.02, progress=False,
                  condition={"y": y})
    assert history.records[-1]["train_loss"] < history.records[0]["train_loss"]
    samples = model.sample(400, y=torch.arange(400) % 2)
    ones = samples[1::2].mean().item()
    zeros = samples[0::2].mean().item()
    assert ones > 0.75 and zeros < 0.25  # conditional sampling follows the label
    with pytest.raises(ValueError, match="one row per example"):
        fit(model, model.default_guide(), x, epochs=1, progress=False, condition={"y": y[:10]})


def test_hvae_has_the_iwae_architecture_and_exact_small_evidence():
    model = pprogen.create_model("hvae")
    shapes = [tuple(m.weight.shape) for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert shapes == [(200, 100), (200, 200), (784, 200)]
    shapes = [tuple(m.weight.shape) for m in model.p_z1.net if isinstance(m, torch.nn.Linear)]
    assert shapes == [(100, 50), (100, 100), (200, 100)]
    guide = model.default_guide()
    assert [tuple(m.weight.shape) for m in guide.q1.net if isinstance(m, torch.nn.Linear)] == [(200, 784), (200, 200), (200, 200)]
    assert [tuple(m.weight.shape) for m in guide.q2.net if isinstance(m, torch.nn.Linear)] == [(100, 100), (100, 100), (100, 100)]
    # two 1-D latents: log p(x) by 2-D quadrature equals the importance-sampled evidence
    torch.manual_seed(4)
    small = pprogen.create_model("hvae", x_dim=3, z_dims=(1, 1), hidden_dims=(4,), top_hidden_dims=(4,))
    x = small.sample(3)
    g = torch.linspace(-7, 7, 701)
    z2, z1 = torch.meshgrid(g, g, indexing="ij")
    with torch.no_grad():
        lp = dist.Normal(0.0, 1.0).log_prob(z2) + small.p_z1(z2.reshape(-1, 1)).log_prob(z1.reshape(-1, 1)).reshape(z1.shape)
        logits = small.decoder(z1.reshape(-1, 1))
        exact = torch.stack([
            torch.logsumexp((lp.reshape(-1) + dist.Bernoulli(logits=logits).log_prob(x[i]).sum(-1)), 0)
            + 2 * math.log(g[1] - g[0]) for i in range(3)])
    estimate = log_marginal(small, small.default_guide(), x, num_samples=50000)
    assert torch.allclose(estimate.log_prob, exact.float(), atol=0.05)
