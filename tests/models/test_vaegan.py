"""VAE-GAN: the stated likelihood scored by importance sampling against quadrature, each network trained by the
terms of Larsen et al. and no others, the command line, and bad input."""

import json
import math

import pytest
import torch

import pprogen
from pprogen.cli import main
from pprogen.inference import log_marginal
from pprogen.inference.adversarial import discriminator_loss, generator_loss


def small(**kw):
    args = {"x_shape": (1, 8, 8), "z_dim": 2, "hidden_dims": (16,), "channels": (4, 8), "d_channels": 8, **kw}
    return pprogen.create_model("vaegan", **args)


def test_importance_sampling_of_the_stated_likelihood_matches_quadrature():
    """z_dim 1: log p(x) = log integral N(z; 0, 1) p(x | z) dz on a fine grid, against log_marginal with the
    model's own encoder as proposal."""
    torch.manual_seed(0)
    model = small(z_dim=1, likelihood="bernoulli").eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)  # a decoder that depends on z strongly: the prior then matters to log p(x)
    x = (torch.rand(4, 1, 8, 8) < 0.5).float()
    grid = torch.linspace(-10, 10, 20001)

    def quadrature(prior_scale):
        with torch.no_grad():
            log_lik = model.likelihood_dist(grid[:, None]).log_prob(x[:, None])  # (4, G)
            prior = torch.distributions.Normal(0.0, prior_scale).log_prob(grid)
            return (torch.logsumexp(log_lik + prior, 1) + math.log(grid[1] - grid[0])).double()

    exact = quadrature(1.0)
    assert (quadrature(1.3) - exact).abs().max() > 0.1  # a wrong prior would show
    evidence = log_marginal(model, model.default_guide(), x, num_samples=20000)
    assert ((evidence.log_prob.double() - exact).abs() < 4 * evidence.stderr.double() + 0.005).all()


def test_each_network_gets_the_terms_of_the_paper():
    """Encoder: KL and the feature term only; decoder: the feature term and the adversarial loss; discriminator:
    the adversarial loss only (the feature term never trains it)."""
    torch.manual_seed(0)
    model = small()
    real = torch.rand(6, 1, 8, 8)
    groups = {"encoder": list(model.encoder.parameters()), "decoder": list(model.decoder.parameters()),
              "discriminator": list(model.discriminator.parameters())}

    def reached(loss):
        out = set()
        for name, params in groups.items():
            grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
            if any(g is not None and g.abs().sum() > 0 for g in grads):
                out.add(name)
        return out

    groups["likelihood scale"] = [model.log_scale]
    pairs, extra = model.adversarial_terms(real, True)
    assert [p.name for p in pairs] == ["prior", "recon"] and set(extra) == {"kl", "feature_nll", "pixel_scale_nll"}
    assert reached(extra["pixel_scale_nll"]) == {"likelihood scale"}  # the stated likelihood's scale is fitted
    adversarial = sum(generator_loss("nonsaturating", p.critic(p.fake)) for p in pairs)
    assert reached(adversarial) == {"decoder", "discriminator"}  # D's weights are frozen by the trainer then
    assert reached(extra["kl"]) == {"encoder"}
    assert reached(extra["feature_nll"]) == {"encoder", "decoder", "discriminator"}
    with torch.no_grad():
        d_pairs, d_extra = model.adversarial_terms(real, False)
    assert d_extra == {} and [p.name for p in d_pairs] == ["prior", "recon"]
    d_loss = sum(discriminator_loss("nonsaturating", p.critic(p.real), p.critic(p.fake)) for p in d_pairs)
    assert reached(d_loss) == {"discriminator"}
    # the KL term is the closed form of KL(N(loc, scale^2) || N(0, 1))
    from pprogen.nn import normal_head

    torch.manual_seed(1)
    _, extra = model.adversarial_terms(real, True)
    loc, scale = normal_head(model.encoder(real), model.z_dim)
    closed = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                               torch.distributions.Normal(0.0, 1.0)).sum(-1).mean()
    assert extra["kl"].item() == pytest.approx(closed.item(), rel=1e-5)


