"""The adversarial trainer: loss gradients, penalties against hand computations, exact EMA, exact resume,
training progress on the ring, the NaN guard and bad input."""

import math
from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pprogen
from pprogen.data import MODES, load_dataset
from pprogen.inference.adversarial import (
    LOSSES,
    AdversarialTrainer,
    discriminator_loss,
    ema_update,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from pprogen.inference.metrics import mode_metrics
from pprogen.inference.train import NonFiniteLossError
from pprogen.runs import Run

# critic outputs where every loss is in its active region (hinge margins not yet met)
REAL_OUT = torch.tensor([-0.5, 0.3, 0.8])
FAKE_OUT = torch.tensor([0.2, 0.7, -0.4])


def _grads(loss, real_out, fake_out):
    r = real_out.clone().requires_grad_(True)
    f = fake_out.clone().requires_grad_(True)
    d_r, d_f = torch.autograd.grad(discriminator_loss(loss, r, f), (r, f))
    (g_f,) = torch.autograd.grad(generator_loss(loss, f), (f,))
    return d_r, d_f, g_f


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_pushes_d_up_on_real_and_down_on_fake_and_g_the_other_way(loss):
    d_r, d_f, g_f = _grads(loss, REAL_OUT, FAKE_OUT.abs() + 0.1)  # lsgan's fake term pushes down only above 0
    # gradient descent moves the outputs against these gradients
    assert (d_r < 0).all(), "a discriminator step must raise D on real data"
    assert (d_f > 0).all(), "a discriminator step must lower D on fakes"
    assert (g_f < 0).all(), "a generator step must raise D on its fakes"


def test_loss_gradients_equal_their_closed_forms():
    r, f, n = REAL_OUT, FAKE_OUT, REAL_OUT.numel()
    d_r, d_f, g_f = _grads("nonsaturating", r, f)
    assert torch.allclose(d_r, -torch.sigmoid(-r) / n) and torch.allclose(d_f, torch.sigmoid(f) / n)
    assert torch.allclose(g_f, -torch.sigmoid(-f) / n)
    _, _, g_f = _grads("minimax", r, f)
    assert torch.allclose(g_f, -torch.sigmoid(f) / n)  # d/df log(1 - sigmoid(f)) = -sigmoid(f)
    d_r, d_f, g_f = _grads("lsgan", r, f)
    assert torch.allclose(d_r, (r - 1) / n) and torch.allclose(d_f, f / n) and torch.allclose(g_f, (f - 1) / n)
    d_r, d_f, g_f = _grads("hinge", torch.tensor([0.5, 1.5]), torch.tensor([-0.5, -1.5]))
    assert d_r.tolist() == [-0.5, 0.0] and d_f.tolist() == [0.5, 0.0] and g_f.tolist() == [-0.5, -0.5]
    d_r, d_f, g_f = _grads("wgan_gp", r, f)
    assert torch.allclose(d_r, torch.full_like(r, -1 / n)) and torch.allclose(d_f, torch.full_like(f, 1 / n))


class Quadratic(nn.Module):
    """D(x) = x^T A x / 2 + b^T x, whose input gradient A_sym x + b is known by hand."""

    def __init__(self, dim):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))

    def forward(self, x):
        return 0.5 * torch.einsum("ni,ij,nj->n", x, self.a, x) + x @ self.b

    def input_grad(self, x):
        return x @ ((self.a + self.a.T) / 2).T + self.b


def test_gradient_penalty_is_computed_on_interpolates_and_matches_a_hand_computation():
    critic = Quadratic(3)
    real = torch.randn(5, 3, dtype=torch.float64)
    fake = torch.randn(5, 3, dtype=torch.float64)
    eps = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    x_hat = eps[:, None] * real + (1 - eps[:, None]) * fake
    expected = (critic.input_grad(x_hat).norm(dim=1) - 1).pow(2).mean()
    penalty = gradient_penalty(critic, real, fake, eps=eps)
    assert torch.allclose(penalty, expected, rtol=1e-12)
    # the penalty is differentiable in the critic's weights (double backward): its gradient in b by hand
    (grad_b,) = torch.autograd.grad(penalty, critic.b)
    g = critic.input_grad(x_hat).detach()
    norm = g.norm(dim=1, keepdim=True)
    assert torch.allclose(grad_b, (2 * (norm - 1) * g / norm).mean(0), rtol=1e-10)
    # images: the norm runs over all pixels of each example
    conv = nn.Conv2d(1, 1, 3, bias=False).double()
    imgs_r, imgs_f = torch.randn(2, 1, 5, 5, dtype=torch.float64), torch.randn(2, 1, 5, 5, dtype=torch.float64)
    out = gradient_penalty(lambda x: conv(x).sum((1, 2, 3)), imgs_r, imgs_f, eps=torch.tensor([0.3, 0.6]).double())
    ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    grad = torch.nn.functional.conv_transpose2d(ones, conv.weight)  # d(sum of conv outputs)/d(input), for any input
    assert torch.allclose(out, (grad.norm() - 1) ** 2)


