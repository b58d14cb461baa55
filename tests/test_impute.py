"""Imputation (``pprogen.impute`` and ``pprogen sample --impute``) against exact conditionals: brute-force
enumeration for small binary models, closed-form Gaussian conditioning for a linear-Gaussian Pyro program."""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

from pprogen import create_model
from pprogen.cli import main
from pprogen.impute import completion_log_likelihood, impute, masks, split_missing


def all_binary(d):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))


def exact_conditional(log_prob, x, missing):
    """p(x_mis = each configuration | x_obs) for one row, by enumeration."""
    configs = all_binary(int(missing.sum()))
    rows = x.repeat(len(configs), 1)
    rows[:, missing] = configs
    lp = log_prob(rows)
    return configs, torch.softmax(lp, 0), torch.logsumexp(lp, 0)


def frequencies(completions, missing, configs):
    got = completions[:, missing]
    return torch.stack([(got == c).all(-1).double().mean() for c in configs])


@pytest.fixture
def fvsbn():
    torch.manual_seed(0)
    model = create_model("fvsbn", x_dim=5)
    with torch.no_grad():
        model.weight.normal_(0, 1.5)
        model.bias.normal_(0, 1)
    return model


def test_ancestral_completion_is_exact_when_observed_entries_come_first(fvsbn):
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])
    missing = torch.tensor([[False, False, True, True, True]])
    d = fvsbn.distribution()
    assert d.observed_first(missing)
    configs, probs, log_p_obs = exact_conditional(fvsbn.log_prob, x[0], missing[0])
    full, log_w = d.complete(x.repeat(64, 1), missing.repeat(64, 1))
    assert torch.allclose(log_w, log_p_obs.expand(64), atol=1e-5)  # p(x) / p(x_mis | x_obs) = p(x_obs), exactly
    out = impute(fvsbn, None, x, missing, num_completions=20000)
    assert "ancestral completion" in out.method and out.ess is None
    assert torch.allclose(frequencies(out.completions[0], missing[0], configs), probs.double(), atol=0.015)
    assert torch.equal(out.completions[0][:, :2], x[0, :2].expand(20000, 2))


def test_importance_resampling_when_missing_entries_come_first(fvsbn):
    x = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0]])
    missing = torch.tensor([[True, True, False, False, False]])
    assert not fvsbn.distribution().observed_first(missing)
    configs, probs, _ = exact_conditional(fvsbn.log_prob, x[0], missing[0])
    out = impute(fvsbn, None, x, missing, num_completions=20000, num_particles=20000)
    assert "importance resampling" in out.method and out.ess.item() > 1000
    assert torch.allclose(frequencies(out.completions[0], missing[0], configs), probs.double(), atol=0.02)


def test_a_made_ensemble_weights_by_the_mixture_over_its_orders():
    torch.manual_seed(1)
    made = create_model("made", x_dim=4, hidden_dims=[16], num_masks=3, order_agnostic=True, natural_order=False)
    made.eval()  # the ensemble of its 3 orders (training cycles through them one at a time)
    assert len(made.distribution().nets) == 3
    x = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    missing = torch.tensor([[True, False, True, False]])
    configs, probs, _ = exact_conditional(made.log_prob, x[0], missing[0])
    out = impute(made, None, x, missing, num_completions=20000, num_particles=20000)
    assert torch.allclose(frequencies(out.completions[0], missing[0], configs), probs.double(), atol=0.02)


def test_bernoulli_mixture_completions_are_exact():
    torch.manual_seed(2)
    model = create_model("mixture_of_bernoullis", x_dim=4, num_components=3)
    with torch.no_grad():
        model.logits.normal_(0, 2)
        model.weight_logits.normal_(0, 1)
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    missing = torch.tensor([[False, False, True, True]])
    configs, probs, _ = exact_conditional(model.log_prob, x[0], missing[0])
    out = impute(model, None, x, missing, num_completions=20000)
    assert out.method.startswith("exact")
    assert torch.allclose(frequencies(out.completions[0], missing[0], configs), probs.double(), atol=0.015)


def test_gaussian_mixture_observed_log_prob_sums_the_observed_entries():
    torch.manual_seed(3)
    model = create_model("gmm", x_dim=3, num_components=2)
    x = torch.randn(5, 3)
    observed = torch.tensor([[1.0, 0.0, 1.0]]).expand(5, 3)
    per_dim = dist.Normal(model.locs, model.log_scales.exp()).log_prob(x[:, None, :])  # (N, K, D)
    expected = (per_dim * observed[:, None, :]).sum(-1)
    assert torch.allclose(model.observed_log_prob(x, observed), expected, atol=1e-5)


