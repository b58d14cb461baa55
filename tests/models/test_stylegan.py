"""The style-based generator: modulated convolutions against explicit per-example weights, style mixing, the
mixing and truncation operations, per-layer noise, the running mean of w, and bad input."""

import pytest
import torch
import torch.nn.functional as F

import pprogen
from pprogen.models.stylegan import ModulatedConv


def small(**kw):
    return pprogen.create_model("stylegan", **{"x_shape": (1, 8, 8), "z_dim": 4, "w_dim": 6, "mapping_layers": 2,
                                               "channels": 5, "d_channels": 4, **kw})


def styled(model):
    """Larger style maps in the averaged generator, so that different latents give clearly different images."""
    with torch.no_grad():
        for module in model.generator_ema.modules():
            if isinstance(module, ModulatedConv):
                module.affine.weight.normal_()
    return model


@pytest.mark.parametrize("demodulate", [True, False])
def test_a_modulated_convolution_equals_convolving_with_each_examples_own_weights(demodulate):
    torch.manual_seed(0)
    conv = ModulatedConv(5, 6, 7, demodulate=demodulate)
    torch.nn.init.normal_(conv.affine.weight)  # styles that differ between examples
    h, w = torch.randn(3, 5, 9, 9), torch.randn(3, 7)
    weights = conv.modulated_weight(w)
    explicit = torch.stack([F.conv2d(h[i: i + 1], weights[i], padding=1)[0] for i in range(3)])
    assert torch.allclose(conv(h, w), explicit + conv.bias[None, :, None, None], atol=1e-5)
    if demodulate:  # every example's output filters have unit norm
        assert torch.allclose(weights.pow(2).sum((2, 3, 4)), torch.ones(3, 6), atol=1e-5)


def test_style_mixing_takes_a_second_latents_styles_from_a_crossover_on():
    torch.manual_seed(0)
    model = small(mixing=1.0)
    net = model.generator
    z = torch.randn(50, 4)
    torch.manual_seed(1)
    ws = model.mixed_styles(net, z)
    torch.manual_seed(1)
    first = net.map(z)
    second = net.map(torch.randn_like(z))
    assert ws.shape == (50, model.num_ws, 6)
    cuts = []
    for i in range(50):
        same = (ws[i] == first[i]).all(-1)
        cut = int(same.sum())
        assert same[:cut].all() and not same[cut:].any()  # w(z) up to the crossover, then the other latent's
        assert (ws[i, cut:] == second[i]).all()
        cuts.append(cut)
    assert set(cuts) == set(range(1, model.num_ws))  # every crossover point in [1, num_ws) occurs
    unmixed = small(mixing=0.0)
    assert (unmixed.mixed_styles(unmixed.generator, z) == unmixed.generator.map(z)[:, None]).all()


def test_mixing_and_truncation_pictures_are_what_they_say():
    torch.manual_seed(0)
    model = styled(small())
    with torch.no_grad():
        model.generator_ema.w_avg.normal_()
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(model.mix(a, b, 0), model.sample_at(b))  # no layer from a
    assert torch.allclose(model.mix(a, b, model.num_ws), model.sample_at(a))  # every layer from a
    mixed = model.mix(a, b, 2)
    assert (mixed - model.sample_at(a)).abs().max() > 1e-3 and (mixed - model.sample_at(b)).abs().max() > 1e-3
    # psi = 0: every latent gives the image of the mean w; psi = 1: no truncation
    flat = model.sample_at(torch.randn(4, 4), psi=0.0)
    assert torch.allclose(flat, flat[:1].expand_as(flat), atol=1e-6)
    w_avg = model.generator_ema.w_avg
    mean_image = model.generator_ema.synthesize(w_avg.expand(1, model.num_ws, -1), "const")
    assert torch.allclose(flat[0], mean_image[0], atol=1e-6)
    z = torch.randn(2, 4)
    assert torch.allclose(model.sample_at(z, psi=1.0), model.generator_ema(z, noise="const"))
    w = model.generator_ema.mapping(z)
    half = model.generator_ema.synthesize((w_avg + 0.5 * (w - w_avg))[:, None].expand(-1, model.num_ws, -1), "const")
    assert torch.allclose(model.sample_at(z, psi=0.5), half, atol=1e-6)


