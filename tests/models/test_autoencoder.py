"""Deterministic and linear autoencoders: PCA's subspace learned by gradient descent, a reconstruction loss that is
exactly the ELBO of the program, and honesty about having no likelihood."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

import pprogen
from pprogen.cli import main
from pprogen.inference import evaluate, fit, log_marginal, make_elbo, make_guide
from pprogen.models import PPCA, principal_angles


def correlated_data(n=400, d=8, seed=0):
    """Rows with distinct variances along a random rotation (well-separated leading eigenvalues) and an offset."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    scales = torch.tensor([3.0, 2.5, 2.0, 0.6, 0.5, 0.4, 0.3, 0.2])[:d]
    return (torch.randn(n, d, generator=g) * scales) @ basis.T + torch.randn(d, generator=g)


def test_the_linear_autoencoder_learns_pcas_and_ppcas_subspace():
    x = correlated_data()
    k = 3
    pyro.set_rng_seed(0)
    model = pprogen.create_model("linear_ae", x_dim=8, z_dim=k)
    guide = make_guide("default", model)
    centred = x - x.mean(0)
    pca = torch.linalg.eigh(centred.T @ centred / x.shape[0]).eigenvectors[:, -k:]  # the k leading directions
    assert principal_angles(model.subspace(), pca).max() > 0.1  # not there before training
    fit(model, guide, x, epochs=600, batch_size=x.shape[0], lr=0.05, progress=False, seed=0)
    assert principal_angles(model.subspace(), pca).max() < 1e-3
    ppca = PPCA.closed_form_mle(x, k)["weight"]  # Tipping & Bishop's maximum-likelihood W spans the same subspace
    assert principal_angles(model.subspace(), ppca).max() < 1e-3
    # the trailing directions are orthogonal to what it learned: the test tells the subspaces apart
    trailing = torch.linalg.eigh(centred.T @ centred).eigenvectors[:, :k]
    assert principal_angles(model.subspace(), trailing).min() > 1.5


def test_principal_angles_against_known_planes():
    e = torch.eye(4)
    assert principal_angles(e[:, :2], e[:, [1, 0]]).abs().max() < 1e-7
    tilted = torch.stack([e[:, 0], torch.cos(torch.tensor(0.3)) * e[:, 1] + torch.sin(torch.tensor(0.3)) * e[:, 2]], 1)
    assert principal_angles(e[:, :2], tilted).tolist() == pytest.approx([0.0, 0.3], abs=1e-7)


@pytest.mark.parametrize("name, args, binary", [
    ("linear_ae", {"x_dim": 6, "z_dim": 2}, False),
    ("autoencoder", {"x_shape": (1, 8, 8), "z_dim": 3, "hidden_dims": (8,), "architecture": "conv",
                     "channels": (4, 8)}, True),
    ("autoencoder", {"x_shape": (6,), "z_dim": 2, "hidden_dims": (8,), "reconstruction": "mse"}, False),
])
def test_every_estimators_elbo_is_exactly_the_reconstruction_loss(name, args, binary):
    model = pprogen.create_model(name, **args)
    guide = make_guide("default", model)
    x = torch.rand(5, *model.x_shape)
    x = (x < 0.5).float() if binary else x
    errors = model.reconstruction_error(x, guide)
    with torch.no_grad():
        recon = model.reconstruct(x, guide)
    assert torch.allclose(errors["squared_error"], (recon - x).pow(2).flatten(1).sum(1))
    if model.reconstruction == "mse":  # N(x_hat, 1): half the squared error plus (D / 2) log 2 pi
        const = 0.5 * x[0].numel() * torch.log(torch.tensor(2 * torch.pi))
        assert torch.allclose(errors["loss"], 0.5 * errors["squared_error"] + const, atol=1e-5)
    else:
        bce = torch.nn.functional.binary_cross_entropy(recon, x, reduction="none").flatten(1).sum(1)
        assert torch.allclose(errors["loss"], bce, atol=1e-4)
    for estimator in ("analytic", "trace", "meanfield", "iwae"):
        loss = make_elbo(estimator)(model, guide)(x)
        assert loss.item() == pytest.approx(errors["loss"].sum().item(), rel=1e-5), estimator


