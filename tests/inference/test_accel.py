"""The speed options (bf16 autocast, torch.compile) and the hot-loop audit: no tensor made on the host per step."""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import pprogen
import pprogen.inference.train as train_module
from pprogen.data import load_dataset
from pprogen.inference import AdversarialTrainer, fit
from pprogen.inference.accel import check_autocast, networks
from pprogen.inference.train import TrainStep, build_loss, collect_parameters, make_optimizer

PACKAGE = str(Path(pprogen.__file__).resolve().parent)


class ProductDtypes(TorchDispatchMode):
    """Records the dtype of every matrix product and convolution that runs inside it."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] in ("mm", "addmm", "bmm", "convolution"):
            self.dtypes.add(out.dtype)
        return out


# Small members of each family the option is offered for, with data they fit.
def _binary(shape, n=96, seed=0):
    return (torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


FAMILIES = {
    "vae": (dict(x_dim=16, z_dim=3, hidden_dims=(32,)), lambda: _binary((16,))),
    "realnvp": ({}, lambda: load_dataset("moons").train[:96]),
    "maf": ({}, lambda: load_dataset("moons").train[:96]),
    "nsf": ({}, lambda: load_dataset("moons").train[:96]),
    "pixelcnn": (dict(x_shape=(1, 6, 6), hidden_channels=8, num_blocks=2, kernel_size=3), lambda: _binary((1, 6, 6))),
}


def _step(name, autocast):
    kw, make_data = FAMILIES[name]
    torch.manual_seed(0)
    model = pprogen.create_model(name, **kw)
    guide = model.default_guide()
    loss_module = build_loss(model, guide)
    x = make_data()
    params = collect_parameters(loss_module, x[:32])
    return TrainStep(loss_module, params, make_optimizer("adam", params, lr=1e-3), autocast=autocast), x, params


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_bf16_autocast_runs_products_in_bf16_keeps_float32_state_and_a_close_loss(name):
    losses = {}
    for autocast in (None, "bf16"):
        step, x, params = _step(name, autocast)
        with ProductDtypes() as seen:
            torch.manual_seed(1)
            loss, finite = step(x[:32])
        losses[autocast] = loss
        expected = torch.bfloat16 if autocast else torch.float32
        assert torch.bfloat16 in seen.dtypes if autocast else seen.dtypes == {torch.float32}, (name, seen.dtypes)
        assert expected in seen.dtypes
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params if p.grad is not None)
        state = [v for s in step.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
        assert state and all(v.dtype == torch.float32 for v in state)
        assert math.isfinite(loss) and finite
    # the same weights and draws: bf16's 8-bit mantissa moves the loss a little, never far
    assert losses["bf16"] == pytest.approx(losses[None], rel=2e-2)


@pytest.mark.parametrize("name", ["realnvp", "pixelcnn"])
def test_training_under_bf16_stays_finite_and_validation_stays_float32(name, monkeypatch):
    kw, make_data = FAMILIES[name]
    x = make_data()
    valid_dtypes = set()
    original = train_module.evaluate_loss

    def recorded(*args, **kwargs):
        with ProductDtypes() as seen:
            value = original(*args, **kwargs)
        valid_dtypes.update(seen.dtypes)
        return value

    monkeypatch.setattr(train_module, "evaluate_loss", recorded)
    finals = {}
    for autocast in (None, "bf16"):
        torch.manual_seed(0)
        model = pprogen.create_model(name, **kw)
        history = fit(model, model.default_guide(), x[:64], valid_data=x[64:], epochs=4, batch_size=16,
                      progress=False, autocast=autocast, restore_best=False)
        assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["valid_loss"]) for r in history.records)
        # flows and PixelCNN have exact densities: the recorded validation loss is float32's -log p(x)
        with torch.no_grad():
            exact = -model.log_prob(x[64:]).mean().item()
        assert history.records[-1]["valid_loss"] == pytest.approx(exact, rel=1e-5, abs=1e-5)
        finals[autocast] = history.records[-1]["valid_loss"]
    assert valid_dtypes == {torch.float32}
    assert finals["bf16"] == pytest.approx(finals[None], rel=3e-2)


def small_dcgan():
    torch.manual_seed(0)
    return pprogen.create_model("dcgan", x_shape=(1, 8, 8), z_dim=8, channels=8)


@pytest.mark.parametrize("loss,r1", [("nonsaturating", 0.0), ("wgan_gp", 0.0), ("hinge", 1.0)])
def test_the_adversarial_trainer_under_bf16_keeps_float32_weights_and_finite_penalties(loss, r1):
    real = load_dataset("digits").train[:64]
    results = {}
    for autocast in (None, "bf16"):
        model = small_dcgan()
        trainer = AdversarialTrainer(model, loss=loss, r1_weight=r1, batch_size=16, progress=False,
                                     autocast=autocast, seed=0)
        torch.manual_seed(3)
        with ProductDtypes() as seen:
            out = trainer.step([(real[:16], {})])
        assert (torch.bfloat16 in seen.dtypes) == (autocast == "bf16")
        assert all(math.isfinite(v) for v in out.values()), out
        assert all(p.dtype == torch.float32 for p in model.parameters())
        history = trainer.fit(real, epochs=2)
        assert all(math.isfinite(r["d_loss"]) and math.isfinite(r["g_loss"]) for r in history.records)
        results[autocast] = out
    for key in ("d_loss", "g_loss", *[k for k in results[None] if k.startswith(("gp_", "r1_"))]):
        assert results["bf16"][key] == pytest.approx(results[None][key], rel=5e-2, abs=1e-3), key


def test_bad_autocast_is_a_one_line_error_before_training():
    with pytest.raises(ValueError, match="unknown autocast 'fp16'.*bf16"):
        check_autocast("fp16", torch.device("cpu"))
    model = pprogen.create_model("vae", x_dim=4, z_dim=2, hidden_dims=(4,))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="unknown autocast"):
        fit(model, model.default_guide(), _binary((4,), 16), epochs=1, progress=False, autocast="fp16")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="unknown autocast"):
        AdversarialTrainer(small_dcgan(), autocast="float16")


# ---------------------------------------------------------------- torch.compile


def test_compile_targets_the_outermost_plain_torch_networks():
    vae = pprogen.create_model("vae", x_dim=8, z_dim=2, hidden_dims=(4,))
    assert sorted(networks(vae, vae.default_guide())) == ["0.decoder", "1.encoder"]
    realnvp = pprogen.create_model("realnvp")  # the coupling layers are transforms: their hypernetworks compile
    found = networks(realnvp)
    assert found and all(".layers." in k for k in found)
    assert all(not isinstance(m, torch.distributions.Transform) for m in found.values())
    assert sum(p.numel() for m in found.values() for p in m.parameters()) > 0.9 * sum(
        p.numel() for p in realnvp.parameters())
    assert sorted(networks(small_dcgan())) == ["0.discriminator", "0.generator", "0.generator_ema"]


def test_fit_with_compile_matches_eager_and_keeps_parameter_names():
    x = _binary((8,), 64)
    histories, names = {}, {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = pprogen.create_model("vae", x_dim=8, z_dim=2, hidden_dims=(16,))
        guide = model.default_guide()
        histories[compiled] = fit(model, guide, x, epochs=2, batch_size=32, progress=False, compile=compiled).train_loss
        names[compiled] = list(model.state_dict()) + list(guide.state_dict())
        assert (getattr(model.decoder, "_compiled_call_impl", None) is not None) == compiled
    assert names[True] == names[False]
    assert histories[True] == pytest.approx(histories[False], rel=1e-4)


# ---------------------------------------------------------------- the hot loop makes no host tensor


FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange,
             torch.rand, torch.randn, torch.randint, torch.randperm, torch.eye, torch.linspace}


class HostTensors(TorchFunctionMode):
    """Records factory calls made from pprogen's own code without a ``device``: on a GPU run each would be
    a tensor made on the host (and a copy to the GPU, or a device mismatch)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            frame = sys._getframe(1)
            while frame is not None and "/torch/" in frame.f_code.co_filename:
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(PACKAGE):
                self.calls.append(f"{func.__name__} at {Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
        return func(*args, **kwargs)


def test_the_audit_catches_a_host_tensor_in_pprogen_code():
    from pprogen.inference import accel

    with HostTensors() as audit:
        exec(compile("torch.zeros(3)", accel.__file__, "exec"), {"torch": torch})
        torch.zeros(3, device="cpu")
    assert len(audit.calls) == 1 and audit.calls[0].startswith("zeros at accel.py")


@pytest.mark.parametrize("name,elbo", [("vae", "trace"), ("vae", "iwae"), ("vae", "stl"), ("realnvp", "trace"),
                                       ("pixelcnn", "trace"), ("maf", "trace")])
def test_a_training_step_makes_no_tensor_on_the_host(name, elbo):
    kw, make_data = FAMILIES[name]
    model = pprogen.create_model(name, **kw)
    loss_module = build_loss(model, model.default_guide(), elbo, num_particles=2 if elbo == "iwae" else 1)
    x = make_data()
    params = collect_parameters(loss_module, x[:16])
    step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=1e-3))
    step(x[:16], 6.0)  # first call: one-time structure checks may run
    with HostTensors() as audit:
        for _ in range(2):
            step(x[16:32], 6.0)
    assert audit.calls == []