@pytest.mark.parametrize("gamma, encoder", [(0.1, None), (0.1, 1.0), (1.0, 1.0), (0.0, 1.0), (0.5, 0.0)])
def test_the_feature_term_weighs_gamma_for_the_decoder_and_its_own_weight_for_the_encoder(gamma, encoder):
    """L_dec = gamma L_llike - L_GAN; L_enc = L_prior + w L_llike with w = encoder_feature_weight (1: Larsen et al.;
    default gamma). The term's gradients equal those of the unweighted feature likelihood times w (encoder) and
    gamma (decoder); its value is gamma times it."""
    model = small(feature_weight=gamma, encoder_feature_weight=encoder)
    real = torch.rand(6, 1, 8, 8)
    torch.manual_seed(2)
    _, extra = model.adversarial_terms(real, True)
    torch.manual_seed(2)  # the same z_q: the same draws in the same order
    loc, scale = pprogen.nn.normal_head(model.encoder(real), model.z_dim)
    z_q = loc + scale * torch.randn_like(loc)
    with torch.no_grad():
        target = model.features(real)
    plain = 0.5 * (model.features(model.mean_image(z_q)) - target).pow(2).sum(-1).mean()
    assert extra["feature_nll"].item() == pytest.approx(gamma * plain.item(), rel=1e-5, abs=1e-6)
    weights = ((model.encoder, gamma if encoder is None else encoder), (model.decoder, gamma))
    for part, weight in weights:
        params = list(part.parameters())
        got = torch.autograd.grad(extra["feature_nll"], params, retain_graph=True, allow_unused=True)
        want = torch.autograd.grad(plain, params, retain_graph=True)
        assert any(w.abs().sum() > 0 for w in want)
        for g, w in zip(got, want):
            g = torch.zeros_like(w) if g is None else g
            assert torch.allclose(g, weight * w, rtol=1e-4, atol=1e-6)


def test_one_trainer_step_moves_the_encoder_and_the_decoder():
    """The encoder lives in the model, so the adversarial trainer's generator side updates it with the decoder."""
    from pprogen.inference import AdversarialTrainer

    torch.manual_seed(0)
    model = small()
    trainer = AdversarialTrainer(model, ema=None, progress=False, device="cpu")
    before = {name: [p.detach().clone() for p in part.parameters()]
              for name, part in (("encoder", model.encoder), ("decoder", model.decoder),
                                 ("discriminator", model.discriminator))}
    out = trainer.step([(torch.rand(8, 1, 8, 8), {})])
    assert math.isfinite(out["g_loss"]) and math.isfinite(out["d_loss"])
    for name, part in (("encoder", model.encoder), ("decoder", model.decoder), ("discriminator", model.discriminator)):
        assert any(not torch.equal(a, p) for a, p in zip(before[name], part.parameters())), f"{name} did not move"


