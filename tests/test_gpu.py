"""CUDA checks; skipped without a GPU (see conftest.py)."""

import pytest
import torch

import pprogen
from pprogen.inference import fit, log_marginal

pytestmark = pytest.mark.gpu


def test_fit_keeps_data_model_and_guide_on_the_gpu():
    model = pprogen.create_model("vae", x_dim=6, z_dim=2, hidden_dims=(8,))
    guide = model.default_guide()
    x = (torch.rand(64, 6) < 0.5).float()
    history = fit(model, guide, x, valid_data=x[:16], epochs=2, batch_size=16, device="cuda", progress=False)
    assert all(p.device.type == "cuda" for p in list(model.parameters()) + list(guide.parameters()))
    assert all(torch.isfinite(torch.tensor(r["valid_loss"])) for r in history.records)


def test_evidence_on_the_gpu_matches_the_closed_form():
    from tests.models.test_vae import exact_log_evidence, exact_posterior_guide, linear_gaussian_vae

    model = linear_gaussian_vae().cuda()
    x = model.sample(5).detach()
    evidence = log_marginal(model, exact_posterior_guide(model), x, num_samples=20)
    assert torch.allclose(evidence.log_prob.double(), exact_log_evidence(model, x).cpu(), atol=1e-4)


def test_bf16_autocast_on_the_gpu_trains_pixelcnn_and_a_gan_with_float32_weights():
    from tests.inference.test_accel import FAMILIES, ProductDtypes, small_dcgan
    from pprogen.inference import AdversarialTrainer

    kw, make_data = FAMILIES["pixelcnn"]
    model = pprogen.create_model("pixelcnn", **kw)
    x = make_data()
    history = fit(model, model.default_guide(), x[:64], valid_data=x[64:], epochs=2, batch_size=16, device="cuda",
                  progress=False, autocast="bf16", restore_best=False)
    assert all(torch.isfinite(torch.tensor(r["valid_loss"])) for r in history.records)
    with torch.no_grad():
        exact = -model.log_prob(x[64:].cuda()).mean().item()
    assert abs(history.records[-1]["valid_loss"] - exact) < 1e-4 * max(1.0, abs(exact))  # validation in float32
    gan = small_dcgan()
    trainer = AdversarialTrainer(gan, loss="wgan_gp", batch_size=16, device="cuda", progress=False, autocast="bf16")
    gan.cuda()  # fit moves the model; a bare step does not
    real = (torch.rand(32, 1, 8, 8) < 0.5).float().cuda()
    with ProductDtypes() as seen:
        out = trainer.step([(real[:16], {})])
    assert torch.bfloat16 in seen.dtypes and all(v == v and abs(v) < float("inf") for v in out.values())
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in gan.parameters())


def test_a_gpu_training_step_makes_no_tensor_on_the_host():
    from tests.inference.test_accel import FAMILIES, HostTensors
    from pprogen.inference.train import TrainStep, build_loss, collect_parameters, make_optimizer

    kw, make_data = FAMILIES["vae"]
    model = pprogen.create_model("vae", **kw).cuda()
    loss_module = build_loss(model, model.default_guide().cuda())
    x = make_data().cuda()
    params = collect_parameters(loss_module, x[:16])
    step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=1e-3))
    step(x[:16], 6.0)
    with HostTensors() as audit:
        step(x[16:32], 6.0)
    assert audit.calls == []
    assert all(p.grad.device.type == "cuda" for p in params if p.grad is not None)


def test_compiled_fit_on_the_gpu_matches_eager():
    x = (torch.rand(64, 8, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    losses = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = pprogen.create_model("vae", x_dim=8, z_dim=2, hidden_dims=(16,))
        losses.append(fit(model, model.default_guide(), x, epochs=2, batch_size=32, device="cuda", progress=False,
                          compile=compiled).train_loss)
    assert all(abs(a - b) < 1e-3 * abs(a) for a, b in zip(*losses))


def test_replayed_steps_on_the_gpu_train_identically_to_the_program():
    """The replay on CUDA: the same losses and parameters as running the program, the CUDA random stream included."""
    from tests.inference.test_replay import binary_batches, tiny_vae, train

    batches = [(x.cuda(), kw) for x, kw in binary_batches()]

    def build():
        return tiny_vae()().cuda()

    general = train(build, batches, fast=False)
    fast = train(build, batches, fast=True)
    assert fast[2].replay.reason is None and fast[2].replay.replayed > 0
    assert fast[0] == general[0]
    assert all(torch.equal(a, b) for a, b in zip(fast[1], general[1]))