def test_r1_penalty_matches_a_hand_computation():
    critic = Quadratic(4)
    real = torch.randn(6, 4, dtype=torch.float64)
    assert torch.allclose(r1_penalty(critic, real), critic.input_grad(real).pow(2).sum(1).mean(), rtol=1e-12)


def test_ema_update_is_exact():
    average, current = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
    before = [p.detach().clone() for p in average.parameters()]
    ema_update(average, current, 0.75)
    for a, b, c in zip(average.parameters(), before, current.parameters()):
        assert torch.equal(a, 0.75 * b + 0.25 * c)


def small_gan(**kw):
    return pprogen.create_model("gan", hidden_dims=(64, 64), d_hidden_dims=(64, 64), **kw)


def test_the_trainer_keeps_the_moving_average_of_the_generator_exactly():
    data = load_dataset("ring8").train[:32]
    for warmup, decays in ((False, (0.9, 0.9)), (True, (1 / 10, 2 / 11))):  # warm-up: min(ema, (1 + t) / (10 + t))
        model = small_gan()
        trainer = AdversarialTrainer(model, ema=0.9, ema_warmup=warmup, batch_size=32, progress=False, device="cpu")
        for decay in decays:
            before = [p.detach().clone() for p in model.generator_ema.parameters()]
            trainer.step([(data, {})])
            for avg, old, new in zip(model.generator_ema.parameters(), before, model.generator.parameters()):
                assert torch.allclose(avg, decay * old + (1 - decay) * new, rtol=0, atol=1e-7)
                assert not avg.requires_grad
        assert trainer.ema_updates == 2


def test_a_few_hundred_steps_on_the_ring_cover_more_modes_than_at_initialization():
    torch.manual_seed(0)
    model = pprogen.create_model("gan", hidden_dims=(128, 128, 128), d_hidden_dims=(128, 128, 128))
    centers, sigma = MODES["ring8"]
    data = load_dataset("ring8").train
    loose = 3 * sigma  # scored within 9 sigma (0.09): 585 steps are too few for 3 sigma (the benchmark runs 8000)
    start = mode_metrics(model.sample(2000), centers, loose)
    trainer = AdversarialTrainer(model, lr_g=1e-3, lr_d=1e-3, betas=(0.5, 0.9), ema=None, batch_size=256,
                                 progress=False, device="cpu")
    model.generator_ema = model.generator  # no average: sample from the trained weights
    trainer.fit(data, epochs=15)  # 39 steps per epoch
    end = mode_metrics(model.sample(2000), centers, loose)
    assert start["modes"] <= 1
    assert end["modes"] >= 6 and end["high_quality"] > start["high_quality"] + 0.3