def test_bayesian_network_completions_are_its_exact_posterior():
    model = create_model("sprinkler")
    # columns: Cloudy, Sprinkler, Rain, GrassWet; observe wet grass (state 1, "yes"), the rest missing
    names = model.names
    x = torch.zeros(1, len(names))
    missing = torch.ones(1, len(names), dtype=torch.bool)
    wet = names.index("GrassWet")
    x[0, wet] = 1.0
    missing[0, wet] = False
    out = impute(model, None, x, missing, num_completions=20000)
    rain = names.index("Rain")
    expected = model.query("Rain", {"GrassWet": "yes"}).reshape(-1)
    assert out.completions[0, :, rain].mean().item() == pytest.approx(expected[1].item(), abs=0.015)


class LinearGaussian(PyroModule):
    """A user's program: z ~ N(0, 1); x | z ~ N(w z, s^2 I), observed at 'x' inside a plate named 'rows'."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.tensor([1.0, -2.0, 0.5]))

    def forward(self, x):
        with pyro.plate("rows", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(self.w * z[:, None], 0.3).to_event(1), obs=x)


def prior_guide(x):  # a plain function: the prior as proposal
    with pyro.plate("rows", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))


def test_a_latent_program_is_imputed_through_its_guide_like_gaussian_conditioning():
    model = LinearGaussian()
    x = torch.tensor([[1.2, 0.0, 0.0]])
    missing = torch.tensor([[False, True, True]])
    out = impute(model, prior_guide, x, missing, num_completions=20000, num_particles=20000)
    w = model.w
    cov = torch.outer(w, w) + 0.09 * torch.eye(3)
    mean = cov[1:, :1] @ torch.linalg.inv(cov[:1, :1]) @ x[0, :1]
    cond_cov = cov[1:, 1:] - cov[1:, :1] @ torch.linalg.inv(cov[:1, :1]) @ cov[:1, 1:]
    draws = out.completions[0][:, 1:]
    assert torch.allclose(draws.mean(0), mean, atol=0.05)
    assert torch.allclose(draws.T.cov(), cond_cov, atol=0.05)
    assert torch.equal(out.completions[0][:, 0], x[0, 0].expand(20000))


def test_completion_log_likelihood_counts_agreeing_completions():
    from pprogen.impute import Imputation

    truth = torch.tensor([[1.0, 0.0, 1.0]])
    missing = torch.tensor([[True, True, False]])
    completions = torch.tensor([[[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])
    ll = completion_log_likelihood(Imputation(completions, missing, "test"), truth)
    expected = math.log((3 + 0.5) / 5) + math.log((1 + 0.5) / 5)
    assert ll.item() == pytest.approx(expected)


def test_missing_masks_and_their_errors():
    x = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    filled, missing = split_missing(x)
    assert missing.tolist() == [[False, True], [False, False]] and not torch.isnan(filled).any()
    with pytest.raises(ValueError, match="nothing is missing"):
        split_missing(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="mask has shape"):
        split_missing(torch.zeros(2, 2), torch.ones(2, 3, dtype=torch.bool))
    images = torch.zeros(2, 1, 4, 4)
    assert masks(images, "bottom")[0, 0].tolist() == [[False] * 4] * 2 + [[True] * 4] * 2
    assert masks(images, "right")[0, 0, 0].tolist() == [False, False, True, True]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("impute")
    assert main(["train", "fvsbn", "--epochs", "2", "--no-progress", "--out", str(root / "fvsbn")]) == 0
    assert main(["train", "vae", "--epochs", "2", "--no-progress", "--limit", "300", "--set", "hidden_dims=[16]",
                 "--set", "z_dim=2", "--out", str(root / "vae")]) == 0
    assert main(["train", "realnvp", "--epochs", "1", "--no-progress", "--limit", "200", "--out",
                 str(root / "flow")]) == 0
    from pprogen.data import load_dataset

    x = load_dataset("digits_binary").test[:5]
    holes = x.clone()
    holes[masks(x, "bottom")] = float("nan")
    np.save(root / "holes.npy", holes.numpy())
    np.savez(root / "masked.npz", x=x.reshape(5, -1).numpy(), missing=masks(x, "right").reshape(5, -1).numpy())
    return root, x


@pytest.mark.parametrize("run, route", [("fvsbn", "ancestral completion"), ("vae", "fitted to the observed entries")])
def test_sample_impute_from_the_cli_keeps_the_observed_entries(runs, run, route, tmp_path, capsys):
    root, x = runs
    out = tmp_path / "c.npy"
    assert main(["sample", str(root / run), "--impute", str(root / "holes.npy"), "-n", "4", "--out", str(out)]) == 0
    assert route in capsys.readouterr().out
    completions = np.load(out)
    assert completions.shape == (5, 4, 64) and set(np.unique(completions)) <= {0.0, 1.0}
    observed = ~masks(x, "bottom").reshape(5, 64).numpy()
    flat = x.reshape(5, 64).numpy()
    for s in range(4):
        assert (completions[:, s][observed] == flat[observed]).all()
    assert main(["sample", str(root / run), "--impute", str(root / "masked.npz"), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("run, argv, message", [
    ("fvsbn", ["--impute", "nofile.npy"], "does not exist"),
    ("flow", ["--impute", "HOLES"], "--impute rows have shape (1, 8, 8), but realnvp takes (2,)"),
    ("flow", ["--impute", "TWO"], "flow offers no conditional sampling"),
    ("fvsbn", ["--impute", "FULL"], "nothing is missing"),
    ("fvsbn", ["--impute", "HOLES", "--label", "2"], "fvsbn is not conditioned on labels"),
    ("fvsbn", ["--impute", "HOLES", "--interpolate"], "--interpolate does not apply to --impute"),
    ("fvsbn", ["--particles", "9"], "--particles sets --impute"),
    ("fvsbn", ["--impute", "WIDE"], "--impute rows have shape (3,)"),
    ("fvsbn", ["--impute", "GREY"], "the observed entries of"),
])
def test_bad_imputation_input_is_one_line_and_writes_nothing(runs, run, argv, message, tmp_path, capsys):
    root, x = runs
    np.save(tmp_path / "full.npy", x.numpy())
    np.save(tmp_path / "wide.npy", np.full((2, 3), np.nan, dtype=np.float32))
    np.save(tmp_path / "two.npy", np.array([[0.5, np.nan]], dtype=np.float32))
    grey = x.clone().reshape(5, -1) * 0.5
    grey[:, :3] = float("nan")
    np.save(tmp_path / "grey.npy", grey.numpy())
    names = {"HOLES": str(root / "holes.npy"), "FULL": str(tmp_path / "full.npy"), "WIDE": str(tmp_path / "wide.npy"),
             "GREY": str(tmp_path / "grey.npy"), "TWO": str(tmp_path / "two.npy")}
    argv = [names.get(a, a) for a in argv]
    out = tmp_path / "out.npy"
    assert main(["sample", str(root / run), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_users_function_program_with_pyro_module_and_its_own_site_names():
    """The model and guide as plain functions registering nn.Modules with pyro.module, a pyro.param scale, a plate
    named 'rows' and the data observed at 'obs': completions match Gaussian conditioning as for our programs."""
    pyro.clear_param_store()
    decoder = torch.nn.Linear(1, 3)
    encoder = torch.nn.Linear(3, 1)
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor([[1.0], [-2.0], [0.5]]))
        decoder.bias.zero_()

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("rows", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(decoder(z), 0.3).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        scale = pyro.param("scale", torch.tensor(0.5), constraint=dist.constraints.positive)
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("z", dist.Normal(encoder(x), scale).to_event(1))

    x = torch.tensor([[1.2, 0.0, 0.0]])
    missing = torch.tensor([[False, True, True]])
    out = impute(model, guide, x, missing, num_completions=20000, num_particles=20000)
    w = decoder.weight.detach().reshape(-1)
    cov = torch.outer(w, w) + 0.09 * torch.eye(3)
    mean = cov[1:, :1] @ torch.linalg.inv(cov[:1, :1]) @ x[0, :1]
    assert torch.allclose(out.completions[0][:, 1:].mean(0), mean, atol=0.05)
    assert torch.equal(out.completions[0][:, 0], x[0, 0].expand(20000))


def test_global_latents_and_subsampled_plates_are_refused_in_one_line():
    def global_model(x):
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(w * z[:, None], 0.3).to_event(1), obs=x)

    def global_guide(x):
        loc = pyro.param("w_loc", torch.zeros(3))
        pyro.sample("w", dist.Normal(loc, 0.1).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))

    x = torch.tensor([[1.0, float("nan"), 0.0], [0.5, 0.2, float("nan")]])
    with pytest.raises(ValueError, match="latent 'w' is global"):
        impute(global_model, global_guide, x, num_particles=4)

    def subsampled(x):
        with pyro.plate("data", x.shape[0], subsample_size=2) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z[:, None].expand(-1, 3), 0.3).to_event(1), obs=x[idx])

    def subsampled_guide(x):
        with pyro.plate("data", x.shape[0], subsample_size=2):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="a subsampled plate"):
        impute(subsampled, subsampled_guide, x, num_particles=4)