def test_the_trainer_updates_the_encoder_and_the_cli_reports_sample_metrics_and_nll(tmp_path, capsys):
    out = tmp_path / "vg"
    assert main(["train", "vaegan", "--data", "digits", "--set", "hidden_dims=[16]", "--set", "channels=[4,8]",
                 "--set", "d_channels=8", "--set", "z_dim=4", "--epochs", "2", "--eval-samples", "64", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Fréchet distance" in printed and "valid NLL" in printed and "importance samples" in printed
    summary = json.loads((out / "summary.json").read_text())["valid_evaluation"]
    assert summary["likelihood"]["num_samples"] == 1000 and math.isfinite(summary["likelihood"]["nll"])
    from pprogen.engine import load_run

    _, _, dataset, model, guide, _ = load_run(str(out))
    from pprogen.runs import seed_everything

    seed_everything(0)  # the run's own initial weights (its seed, then the model), before training moved them
    fresh = pprogen.create_model("vaegan", **json.loads((out / "config.json").read_text())["model_args"])
    assert not torch.equal(model.encoder.head[0].weight, fresh.encoder.head[0].weight)  # trained and saved
    assert guide.encoder is model.encoder
    assert main(["evaluate", str(out), "--num-samples", "64"]) == 0
    assert "valid NLL" not in capsys.readouterr().out  # the default split is test
    assert main(["evaluate", str(out), "--split", "valid", "--num-samples", "64", "--ood", "digits"]) == 2
    assert main(["evaluate", str(out), "--method", "is"]) == 2
    assert "stated likelihood is scored by importance sampling" in capsys.readouterr().err
    # plain samples are the decoder's means; --draws asks for draws of the stated likelihood around them
    assert main(["sample", str(out), "-n", "64", "--out", str(tmp_path / "means.pt")]) == 0
    assert main(["sample", str(out), "-n", "64", "--draws", "--out", str(tmp_path / "draws.pt")]) == 0
    means, draws = (torch.load(tmp_path / f, weights_only=True) for f in ("means.pt", "draws.pt"))
    assert 0 <= means.min() and means.max() <= 1  # sigmoid means, the same latents (same seed) in both
    assert (draws - means).std().item() == pytest.approx(model.log_scale.exp().mean().item(), rel=0.05)


def test_draws_for_the_critic_are_binary_with_the_means_gradient():
    """critic_input="draws": the discriminator sees x ~ Bernoulli(E[x | z]) (binary, frequencies equal to the means)
    and the decoder gets the gradient of the mean image (straight through); "mean" shows the mean itself."""
    model = small(likelihood="bernoulli", critic_input="draws")
    z = torch.randn(3, model.z_dim)
    mean = model.mean_image(z)
    torch.manual_seed(0)
    draws = torch.stack([model.judged_image(z) for _ in range(4000)])
    assert set(draws.detach().unique().tolist()) == {0.0, 1.0}
    assert (draws.detach().mean(0) - mean.detach()).abs().max() < 4 * (0.25 / 4000) ** 0.5
    weights = torch.randn_like(mean)
    params = list(model.decoder.parameters())
    want = torch.autograd.grad((weights * mean).sum(), params)
    got = torch.autograd.grad((weights * model.judged_image(z)).sum(), params)
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want))
    pairs, _ = model.adversarial_terms((torch.rand(6, 1, 8, 8) < 0.5).float(), False)
    assert all(set(p.fake.detach().unique().tolist()) <= {0.0, 1.0} for p in pairs)
    plain = small(likelihood="bernoulli")
    assert torch.equal(plain.judged_image(z), plain.mean_image(z))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_pixel_term_is_the_stated_likelihoods_reconstruction_for_encoder_and_decoder(likelihood):
    """pixel_weight w adds w * -log p(x | z_q), z_q ~ q(z | x): the ELBO's reconstruction term, reaching the encoder and
    the decoder (and a Gaussian's scale), never the discriminator; the default adds nothing."""
    model = small(likelihood=likelihood, pixel_weight=0.5)
    real = (torch.rand(6, 1, 8, 8) < 0.5).float()
    torch.manual_seed(3)
    _, extra = model.adversarial_terms(real, True)
    torch.manual_seed(3)
    loc, scale = pprogen.nn.normal_head(model.encoder(real), model.z_dim)
    z_q = loc + scale * torch.randn_like(loc)
    want = -0.5 * model.likelihood_dist(z_q).log_prob(real).mean()
    assert extra["pixel_nll"].item() == pytest.approx(want.item(), rel=1e-5)
    for part, reached in ((model.encoder, True), (model.decoder, True), (model.discriminator, False)):
        grads = torch.autograd.grad(extra["pixel_nll"], list(part.parameters()), retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == reached
    if likelihood == "gaussian":
        assert torch.autograd.grad(extra["pixel_nll"], model.log_scale, retain_graph=True)[0].abs().sum() > 0
    assert "pixel_nll" not in small(likelihood=likelihood).adversarial_terms(real, True)[1]


@pytest.mark.parametrize("kw, message", [
    ({"critic_input": "noise"}, "unknown critic_input"),
    ({"pixel_weight": -1.0}, "pixel_weight must be a non-negative number"),
    ({"critic_input": "draws"}, "use it with likelihood=bernoulli"),
    ({"x_shape": (64,)}, "makes images of shape"),
    ({"likelihood": "poisson"}, "unknown likelihood"),
    ({"feature_weight": -1.0}, "feature_weight must be a non-negative number"),
    ({"kl_weight": float("nan")}, "kl_weight must be a non-negative number"),
    ({"encoder_feature_weight": -0.5}, "encoder_feature_weight must be a non-negative number"),
])
def test_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        small(**kw)


def test_bad_data_is_refused_before_anything_is_written(tmp_path, capsys):
    model = small(likelihood="bernoulli")
    with pytest.raises(ValueError, match="not binary"):
        model.check_data(torch.rand(4, 1, 8, 8))
    with pytest.raises(ValueError, match="not conditional"):
        model.check_data(torch.ones(4, 1, 8, 8), y=torch.zeros(4))
    assert main(["train", "vaegan", "--data", "digits", "--set", "likelihood=bernoulli", "--epochs", "1", "--out",
                 str(tmp_path / "r"), "--no-progress"]) == 2
    assert "not binary" in capsys.readouterr().err and not (tmp_path / "r").exists()
