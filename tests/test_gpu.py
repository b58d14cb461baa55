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
