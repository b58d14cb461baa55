"""Latent pictures: ``pprogen.latent`` (spherical interpolation, traversals ordered by KL) and ``pprogen sample
--interpolate / --traverse / --mean / --draws / --label``, on VAEs, the two-layer VAE, flows and GANs."""

import json
import math

import numpy as np
import pytest
import torch

from pprogen import create_model, latent
from pprogen.cli import main
from pprogen.inference import make_guide


def test_slerp_endpoints_midpoint_and_norm():
    a = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [4.0, 0.0, 0.0]])  # orthogonal unit vectors; parallel vectors
    path = latent.slerp(a, b, 5)
    assert path.shape == (2, 5, 3)
    assert torch.equal(path[:, 0], a) and torch.allclose(path[:, -1], b, atol=1e-6)
    assert torch.allclose(path[0, 2], torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2), atol=1e-6)
    assert torch.allclose(path[0].norm(dim=-1), torch.ones(5), atol=1e-6)  # on the unit circle all the way
    assert torch.allclose(path[1, :, 0], torch.linspace(2, 4, 5), atol=1e-6)  # parallel: a straight line
    with pytest.raises(ValueError, match="at least 2 steps"):
        latent.slerp(a, b, 1)


@pytest.fixture
def vae():
    torch.manual_seed(0)
    model = create_model("vae", x_dim=16, z_dim=3, hidden_dims=[8]).eval()
    guide = make_guide("default", model)
    guide(torch.zeros(2, 16))
    return model, guide


def test_interpolation_runs_from_one_latent_to_the_other(vae):
    model, _ = vae
    torch.manual_seed(3)
    images = latent.interpolate(model, n=2, steps=4, mean=True)
    torch.manual_seed(3)
    z = model.prior_latents(4)
    assert images.shape == (8, 16)
    ends = images.reshape(2, 4, 16)
    assert torch.allclose(ends[:, 0], model.likelihood_dist(z[:2]).mean)
    assert torch.allclose(ends[:, -1], model.likelihood_dist(z[2:]).mean, atol=1e-6)


def test_interpolation_between_encodings_starts_at_the_guides_means(vae):
    model, guide = vae
    x = (torch.rand(6, 16) < 0.5).float()
    images = latent.interpolate(model, n=3, steps=5, mean=True, guide=guide, data=x).reshape(3, 5, 16)
    loc, _ = guide.encode(x)
    assert torch.allclose(images[:, 0], model.likelihood_dist(loc[0::2]).mean)
    assert torch.allclose(images[:, -1], model.likelihood_dist(loc[1::2]).mean, atol=1e-6)
    with pytest.raises(ValueError, match="need 8 rows"):
        latent.interpolate(model, n=4, guide=guide, data=x)


def test_traversal_sweeps_one_dimension_a_row_in_kl_order(vae, monkeypatch):
    model, guide = vae
    x = (torch.rand(50, 16) < 0.5).float()
    seen = {}
    decode = model.from_latent

    def spy(z, mean=False, **condition):
        seen["z"] = z.clone()
        return decode(z, mean, **condition)

    monkeypatch.setattr(model, "from_latent", spy)
    images, dims, kl = latent.traverse(model, n=3, steps=5, span=2.0, mean=True, guide=guide, data=x)
    loc, scale = guide.encode(x)
    exact = (0.5 * (loc ** 2 + scale ** 2 - 1 - 2 * scale.log())).mean(0)
    assert torch.allclose(kl, exact, atol=1e-5)
    assert dims.tolist() == torch.argsort(exact, descending=True).tolist()
    z = seen["z"].reshape(3, 5, 3)
    base = loc[0]
    for row, d in enumerate(dims.tolist()):
        assert torch.allclose(z[row, :, d], torch.linspace(-2, 2, 5))
        others = [k for k in range(3) if k != d]
        assert torch.allclose(z[row][:, others], base[others].expand(5, -1))
    assert images.shape == (15, 16)


