import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

import pprogen
from pprogen.inference import TraceELBO, make_elbo
from pprogen.inference.train import scale_data_plate


def vae_pair():
    model = pprogen.create_model("vae", x_dim=5, z_dim=3, hidden_dims=(7,))
    return model, model.default_guide()


def loss_and_grads(elbo, model, guide, x, seed):
    pyro.set_rng_seed(seed)
    module = torch.nn.ModuleList([model, guide])
    for p in module.parameters():
        p.grad = None
    loss = elbo.differentiable_loss(model, guide, x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("num_particles", [1, 4])
def test_lean_trace_elbo_equals_pyro_trace_elbo_on_the_same_draws(num_particles):
    model, guide = vae_pair()
    x = model.sample(6)
    ours = TraceELBO(num_particles=num_particles)
    pyros = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    loss_a, grads_a = loss_and_grads(ours, model, guide, x, seed=3)
    loss_b, grads_b = loss_and_grads(pyros, model, guide, x, seed=3)
    assert torch.allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_unvectorized_particles_average_the_same_estimator():
    model, guide = vae_pair()
    x = model.sample(4)
    pyro.set_rng_seed(0)
    looped = TraceELBO(num_particles=3, vectorize_particles=False).differentiable_loss(model, guide, x)
    pyro.set_rng_seed(0)
    single = [TraceELBO().differentiable_loss(model, guide, x) for _ in range(3)]
    assert torch.allclose(looped, sum(single) / 3)


def test_beta_weights_only_the_latent_terms():
    model, guide = vae_pair()
    x = model.sample(4)
    parts = {}
    for beta in (0.0, 1.0, 3.0):
        pyro.set_rng_seed(7)
        parts[beta] = TraceELBO(beta=beta).differentiable_loss(model, guide, x)
    reconstruction = parts[0.0]
    kl = parts[1.0] - reconstruction
    assert torch.allclose(parts[3.0], reconstruction + 3 * kl, rtol=1e-5)


@pytest.mark.parametrize("name", ["meanfield", "graph", "iwae"])
def test_beta_applies_to_every_estimator(name):
    model, guide = vae_pair()
    x = model.sample(4)
    values = {}
    for beta in (0.0, 1.0, 3.0):
        pyro.set_rng_seed(7)
        elbo = make_elbo(name, beta=beta, **({"num_particles": 1} if name == "iwae" else {}))
        values[beta] = torch.tensor(elbo.loss(model, guide, x))
    reconstruction, kl = values[0.0], values[1.0] - values[0.0]
    assert torch.allclose(values[3.0], reconstruction + 3 * kl, rtol=1e-4)
    assert kl.abs() > 1e-3


def test_data_plate_scale_multiplies_per_datum_sites_only():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(pyro.param("m", torch.tensor(0.3)), 0.5))

    x = torch.tensor([0.5, -1.0, 2.0])
    elbo = TraceELBO()
    pyro.set_rng_seed(1)
    with scale_data_plate(10.0):
        scaled = elbo.differentiable_loss(model, guide, x)
    terms = elbo.last_terms
    mu = pyro.get_param_store()["m"]
    assert torch.allclose(scaled, -(terms["x"] + terms["mu"] - terms["guide.mu"]))
    pyro.set_rng_seed(1)
    elbo.differentiable_loss(model, guide, x)
    assert torch.allclose(terms["x"], 10 * elbo.last_terms["x"])
    assert torch.allclose(terms["mu"], elbo.last_terms["mu"]) and mu is not None


def test_guide_and_model_site_mismatch_is_a_clear_error():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'z' has no match in the guide"):
        TraceELBO().differentiable_loss(model, guide, torch.zeros(3))


def coin_model(x):
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(c, 1.0), obs=x)


def coin_guide(x):
    """A non-reparameterized guide: score-function gradients, Pyro's Trace_ELBO."""
    p = pyro.param("p", torch.tensor(0.3), constraint=dist.constraints.unit_interval)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("c", dist.Bernoulli(p))


def test_non_reparameterized_guide_falls_back_to_pyro():
    x = torch.tensor([0.0, 1.0])
    pyro.set_rng_seed(2)
    ours = TraceELBO().differentiable_loss(coin_model, coin_guide, x)
    pyro.set_rng_seed(2)
    reference = Trace_ELBO().differentiable_loss(coin_model, coin_guide, x)
    assert torch.allclose(ours, reference)


def test_the_score_function_fallback_is_quiet_and_refusals_name_the_estimator(caplog):
    """Pyro's Trace_ELBO logs its plate-nesting guess whenever a new one is built: once a step, it was 15 000
    lines in a run. The fallback is built once, with the nesting known; importance-weighted bounds refuse a
    non-reparameterized guide under their own name."""
    x = torch.tensor([0.0, 1.0, 0.5, 1.5])
    with caplog.at_level("INFO"):
        pprogen.inference.fit(coin_model, coin_guide, x, epochs=5, batch_size=2, progress=False)
    assert not [r for r in caplog.records if "max_plate_nesting" in r.getMessage()]
    for name in ("iwae", "renyi", "iwae_dreg"):
        with pytest.raises(ValueError, match=f"the '{name}' estimator needs reparameterized latents"):
            make_elbo(name).loss(coin_model, coin_guide, x)


def test_make_elbo_names_and_errors():
    assert isinstance(make_elbo("trace", num_particles=2), TraceELBO)
    assert isinstance(make_elbo("meanfield").elbo, pyro.infer.TraceMeanField_ELBO)
    assert isinstance(make_elbo("graph").elbo, pyro.infer.TraceGraph_ELBO)
    assert isinstance(make_elbo("enum").elbo, pyro.infer.TraceEnum_ELBO)
    with pytest.raises(ValueError, match="did you mean 'trace'"):
        make_elbo("trcae")
    with pytest.raises(ValueError, match="num_particles"):
        make_elbo("trace", num_particles=0)