ZOO = [name for name in pprogen.list_models() if name not in ("planar", "radial")]  # those two are guides only


@pytest.mark.parametrize("name", ZOO)
def test_no_zoo_model_makes_a_tensor_on_the_host_in_a_training_step(name):
    """Every zoo model, built by the CLI's own path for its default data, with its default estimator or trainer."""
    import argparse

    from pprogen.engine import build, condition_of, gan_trainer, prepare_run

    args = argparse.Namespace(model=name, data=None, data_dir=None, limit=48, set=None, guide="default", seed=0,
                              device="cpu", eval_samples=10, out=None)
    config, dataset, _, _, _ = prepare_run(args)
    if config["kind"] == "gan":
        model = pprogen.create_model(name, **config["model_args"])
        condition = condition_of(model, dataset, "train")
        trainer = gan_trainer(model, config["train"], torch.device("cpu"), 0, False)
        step = lambda rows: trainer.step([(dataset.train[rows], {k: v[rows] for k, v in condition.items()})])
    else:
        dataset, model, guide = build(config, dataset)
        condition = condition_of(model, dataset, "train")
        if hasattr(model, "init_from_data"):
            model.init_from_data(dataset.train)
        loss_module = build_loss(model, guide, config["train"]["elbo"])
        params = collect_parameters(loss_module, dataset.train[:16], **{k: v[:16] for k, v in condition.items()})
        train_step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=1e-3))
        step = lambda rows: train_step(dataset.train[rows], 3.0, **{k: v[rows] for k, v in condition.items()})
    step(slice(0, 16))  # first call: one-time structure checks may run
    with HostTensors() as audit:
        step(slice(16, 32))
    assert audit.calls == []