def test_a_killed_run_resumes_exactly(tmp_path):
    data = load_dataset("ring8").train[:512]

    def train(run, resume=False, kill_at=None):
        torch.manual_seed(3)
        model = small_gan()
        trainer = AdversarialTrainer(model, loss="wgan_gp", critic_steps=2, batch_size=64, progress=False,
                                     device="cpu", schedule="linear", r1_weight=0.1)

        def kill(epoch, record):
            if epoch == kill_at:
                raise KeyboardInterrupt  # killed during epoch 3, before its checkpoint

        with pytest.raises(KeyboardInterrupt) if kill_at else nullcontext():
            trainer.fit(data, epochs=4, run=run, resume=resume, callback=kill)
        return model

    straight = train(Run.create({"model": "gan", "data": "ring8"}, tmp_path / "a"))
    run = Run.create({"model": "gan", "data": "ring8"}, tmp_path / "b")
    train(run, kill_at=3)
    assert run.load_checkpoint()["epoch"] == 2
    resumed = train(run, resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert len(run.read_metrics()) == 4


def _train_to(model, data, run, epochs, kill_at=None, resume=False, seen=None, **kw):
    """Fit ``model`` for ``epochs``; ``kill_at``: killed during that epoch, before its checkpoint. ``seen``
    collects each finished epoch's (stage, alpha) of a growing model."""
    trainer = AdversarialTrainer(model, progress=False, device="cpu", **kw)

    def each(epoch, record):
        if epoch == kill_at:
            raise KeyboardInterrupt
        if seen is not None:
            seen.append((int(model.stage), round(float(model.alpha), 6)))

    with pytest.raises(KeyboardInterrupt) if kill_at else nullcontext():
        return trainer.fit(data, epochs=epochs, run=run, resume=resume, callback=each)


def test_a_linear_schedule_resumed_with_more_epochs_decays_on_from_where_it_stood(tmp_path):
    data = load_dataset("ring8").train[:64]  # batch 32: 2 steps an epoch
    run = Run.create({"model": "gan", "data": "ring8"}, tmp_path / "a")
    settings = dict(batch_size=32, schedule="linear", lr_g=1e-3, lr_d=1e-3)
    _train_to(small_gan(), data, run, epochs=4, kill_at=3, **settings)  # 2 of 4 epochs: the rate is at half
    history = _train_to(small_gan(), data, run, epochs=6, resume=True, **settings)
    # from 0.5 at step 4 in a straight line to 0 at step 12 (not back up to 1 - 4/12 as a new plan would give)
    assert [r["lr_g"] for r in history.records[2:]] == pytest.approx([1e-3 * 0.5 * (12 - t) / 8 for t in (6, 8, 10, 12)])
    assert history.records[1]["lr_g"] == pytest.approx(1e-3 * 0.5)
    resumed_again = _train_to(small_gan(), data, run, epochs=6, resume=True, **settings)  # nothing left to train
    assert len(resumed_again.records) == 6
    with pytest.raises(ValueError, match="linear schedule ended at epoch 6 with the learning rate at 0"):
        _train_to(small_gan(), data, run, epochs=8, resume=True, **settings)


def test_progressive_growing_resumed_with_more_epochs_keeps_its_plan(tmp_path):
    torch.manual_seed(0)
    data = torch.rand(32, 1, 28, 28)  # batch 16: 2 steps an epoch
    run = Run.create({"model": "progan", "data": "random"}, tmp_path / "a")
    settings = dict(batch_size=16, loss="wgan_gp", ema=None)
    seen = []
    _train_to(pprogen.create_model("progan", channels=4), data, run, epochs=3, kill_at=3, seen=seen, **settings)
    with pytest.raises(ValueError, match="grows its resolution over 3 epochs; --epochs 2 would stop it"):
        _train_to(pprogen.create_model("progan", channels=4), data, run, epochs=2, resume=True, **settings)
    _train_to(pprogen.create_model("progan", channels=4), data, run, epochs=6, resume=True, seen=seen, **settings)
    # grown over the first 3 epochs as planned (a plan stretched to 6 would go back to 14 pixels in epoch 3),
    # the extra epochs at full resolution
    assert seen == [(0, 1.0), (1, 1.0), (2, 1.0), (2, 1.0), (2, 1.0), (2, 1.0)]


class Exploding(nn.Module):
    """Returns NaN once ``armed``: a stand-in for a diverged network."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.armed = inner, False

    def forward(self, *args):
        out = self.inner(*args)
        return out * math.nan if self.armed else out


@pytest.mark.parametrize("side", ["discriminator", "generator"])
def test_a_nan_in_either_network_stops_with_the_last_good_checkpoint_intact(side, tmp_path):
    model = small_gan()
    if side == "discriminator":
        model.discriminator = Exploding(model.discriminator)
        target = model.discriminator
    else:
        model.generator = Exploding(model.generator)  # same parameters in the same order as generator_ema
        target = model.generator
    data = load_dataset("ring8").train[:256]
    run = Run.create({"model": "gan", "data": "ring8"}, tmp_path / "run")
    trainer = AdversarialTrainer(model, batch_size=64, progress=False, device="cpu")

    def arm(epoch, record):
        target.armed = epoch == 2  # the third epoch diverges at its first step

    trainer.fit(data, epochs=2, run=run, callback=arm)
    saved = run.load_checkpoint()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    culprit = "discriminator loss" if side == "discriminator" else "generator output"
    with pytest.raises(NonFiniteLossError, match=f"non-finite {culprit} at epoch 3, step 1"):
        trainer.fit(data, epochs=4, run=run, resume=True)
    after = run.load_checkpoint()
    assert after["epoch"] == saved["epoch"] == 2
    for key, value in saved["model"].items():
        assert torch.equal(after["model"][key], value)
        assert torch.equal(model.state_dict()[key], weights[key]), f"{key} changed by a non-finite step"


def test_bad_settings_are_one_line_errors():
    model = small_gan()
    with pytest.raises(ValueError, match="unknown GAN loss 'hinj'; did you mean 'hinge'"):
        AdversarialTrainer(model, loss="hinj")
    with pytest.raises(ValueError, match="critic_steps must be a positive integer"):
        AdversarialTrainer(model, critic_steps=0)
    with pytest.raises(ValueError, match="ema is the moving average's decay"):
        AdversarialTrainer(model, ema=1.5)
    with pytest.raises(TypeError, match="no discriminator module"):
        AdversarialTrainer(nn.Linear(2, 2))
    trainer = AdversarialTrainer(model, progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"makes examples of shape \(2,\) but the data have \(3,\)"):
        trainer.fit(torch.randn(64, 3), epochs=1)


def test_spectral_norm_bounds_every_discriminator_layer():
    model = small_gan()
    AdversarialTrainer(model, spectral_norm=True, progress=False, device="cpu")
    model.discriminator.train()
    x = torch.randn(16, 2)
    for _ in range(30):  # power iterations converge during forward passes in train mode
        model.discriminator(x)
    layers = [m for m in model.discriminator.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 3
    for layer in layers:
        assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2) == pytest.approx(1.0, abs=0.02)


def test_the_step_applies_r1_and_the_default_gradient_penalty_as_configured():
    data = load_dataset("ring8").train[:32]
    torch.manual_seed(0)
    model = small_gan()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    d_losses = {}
    for weight in (0.0, 4.0):
        model.load_state_dict(state)
        expected = r1_penalty(model.discriminator, data).item()  # on the weights the step starts from
        trainer = AdversarialTrainer(model, r1_weight=weight, batch_size=32, progress=False, device="cpu", ema=None)
        torch.manual_seed(1)
        out = trainer.step([(data, {})])
        d_losses[weight] = out["d_loss"]
        if weight:
            assert out["r1_d"] == pytest.approx(expected, rel=1e-5)
    assert d_losses[4.0] - d_losses[0.0] == pytest.approx(0.5 * 4.0 * expected, rel=1e-4)
    trainer = AdversarialTrainer(small_gan(), loss="wgan_gp", batch_size=32, progress=False, device="cpu")
    assert trainer.gp_weight == 10.0 and "gp_d" in trainer.step([(data, {})])


def test_linear_decay_and_fresh_batches_for_every_critic_step():
    data = load_dataset("ring8").train[:64]
    trainer = AdversarialTrainer(small_gan(), critic_steps=2, batch_size=16, schedule="linear", lr_g=1e-3, lr_d=2e-3,
                                 progress=False, device="cpu")
    history = trainer.fit(data, epochs=4)  # 2 generator updates an epoch, 8 in all
    assert [r["lr_g"] for r in history.records] == pytest.approx([1e-3 * (1 - t / 8) for t in (2, 4, 6, 8)])
    assert history.records[0]["lr_d"] == pytest.approx(2e-3 * 0.75)

    model = small_gan()
    seen = []
    model.discriminator.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    AdversarialTrainer(model, critic_steps=2, batch_size=16, progress=False, device="cpu").fit(data, epochs=1)
    inputs = torch.cat(seen)  # every input the critic saw in the epoch, fakes included
    real_rows = {i for i in range(64) if (inputs == data[i]).all(1).any()}
    assert len(real_rows) == 64  # the epoch's 4 critic batches are 4 different quarters of the data


class UserGAN(nn.Module):
    """A GAN as the module docstring says a user may write it: a Pyro program drawing z, and a discriminator;
    no generator / generator_ema modules."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, num_samples=1):
        with pyro.plate("samples", num_samples):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        return self.net(z)


def test_a_user_gan_without_an_average_trains_with_the_defaults():
    model = UserGAN()
    trainer = AdversarialTrainer(model, batch_size=32, progress=False, device="cpu")
    assert trainer.ema is None
    before = [p.detach().clone() for p in model.net.parameters()]
    trainer.fit(load_dataset("ring8").train[:64], epochs=1)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net.parameters()))
    with pytest.raises(TypeError, match="no generator_ema module to average into"):
        AdversarialTrainer(UserGAN(), ema=0.99, progress=False, device="cpu")
    assert AdversarialTrainer(small_gan(), progress=False, device="cpu").ema == 0.999