def test_two_layer_vae_flow_and_gan_have_latent_pictures():
    torch.manual_seed(0)
    hvae = create_model("hvae", x_dim=12, z_dims=[4, 2], hidden_dims=[8], top_hidden_dims=[6]).eval()
    assert latent.interpolate(hvae, 2, 3, mean=True).shape == (6, 12)
    images, dims, kl = latent.traverse(hvae, steps=3)
    assert images.shape == (6, 12) and dims.tolist() == [0, 1] and kl is None
    flow = create_model("realnvp", x_dim=2).eval()
    torch.manual_seed(1)
    drawn = flow.sample(5)
    torch.manual_seed(1)
    assert torch.equal(drawn, flow.from_latent(flow.prior_latents(5)))  # sampling is x = T(z) at prior draws
    with pytest.raises(ValueError, match="no likelihood mean"):
        latent.interpolate(flow, 2, 3, mean=True)
    gan = create_model("gan").eval()
    z = torch.randn(4, 2)
    assert torch.equal(gan.from_latent(z), gan.generator_ema(z, None))
    with pytest.raises(ValueError, match="no guide to encode"):
        latent.interpolate(gan, 1, 3, data=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="no latent space"):
        latent.interpolate(create_model("fvsbn", x_dim=4), 1, 3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    tiny = ["--epochs", "2", "--no-progress", "--limit", "300", "--set", "hidden_dims=[32]", "--set", "z_dim=4"]
    assert main(["train", "vae", "--out", str(root / "vae"), *tiny]) == 0
    assert main(["train", "cvae", "--out", str(root / "cvae"), *tiny]) == 0
    assert main(["train", "fvsbn", "--out", str(root / "fvsbn"), "--epochs", "1", "--no-progress"]) == 0
    assert main(["train", "realnvp", "--out", str(root / "flow"), "--epochs", "1", "--no-progress", "--limit",
                 "300"]) == 0
    return root


def test_sample_interpolate_and_traverse_from_the_cli(runs, tmp_path, capsys):
    out = tmp_path / "i.npy"
    assert main(["sample", str(runs / "vae"), "--interpolate", "-n", "3", "--steps", "4", "--out", str(out)]) == 0
    images = np.load(out)
    assert images.shape == (12, 64) and not set(np.unique(images)) <= {0.0, 1.0}  # means by default
    assert "spherical interpolation between prior draws" in capsys.readouterr().out
    assert main(["sample", str(runs / "vae"), "--traverse", "--from-data", "--draws", "-n", "2", "--out",
                 str(out)]) == 0
    text = capsys.readouterr().out
    assert np.load(out).shape == (18, 64) and set(np.unique(np.load(out))) <= {0.0, 1.0}
    assert "KL per dimension" in text and "by KL (largest first)" in text
    assert main(["sample", str(runs / "flow"), "--interpolate", "--out", str(tmp_path / "f.png")]) == 0
    assert "x = f(z)" in capsys.readouterr().out


def test_sample_mean_draws_and_labels(runs, tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert main(["sample", str(runs / "vae"), "--mean", "-n", "5", "--out", str(out)]) == 0
    assert not set(np.unique(np.load(out))) <= {0.0, 1.0}
    assert "likelihood means" in capsys.readouterr().out
    assert main(["sample", str(runs / "cvae"), "--label", "3", "--mean", "-n", "4", "--out", str(out)]) == 0
    _, _, _, model, _, _ = __import__("pprogen.engine", fromlist=["load_run"]).load_run(str(runs / "cvae"))
    torch.manual_seed(0)
    expected = model.sample(4, y=torch.full((4,), 3), mean=True)
    assert np.allclose(np.load(out), expected.numpy(), atol=1e-6)
    assert main(["sample", str(runs / "cvae"), "--out", str(tmp_path / "c.png")]) == 0
    assert "60 images" in capsys.readouterr().out.splitlines()[-1]


def test_the_training_picture_of_a_conditional_model_has_a_class_per_column(runs, monkeypatch, tmp_path):
    from pprogen import engine, plots
    from pprogen.runs import Run

    calls = []
    monkeypatch.setattr(plots, "save_samples", lambda samples, shape, path, title="", columns=None:
                        calls.append((samples.shape[0], columns, title)))
    run, config, dataset, model, guide, device = engine.load_run(str(runs / "cvae"))
    engine.likelihood_pictures(Run.open(str(runs / "cvae")), model, guide, dataset, device)
    n, columns, title = calls[0]
    assert columns == 10 and n % 10 == 0 and "column j shows class j" in title and "likelihood means" in title
    labels = []
    monkeypatch.setattr(model, "likelihood_dist", lambda z, y=None: labels.append(y) or
                        type(model).likelihood_dist(model, z, y=y))
    model.sample(n, mean=True)
    assert labels[0].tolist() == [i % 10 for i in range(n)]  # image i in column i % 10 shows class i % 10


@pytest.mark.parametrize("run, argv, message", [
    ("fvsbn", ["--interpolate"], "fvsbn has no latent space"),
    ("fvsbn", ["--mean"], "has no likelihood mean to show"),
    ("flow", ["--traverse", "--mean"], "has no likelihood mean to show"),
    ("flow", ["--interpolate", "--from-data"], "no guide to encode"),
    ("vae", ["--label", "1"], "vae is not conditioned on labels"),
    ("cvae", ["--label", "10"], "--label 10 is out of range: cvae has classes 0 to 9"),
    ("vae", ["--steps", "4"], "--steps sets --interpolate or --traverse"),
    ("vae", ["--span", "2"], "--span sets"),
    ("vae", ["--from-data"], "--from-data starts --interpolate or --traverse"),
    ("vae", ["--interpolate", "--steps", "1"], "--steps must be at least 2"),
    ("vae", ["-n", "0"], "-n must be at least 1"),
    ("vae", ["--traverse", "--limit", "5"], "--limit sets the rows"),
])
def test_bad_sampling_options_are_one_line_and_write_nothing(runs, tmp_path, run, argv, message, capsys):
    out = tmp_path / "x.png"
    assert main(["sample", str(runs / run), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    summary = json.loads((runs / run / "summary.json").read_text())
    assert summary  # the run folder is untouched and readable


def test_a_gan_interpolates_from_the_cli(tmp_path, capsys):
    out = tmp_path / "gan"
    assert main(["train", "gan", "--out", str(out), "--epochs", "1", "--no-progress", "--limit", "300"]) == 0
    assert main(["sample", str(out), "--interpolate", "-n", "2", "--steps", "5", "--out", str(tmp_path / "g.npy")]) == 0
    assert "x = f(z)" in capsys.readouterr().out
    path = np.load(tmp_path / "g.npy")
    assert path.shape == (10, 2)
    assert main(["sample", str(out), "--traverse", "--mean", "--out", str(tmp_path / "t.npy")]) == 2
    assert "no likelihood mean" in capsys.readouterr().err and not (tmp_path / "t.npy").exists()


def test_moments_of_a_plain_function_guide_come_from_its_draws(vae):
    """A guide without ``encode`` (a plain function around the amortized guide): the draws' mean and standard
    deviation per row approach the guide's own (exact) location and scale."""
    model, guide = vae
    x = (torch.rand(5, 16) < 0.5).float()

    def plain(data):
        guide(data)

    loc, scale = latent.posterior_moments(model, plain, x, draws=20000)
    exact_loc, exact_scale = guide.encode(x)
    assert loc.shape == exact_loc.shape
    assert torch.allclose(loc, exact_loc, atol=0.03) and torch.allclose(scale, exact_scale, atol=0.03)
