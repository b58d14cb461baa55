"""``evaluate``: the route each model declares, the same figures as the estimators called directly, and the
command line's evaluation reproduced from Python."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch

import pprogen
from pprogen.capabilities import capabilities
from pprogen.inference import evaluate, log_marginal


def story(x):
    """A user's program with no declared capabilities: scored by importance sampling."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def story_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.8 * x, 0.45))


def test_each_model_is_scored_by_its_declared_route():
    ppca = pprogen.create_model("ppca", x_dim=3, z_dim=1)
    x = ppca.sample(20)
    exact = evaluate(ppca, None, x)
    assert exact.method == "exact" and torch.equal(exact.log_prob, ppca.log_prob(x).detach())
    assert exact.summary["nll"] == pytest.approx(-ppca.log_prob(x).double().mean().item())
    assert "bits_per_dim" not in exact.summary  # ppca does not report it, and no dim was given
    y = torch.randn(30)
    torch.manual_seed(4)
    sampled = evaluate(story, story_guide, y, num_samples=50)
    torch.manual_seed(4)
    direct = log_marginal(story, story_guide, y, num_samples=50)
    assert sampled.method == "is" and torch.equal(sampled.log_prob, direct.log_prob)
    assert sampled.summary["nll"] == direct.summary()["nll"] and sampled.result.khat is not None
    assert capabilities(story).scoring == "importance sampling"
    with_dim = evaluate(story, story_guide, y, num_samples=10, dim=1)
    assert with_dim.summary["bits_per_dim"] == pytest.approx(with_dim.summary["nll"] / 0.6931471805599453)


def test_global_latent_models_are_scored_by_their_posterior_predictive():
    model = pprogen.create_model("bayesian_gmm", x_dim=2, num_components=2)
    x = torch.randn(40, 2)
    guide = model.default_guide()
    torch.manual_seed(1)
    scored = evaluate(model, guide, x, num_samples=20)
    torch.manual_seed(1)
    direct = model.predictive_log_prob(x, guide, 20)
    assert scored.method == "predictive" and torch.allclose(scored.log_prob, direct)
    assert "posterior predictive (20 guide draws" in scored.description


def test_annealed_routes_and_bad_requests():
    torch.manual_seed(0)
    y = torch.randn(6)
    annealed = evaluate(story, story_guide, y, method="ais", num_steps=5, num_chains=3)
    assert annealed.method == "ais" and annealed.summary["num_steps"] == 5
    assert annealed.summary["method"].startswith("annealed importance sampling")
    sandwich = evaluate(story, story_guide, y, method="bdmc", num_steps=5, num_chains=3)
    assert sandwich.method == "bdmc" and torch.equal(sandwich.log_prob, sandwich.result.lower.log_prob)
    ppca = pprogen.create_model("ppca", x_dim=3, z_dim=1)
    with pytest.raises(ValueError, match="computes log p\\(x\\) exactly: it is scored by its own route, not by ais"):
        evaluate(ppca, None, ppca.sample(4), method="ais")
    with pytest.raises(ValueError, match="unknown evaluation method 'exact'"):
        evaluate(story, story_guide, y, method="exact")
    with pytest.raises(ValueError, match="num_steps set annealed chains"):
        evaluate(story, story_guide, y, num_steps=4)
    with pytest.raises(ValueError, match="is a GAN: it has no likelihood"):
        evaluate(pprogen.create_model("gan", x_dim=2), None, y)


def test_the_command_lines_evaluation_is_reproduced_from_python(tmp_path, capsys):
    from pprogen.cli import main
    from pprogen.engine import load_run as _load_run

    out = tmp_path / "run"
    assert main(["train", "vae", "--out", str(out), "--limit", "120", "--epochs", "1", "--eval-samples", "5",
                 "--no-progress", "--set", "hidden_dims=[16]", "--set", "z_dim=3"]) == 0
    assert main(["evaluate", str(out), "--split", "test", "--num-samples", "30", "--seed", "3"]) == 0
    cli = json.loads((out / "summary.json").read_text())["test_evaluation"]
    _, _, dataset, model, guide, _ = _load_run(str(out), torch.device("cpu"))
    torch.manual_seed(3)
    python = evaluate(model, guide, dataset.split("test"), num_samples=30, dim=dataset.dim)
    assert python.summary["nll"] == pytest.approx(cli["nll"], rel=1e-9)
    assert python.summary["bits_per_dim"] == pytest.approx(cli["bits_per_dim"], rel=1e-9)
    assert python.summary["method"] == cli["method"] and python.summary["khat_bands"] == cli["khat_bands"]


def test_a_conditional_exact_model_is_scored_given_its_labels():
    """log p(x | y) of a class-conditional PixelCNN: evaluate's exact route passes each row's label."""
    import pprogen
    from pprogen.inference import evaluate as score

    torch.manual_seed(0)
    model = pprogen.create_model("pixelcnn", x_shape=[1, 4, 4], num_classes=3, hidden_channels=8, num_blocks=1,
                                 kernel_size=3).eval()
    x = (torch.rand(6, 1, 4, 4) < 0.5).float()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    result = score(model, None, x, condition={"y": y})
    with torch.no_grad():
        assert torch.allclose(result.log_prob, model.log_prob(x, y))
        assert not torch.allclose(result.log_prob, model.log_prob(x, (y + 1) % 3))
    assert "given the labels" in result.description