def test_noise_modes_and_the_running_mean_of_w():
    torch.manual_seed(0)
    model = small()
    for conv in model.generator_ema.synthesis.convs:
        torch.nn.init.ones_(conv.noise_strength)  # noise that shows
    z = torch.randn(2, 4)
    assert not torch.allclose(model.sample_at(z, noise="random"), model.sample_at(z, noise="random"))
    assert torch.equal(model.sample_at(z, noise="const"), model.sample_at(z, noise="const"))
    before = model.generator_ema.w_avg.clone()
    model.mix(z, z, 2)
    model.sample(4, psi=0.5)
    assert torch.equal(model.generator_ema.w_avg, before)  # pictures leave the running mean alone
    model.train()
    w = model.generator.mapping(z).mean(0)
    model.generator.map(z)
    assert torch.allclose(model.generator.w_avg, 0.005 * w, atol=1e-7)  # decay 0.995 from zero


def test_training_steps_run_under_bf16_autocast():
    model = small()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pairs, _ = model.adversarial_terms(torch.rand(4, 1, 8, 8), True)
    assert model.generator.w_avg.dtype == torch.float32 and torch.isfinite(pairs[0].fake).all()


@pytest.mark.parametrize("kw, message", [
    ({"mixing": 1.5}, r"style-mixing probability must lie in \[0, 1\]"),
    ({"mixing": -0.1}, r"style-mixing probability must lie in \[0, 1\]"),
    ({"x_shape": (1, 27, 27)}, "never reaches a side of 27"),
    ({"x_shape": (1, 30, 30)}, "never reaches a side of 30"),
    ({"x_shape": (1, 6, 6)}, "never reaches a side of 6"),
    ({"x_shape": (1, 28, 14)}, "square images"),
    ({"x_shape": (64,)}, "makes images of shape"),
    ({"w_dim": 0}, "w_dim must be a positive integer"),
])
def test_bad_arguments_are_refused_in_one_line(kw, message):
    with pytest.raises(ValueError, match=message):
        small(**kw)


def test_bad_picture_arguments():
    model = small()
    with pytest.raises(ValueError, match=r"psi must lie in \[0, 1\]"):
        model.sample(2, psi=1.5)
    with pytest.raises(ValueError, match=r"crossover must lie in \[0, 4\]"):
        model.mix(torch.randn(1, 4), torch.randn(1, 4), 7)
    with pytest.raises(ValueError, match="not conditional"):
        model.sample(2, y=torch.zeros(2))


def test_the_cli_trains_it_and_draws_mixing_and_truncation_pictures(tmp_path, capsys):
    from pprogen.cli import main

    out = tmp_path / "sg"
    assert main(["train", "stylegan", "--data", "digits", "--set", "channels=4", "--set", "d_channels=4", "--set",
                 "w_dim=8", "--epochs", "1", "--limit", "64", "--eval-samples", "32", "--out", str(out),
                 "--no-progress"]) == 0
    for picture in ("samples.png", "mixing.png", "truncation.png"):
        assert (out / picture).is_file()
    capsys.readouterr()
    assert main(["sample", str(out), "-n", "4", "--psi", "0.5", "--out", str(tmp_path / "t.npy")]) == 0
    assert "truncation psi = 0.5" in capsys.readouterr().out
    assert main(["sample", str(out), "--psi", "1.5", "--out", str(tmp_path / "bad.png")]) == 2
    assert "--psi must lie in [0, 1]" in capsys.readouterr().err and not (tmp_path / "bad.png").exists()
    assert main(["train", "stylegan", "--data", "digits", "--set", "mixing=2", "--out", str(tmp_path / "m"),
                 "--no-progress"]) == 2
    assert "style-mixing probability" in capsys.readouterr().err and not (tmp_path / "m").exists()
