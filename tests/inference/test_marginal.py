import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pprogen
from pprogen.inference import fit, log_marginal, make_guide


def trained_ppca():
    model = pprogen.create_model("ppca", x_dim=3, z_dim=1)
    x = model.sample(200)
    guide = make_guide("amortized_normal", model, hidden_dims=(16,))
    fit(model, guide, x, epochs=30, batch_size=50, lr=0.01, progress=False)
    return model, guide, x[:20]


@pytest.mark.parametrize("proposal", ["guide", "prior"])
def test_per_datum_estimates_lie_within_three_standard_errors_of_exact(proposal):
    model, guide, x = trained_ppca()
    evidence = log_marginal(model, guide if proposal == "guide" else None, x, num_samples=3000)
    exact = model.log_prob(x).detach()
    assert evidence.log_prob.shape == evidence.stderr.shape == evidence.ess.shape == evidence.khat.shape == (20,)
    z = (evidence.log_prob - exact) / evidence.stderr.clamp(min=1e-4)
    assert (z.abs() < 3.5).float().mean() >= 0.9  # a few may stray by chance; 3.5 keeps the test stable
    assert abs(evidence.log_prob.mean() - exact.mean()) < 3 * evidence.stderr.mean() + 1e-3
    bands = evidence.khat_bands()
    assert sum(bands.values()) == 20 and set(bands) == {"good", "ok", "bad", "very bad"}


def test_chunked_particles_give_the_same_estimate_as_one_chunk():
    model, guide, x = trained_ppca()
    pyro.set_rng_seed(0)
    one = log_marginal(model, guide, x, num_samples=600, khat=False)
    pyro.set_rng_seed(0)
    many = log_marginal(model, guide, x, num_samples=600, max_elements=20 * 64, khat=False)
    assert torch.allclose(one.log_prob, many.log_prob, atol=0.05)
    assert one.khat is None


def test_enumerated_discrete_latents_are_summed_exactly():
    weights, locs = torch.tensor([0.3, 0.7]), torch.tensor([-2.0, 1.0])

    def mixture(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[c], 0.5), obs=x)

    x = torch.tensor([-2.1, 0.0, 1.3, 3.0])
    exact = torch.logsumexp(weights.log() + dist.Normal(locs, 0.5).log_prob(x[:, None]), -1)
    evidence = log_marginal(mixture, None, x, num_samples=3, khat=False)
    assert torch.allclose(evidence.log_prob, exact, atol=1e-5)
    assert evidence.stderr.max() < 1e-4


def test_a_global_latent_gives_the_joint_estimate_with_a_warning():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    x = torch.tensor([0.5, -0.3, 1.1])
    exact = dist.MultivariateNormal(torch.zeros(3), torch.eye(3) + torch.ones(3, 3)).log_prob(x)
    with pytest.warns(UserWarning, match="'mu' sits outside the 'data' plate.*joint"):
        evidence = log_marginal(model, None, x, num_samples=20000, khat=False)
    assert evidence.joint and evidence.log_prob.shape == (1,)
    assert abs(evidence.log_prob.item() - exact.item()) < 3 * evidence.stderr.item() + 1e-3


def test_inference_data_and_khat_plot():
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    model, guide, x = trained_ppca()
    evidence = log_marginal(model, guide, x, num_samples=200, keep_weights=True)
    data = evidence.to_inference_data()
    assert data.log_likelihood["x"].shape == (1, 1, 20)
    assert data.sample_stats["khat"].shape == (1, 1, 20)
    assert data.log_weights["log_w"].shape == (1, 20, 200)
    ax = az.plot_khat(evidence.khat.numpy())
    assert ax is not None


def test_bad_arguments():
    model = pprogen.create_model("ppca", x_dim=3, z_dim=1)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        log_marginal(model, None, torch.zeros(2, 3), num_samples=0)
    with pytest.raises(ValueError, match="non-empty"):
        log_marginal(model, None, torch.zeros(0, 3))


def test_a_model_without_a_data_plate_is_a_clear_error():
    def model(x):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(2), obs=x)

    with pytest.raises(ValueError, match="has no plate.*pyro.plate"):
        log_marginal(model, None, torch.zeros(3, 2), num_samples=2)


def test_enumeration_inside_a_nested_plate_is_summed_per_entry():
    """A site enumerated in a plate nested in the data plate is summed within each entry of it (Pyro's LDA idiom):
    log p(x_n) = sum_d log(0.5 N(x_nd; 0, 1) + 0.5 N(x_nd; 1, 1)), exactly, whatever the particles."""
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("pixels", x.shape[1], dim=-1):
            c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    x = torch.tensor([[0.0, 1.0], [2.0, -1.5], [0.3, 0.7]])
    components = torch.stack([dist.Normal(0.0, 1.0).log_prob(x), dist.Normal(1.0, 1.0).log_prob(x)])
    exact = (torch.logsumexp(components, 0) + math.log(0.5)).sum(-1)
    estimate = log_marginal(model, None, x, num_samples=2)
    torch.testing.assert_close(estimate.log_prob, exact, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:site 'z' sits outside the 'data' plate")
def test_a_standard_error_from_a_handful_of_effective_samples_is_flagged():
    """From a prior 100 sds wide of an observation with noise 0.1, 50 draws leave an ESS near 1: the delta-method
    standard error then says little, and the summary says so; with the exact posterior as guide (ESS = K) it does not."""
    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 10.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z, 0.1), obs=x)

    def exact_posterior(x):
        precision = 1 / 100 + x.shape[0] / 0.01
        pyro.sample("z", dist.Normal(x.sum() / 0.01 / precision, precision**-0.5))

    x = torch.tensor([25.0])
    pyro.set_rng_seed(0)
    wide = log_marginal(model, None, x, num_samples=50)
    assert wide.ess.item() < 10 and wide.summary()["stderr_note"].startswith("unreliable for 1 of 1 estimate(s)")
    exact = log_marginal(model, exact_posterior, x, num_samples=50)
    assert exact.ess.item() == pytest.approx(50) and "stderr_note" not in exact.summary()


