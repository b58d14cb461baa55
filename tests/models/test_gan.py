"""The GAN zoo: generators as Pyro programs, every GAN's training contract, architectures, fade-in,
conditional sampling, CycleGAN's cycle loss and bad input."""

import inspect

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Predictive
from safetensors.torch import load_file, save_file

import pprogen
from pprogen.data import MODES, load_dataset
from pprogen.inference.adversarial import AdversarialTrainer, discriminator_loss, generator_loss
from pprogen.registry import get_card

GANS = [n for n in pprogen.list_models() if get_card(n).kind == "gan"]
SMALL = {"x_shape": (1, 8, 8), "z_dim": 4, "hidden_dims": (16,), "d_hidden_dims": (16,), "channels": 8, "width": 8,
         "blocks": 1}


def small(name, **kw):
    params = inspect.signature(get_card(name).factory).parameters
    return pprogen.create_model(name, **{**{k: v for k, v in SMALL.items() if k in params}, **kw})


def batch_for(model, n=8):
    """Real data of the right shape: (2C, H, W) pairs for translation models, labels for cgan."""
    if hasattr(model, "split"):
        return torch.rand(n, 2 * model.channels, *model.x_shape[1:]), {}
    cond = {"y": torch.arange(n) % model.num_classes} if model.conditional else {}
    return torch.rand(n, *model.x_shape), cond


def test_every_gan_of_the_issue_is_registered():
    assert set(GANS) == {"gan", "dcgan", "cgan", "cyclegan", "pix2pix", "progan", "vaegan", "stylegan"}


@pytest.mark.parametrize("name", GANS)
def test_adversarial_losses_are_finite_and_reach_every_parameter(name):
    torch.manual_seed(0)
    model = small(name)
    real, cond = batch_for(model)
    d_params = dict(model.discriminator.named_parameters())
    g_params = dict(model.generator.named_parameters())
    reached = set()

    def collect(loss, params, side):
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for pname, g in zip(params, grads):
            if g is not None:
                assert torch.isfinite(g).all(), pname
                if g.abs().sum() > 0:
                    reached.add(f"{side}.{pname}")

    for progress in (0.0, 0.45, 0.8) if name == "progan" else (None,):  # progan uses two stages' layers at a time
        if progress is not None:
            model.schedule(progress)
        pairs, _ = model.adversarial_terms(real, False, **cond)
        collect(sum(discriminator_loss("nonsaturating", p.critic(p.real, **p.condition),
                                       p.critic(p.fake.detach(), **p.condition)) for p in pairs), d_params, "d")
        pairs, extra = model.adversarial_terms(real, True, **cond)
        collect(sum(generator_loss("nonsaturating", p.critic(p.fake, **p.condition)) for p in pairs)
                + sum(extra.values()), g_params, "g")
    everything = {f"d.{n}" for n in d_params} | {f"g.{n}" for n in g_params}
    assert reached == everything, f"no gradient at {sorted(everything - reached)}"


@pytest.mark.parametrize("name", GANS)
def test_samples_have_the_data_shape_and_weights_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = small(name)
    real, cond = batch_for(model, 5)
    source = model.split(real)[0] if hasattr(model, "split") else None
    kw = {"source": source} if source is not None else {}
    torch.manual_seed(1)
    x = model.sample(5, **kw)
    assert x.shape == (5, *model.x_shape) and torch.isfinite(x).all()
    if len(model.x_shape) == 3:
        assert 0 <= x.min() and x.max() <= 1  # image GANs end in a sigmoid
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.safetensors")
    torch.manual_seed(123)
    again = small(name)
    again.load_state_dict(load_file(tmp_path / "m.safetensors"))
    torch.manual_seed(1)
    assert torch.equal(again.sample(5, **kw), x)


def test_the_generator_is_a_pyro_program_with_a_z_site():
    model = small("gan", x_dim=2).eval()
    samples = Predictive(model, num_samples=3)(num_samples=5)
    assert samples["z"].shape == (3, 5, 4) and samples["x"].shape == (3, 5, 2)
    z = torch.randn(5, 4)
    trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(num_samples=5)
    assert torch.equal(trace.nodes["_RETURN"]["value"], model.generator_ema(z))
    expected = dist.Normal(0, 1).log_prob(z).sum()
    assert torch.allclose(trace.log_prob_sum(), expected)
    assert trace.nodes["z"]["cond_indep_stack"][0].name == "data"
    model.train()  # train mode draws from the generator being trained, not its moving average
    trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(num_samples=5)
    assert torch.equal(trace.nodes["_RETURN"]["value"], model.generator(z))


@pytest.mark.parametrize("size, channels", [(8, 1), (28, 1), (32, 3)])
def test_dcgan_builds_for_8_28_and_32_pixel_images(size, channels):
    model = pprogen.create_model("dcgan", x_shape=(channels, size, size), channels=8)
    x = model.sample(3)
    assert x.shape == (3, channels, size, size)
    assert model.discriminator(x).shape == (3,)


@pytest.mark.parametrize("size", [8, 28])
def test_pix2pix_unet_keeps_the_image_size(size):
    model = pprogen.create_model("pix2pix", x_shape=(1, size, size), width=8)
    a = torch.rand(2, 1, size, size)
    assert model.generator["ab"](a).shape == (2, 1, size, size)