def test_no_likelihood_is_reported_for_an_autoencoder():
    model = pprogen.create_model("autoencoder", x_shape=(6,), z_dim=2, hidden_dims=(8,))
    guide = make_guide("default", model)
    x = (torch.rand(20, 6) < 0.5).float()
    with pytest.raises(ValueError, match="improper prior"):
        log_marginal(model, guide, x, num_samples=4)
    with pytest.raises(ValueError, match="no likelihood"):
        evaluate(model, guide, x, method="is")
    result = evaluate(model, guide, x)
    assert result.method == "reconstruction" and torch.isnan(result.log_prob).all() and "nll" not in result.summary
    errors = model.reconstruction_error(x, guide)
    assert result.summary["mse"] == pytest.approx((errors["squared_error"] / 6).mean().item(), rel=1e-6)
    assert result.summary["reconstruction_loss"] == pytest.approx(errors["loss"].mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="no prior over its codes"):
        model()
    with pytest.raises(ValueError, match="cannot be sampled"):  # no guide: the flat prior would have to propose
        log_marginal(model, None, x, num_samples=4)
    from pprogen.inference import detect_ood

    with pytest.raises(ValueError, match="autoencoder: it has no likelihood"):
        detect_ood(model, guide, x, x, x)
    # the flat prior's zero log density lives on the value's device and dtype (no CPU tensors on a GPU)
    value = torch.zeros(3, 2, dtype=torch.float64)
    assert model.code_prior().expand([3]).log_prob(value).dtype == torch.float64


def test_a_users_program_with_a_flat_prior_is_refused_by_importance_sampling():
    """A plain-function Pyro program (pyro.param guide) whose latent has an improper prior: log p(x) is undefined."""
    def model(x):
        with pyro.plate("rows", x.shape[0]):
            z = pyro.sample("z", dist.ImproperUniform(constraints.real, (), ()))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(x.shape[0]))
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0))

    pyro.clear_param_store()
    with pytest.raises(ValueError, match="site 'z' has an improper prior"):
        log_marginal(model, guide, torch.randn(5), num_samples=3)


def test_a_subsampled_program_with_a_flat_prior_and_an_autoguide_is_refused_in_one_line():
    """Another idiom: a plate named "rows" that subsamples itself, and AutoNormal as the guide."""
    from pyro.infer.autoguide import AutoNormal

    def model(x):
        with pyro.plate("rows", 20, subsample_size=5) as idx:
            z = pyro.sample("z", dist.ImproperUniform(constraints.real, (), ()))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

    pyro.clear_param_store()
    for guide in (AutoNormal(model), None):
        with pytest.raises(ValueError, match="cannot be sampled") as info:
            log_marginal(model, guide, torch.randn(20), num_samples=3)
        assert "\n" not in str(info.value)
        assert ("pass a guide" in str(info.value)) == (guide is None)


@pytest.mark.parametrize("args, message", [
    ({"x_dim": 4, "z_dim": 4}, "wider than|as wide as the data"),
    ({"x_dim": 4, "z_dim": 9}, "as wide as the data"),
    ({"x_dim": 4, "z_dim": 0}, "z_dim must be a positive integer"),
])
def test_a_linear_autoencoder_wider_than_the_data_is_refused(args, message):
    with pytest.raises(ValueError, match=message):
        pprogen.create_model("linear_ae", **args)


@pytest.mark.parametrize("args, message", [
    ({"architecture": "conv", "x_shape": (64,)}, "needs images of shape"),
    ({"architecture": "dense"}, "unknown architecture"),
    ({"reconstruction": "l1"}, "unknown reconstruction loss"),
    ({"hidden_dims": (0,)}, "hidden_dims must be positive"),
])
def test_bad_autoencoder_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        pprogen.create_model("autoencoder", **args)


def test_the_cli_trains_evaluates_and_refuses_what_an_autoencoder_cannot_do(tmp_path, capsys):
    out = tmp_path / "ae"
    assert main(["train", "autoencoder", "--set", "hidden_dims=[32]", "--set", "z_dim=4", "--epochs", "3",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "reconstruction error: MSE" in printed and "NLL" not in printed
    assert (out / "reconstructions.png").is_file() and not (out / "samples.png").exists()
    # the evaluation equals a recomputation from the saved weights
    from pprogen.engine import load_run

    _, _, dataset, model, guide, _ = load_run(str(out))
    x = dataset.split("test")
    expected = (model.reconstruction_error(x, guide)["squared_error"] / x[0].numel()).mean().item()
    assert main(["evaluate", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["test_evaluation"]["mse"] == pytest.approx(expected, rel=1e-5)
    assert main(["sample", str(out), "--interpolate", "--from-data", "-n", "2", "--out", str(tmp_path / "i.png")]) == 0
    capsys.readouterr()
    refused = [
        ["sample", str(out), "--out", str(tmp_path / "s.png")],
        ["sample", str(out), "--traverse", "--out", str(tmp_path / "t.png")],
        ["evaluate", str(out), "--method", "is"],
        ["evaluate", str(out), "--ood", "digits_binary"],
        ["ship", str(out), str(tmp_path / "shipped")],
    ]
    refused.append(["train", "autoencoder", "--beta", "4", "--out", str(tmp_path / "beta")])  # no KL to weight
    for argv in refused:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and ("no prior" in err or "no likelihood" in err or "does not apply" in err), err
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "t.png").exists() and not (tmp_path / "shipped").exists()
    assert not (tmp_path / "beta").exists()
