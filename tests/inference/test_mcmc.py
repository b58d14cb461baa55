import math

import arviz as az
import pyro
import pyro.distributions as dist
import pytest
import torch

from pprogen.mcmc import run_nuts


def normal_normal(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def test_nuts_posterior_matches_the_conjugate_closed_form():
    x = torch.tensor([0.8, 1.7, 1.2, 0.4, 2.1, 1.0])
    precision = 1 / 4 + len(x)
    post_mean, post_sd = x.sum().item() / precision, 1 / math.sqrt(precision)
    data, _ = run_nuts(normal_normal, x, num_samples=800, warmup_steps=300)
    draws = data.posterior["mu"].values.reshape(-1)
    summary = az.summary(data, var_names=["mu"])
    ess = summary.loc["mu", "ess_bulk"]
    assert abs(draws.mean() - post_mean) < 4 * post_sd / math.sqrt(ess)
    assert abs(draws.std() - post_sd) < 0.15 * post_sd
    assert "log_likelihood" in data.groups() and data.log_likelihood["x"].shape[-1] == len(x)


def test_bad_sampler_settings():
    with pytest.raises(ValueError, match="num_samples"):
        run_nuts(normal_normal, torch.zeros(2), num_samples=0)


def test_trace_plot_and_summary_work_on_the_result():
    import matplotlib

    matplotlib.use("Agg")
    data, mcmc = run_nuts(normal_normal, torch.tensor([0.3, 0.9]), num_samples=50, warmup_steps=50)
    assert az.plot_trace(data, var_names=["mu"]) is not None
    assert mcmc.get_samples()["mu"].shape == (50,)