def test_progan_grows_7_14_28_and_fades_each_stage_in():
    model = pprogen.create_model("progan", channels=8)
    g, d = model.generator, model.discriminator
    assert model.stages == 3 and g.base == 7
    steps = [(0.0, 0, 1.0), (0.2, 0, 1.0), (1 / 3, 1, 0.0), (0.5, 1, 1.0), (0.7, 2, 0.2), (0.99, 2, 1.0)]
    for progress, stage, alpha in steps:
        model.schedule(progress)
        assert (int(model.stage), model.resolution) == (stage, 7 * 2**stage)
        assert float(model.alpha) == pytest.approx(alpha, abs=1e-6)
    z = torch.randn(4, 64)
    with torch.no_grad():
        for stage in (1, 2):
            low = g(z, stage - 1, 1.0)
            faded = g(z, stage, 0.0)  # alpha = 0: exactly the previous stage, upsampled
            assert torch.allclose(faded, F.interpolate(low, scale_factor=2, mode="nearest"), atol=1e-6)
            x = torch.rand(4, 1, 7 * 2**stage, 7 * 2**stage)
            assert torch.allclose(d(x, stage, 0.0), d(F.avg_pool2d(x, 2), stage - 1, 1.0), atol=1e-5)
            half = g(z, stage, 0.5)
            assert torch.allclose(torch.logit(half), 0.5 * torch.logit(g(z, stage, 1.0)) + 0.5 * torch.logit(faded),
                                  atol=1e-4)
    model.schedule(0.1)
    real = torch.rand(4, 1, 28, 28)
    pairs, _ = model.adversarial_terms(real, True)
    assert pairs[0].real.shape == pairs[0].fake.shape == (4, 1, 7, 7)
    assert torch.allclose(pairs[0].real, F.avg_pool2d(real, 4))
    model.schedule(1.0)
    assert model.sample(2).shape == (2, 1, 28, 28)


def test_conditional_sampling_respects_the_label():
    torch.manual_seed(0)
    data = load_dataset("ring8")
    model = pprogen.create_model("cgan", x_shape=(2,), num_classes=8, hidden_dims=(128, 128))
    trainer = AdversarialTrainer(model, lr_g=1e-3, lr_d=1e-3, betas=(0.5, 0.9), batch_size=128, ema=None,
                                 progress=False, device="cpu")
    model.generator_ema = model.generator
    trainer.fit(data.train[:4096], epochs=20, condition={"y": data.labels["train"][:4096]})
    y = torch.arange(800) % 8
    x = model.sample(800, y=y)
    nearest = torch.cdist(x, MODES["ring8"][0]).argmin(1)  # the Bayes classifier of the ring: its nearest mode
    agreement = (nearest == y).float().mean().item()
    assert agreement > 0.7  # chance is 1 / 8


def test_cyclegan_cycle_loss_falls():
    torch.manual_seed(0)
    data = load_dataset("digits2inverted")
    model = pprogen.create_model("cyclegan", width=8, blocks=1)
    a, b = model.split(data.valid)
    with torch.no_grad():
        before = model.cycle_loss(a, b).item()
    trainer = AdversarialTrainer(model, loss="lsgan", ema=None, batch_size=32, lr_g=1e-3, lr_d=1e-3,
                                 progress=False, device="cpu")
    history = trainer.fit(data.train[:640], epochs=5)
    model.train()
    with torch.no_grad():
        after = model.cycle_loss(a, b).item()
    assert after < 0.5 * before
    cycle = [r["cycle"] for r in history.records]
    assert cycle[-1] < cycle[0]


def test_bad_input_is_a_one_line_error():
    cgan = small("cgan", num_classes=10)
    x = torch.rand(8, 1, 8, 8)
    with pytest.raises(ValueError, match="conditioned on labels: pass y"):
        cgan.check_data(x)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), got values in \[0, 12\]"):
        cgan.check_data(x, y=torch.tensor([0, 1, 2, 3, 4, 5, 6, 12]))
    with pytest.raises(ValueError, match="is not conditional but got labels"):
        small("dcgan").check_data(x, y=torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"makes examples of shape \(1, 8, 8\) but the data have \(1, 28, 28\)"):
        small("dcgan").check_data(torch.rand(8, 1, 28, 28))
    pix = small("pix2pix")
    with pytest.raises(ValueError, match="pix2pix learns from paired examples.*use cyclegan"):
        pix.check_data(load_dataset("digits2inverted").train, pairing="unpaired")
    trainer = AdversarialTrainer(pix, progress=False, device="cpu")
    with pytest.raises(ValueError, match="pix2pix learns from paired examples"):  # the trainer reads the pairing
        trainer.fit(load_dataset("digits2inverted"), epochs=1)
    with pytest.raises(ValueError, match=r"stack an A and a B image .* as \(2, 8, 8\), got \(1, 8, 8\)"):
        pix.check_data(x, pairing="paired")
    with pytest.raises(ValueError, match="translates images: pass source images"):
        pix.sample(3)
    with pytest.raises(ValueError, match="pack must be a positive integer"):
        pprogen.create_model("gan", pack=0)
    pyro.clear_param_store()