def test_peak_bytes_counts_live_storages_once():
    from pprogen.inference.memory import PeakBytes

    with PeakBytes() as meter:
        a = torch.zeros(1000)
        b = torch.zeros(2000)
        view = b[:10]  # shares b's storage: not counted again
        del a
        c = torch.zeros(500)
    assert meter.peak == (1000 + 2000) * 4
    assert meter.now == (2000 + 500) * 4
    del b, c, view


def test_chunks_keep_to_the_byte_budget():
    """A VAE's evidence under a 2 MB budget: the chunks' tensors stay near it (the probe's estimate of the
    bytes per (particle, row) pair is linear), where the default budget's single chunk takes over 10 MB."""
    from pprogen.inference.memory import PeakBytes

    model = pprogen.create_model("vae", x_dim=64, z_dim=4, hidden_dims=(32,))
    guide = model.default_guide()
    x = (torch.rand(40, 64) < 0.3).float()
    with PeakBytes() as big:
        log_marginal(model, guide, x, num_samples=500, khat=False)
    with PeakBytes() as small:
        log_marginal(model, guide, x, num_samples=500, khat=False, max_memory=2_000_000)
    assert big.peak > 10_000_000  # one chunk would take far more than the budget
    assert small.peak < 2 * 2_000_000
    with pytest.raises(ValueError, match="max_memory must be a positive number of bytes"):
        log_marginal(model, guide, x, num_samples=5, max_memory=0)


def test_chunk_sizes_do_not_depend_on_the_tensor_the_rows_are_a_view_of():
    # the rows handed to log_marginal are often a view of a whole data set; the view is not its size
    from pprogen.inference.marginal import _chunks, _structure

    model = pprogen.create_model("vae", x_dim=64, z_dim=4, hidden_dims=(32,))
    guide = model.default_guide()
    whole = (torch.rand(20000, 64) < 0.3).float()
    sizes = []
    for x in (whole[:100], whole[:100].clone()):
        plan = _structure(model, guide, x, {}, None, 100)
        sizes.append(_chunks(model, guide, x, {}, plan, 1000, 8_000_000, None))
    assert sizes[0] == sizes[1]


def test_the_shared_log_weights_sum_an_enumerated_mixture_exactly_and_count_a_global_site_once():
    """``pprogen.inference.weighting``, which log_marginal and ais share: with nothing left to sample, every
    particle's log weight is the exact log p(x_n); a site outside the plate enters the joint weight once."""
    from pprogen.inference.weighting import log_weights, make_plan, take_rows

    weights, locs = torch.tensor([0.3, 0.7]), torch.tensor([-2.0, 1.0])

    def mixture(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[c], 0.5), obs=x)

    x = torch.tensor([-2.1, 0.0, 1.3, 3.0])
    exact = torch.logsumexp(weights.log() + dist.Normal(locs, 0.5).log_prob(x[:, None]), -1)
    plan = make_plan(mixture, None, x, {}, None, 100)
    assert (plan.plate_name, plan.joint, plan.subsampled, plan.batch_size) == ("data", False, False, 4)
    rows = take_rows(x, {}, plan, 1, 3)
    assert torch.equal(rows.x, x[1:3]) and rows.indices is None
    log_w = log_weights(mixture, None, x, 5, plan)
    assert log_w.shape == (5, 4)
    assert torch.allclose(log_w, exact.expand(5, 4), atol=1e-5)

    def global_mean(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def point_guide(x):
        pyro.sample("mu", dist.Delta(torch.tensor(0.4)))

    plan = make_plan(global_mean, point_guide, x, {}, None, 100)
    assert plan.joint and plan.global_sites == ["mu"] and plan.batch_size == 4 and plan.fixed_rows
    joint = dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.4)) + dist.Normal(0.4, 1.0).log_prob(x).sum()
    log_w = log_weights(global_mean, point_guide, x, 3, plan)
    assert log_w.shape == (3, 1)
    assert torch.allclose(log_w, joint.expand(3, 1), atol=1e-5)


def test_streaming_stats_of_chunks_are_those_of_all_the_weights_at_once():
    from pprogen.inference.weighting import streaming_stats

    log_w = torch.randn(3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    log_w[1] -= 1000.0  # far below zero: the running maximum keeps it finite
    log_prob, stderr, ess, kept = streaming_stats(list(log_w.split([7, 30, 13], dim=1)), 50, keep=True)
    w = (log_w - log_w.max(1, keepdim=True).values).exp()
    assert torch.allclose(log_prob, torch.logsumexp(log_w, 1) - math.log(50))
    assert torch.allclose(ess, w.sum(1) ** 2 / (w**2).sum(1))
    assert torch.allclose(stderr, (1 / ess - 1 / 50).sqrt())
    assert torch.equal(kept, log_w.float())
    assert streaming_stats([log_w], 50, keep=False)[3] is None
