import itertools

import pytest
import torch
from safetensors.torch import load_file, save_file

import pprogen

D = 10
CONFIGS = {
    "fvsbn": {},
    "nade": {"hidden_dim": 7},
    "made": {"hidden_dims": (16, 16)},
    "made_ensemble": {"hidden_dims": (16,), "num_masks": 3, "order_agnostic": True},
    "rnn_ar": {"hidden_dim": 8},
}


def build(name, x_dim=D):
    model = pprogen.create_model(name.replace("_ensemble", ""), x_dim=x_dim, **CONFIGS[name])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)  # away from the (near-uniform) initialisation
    return model.eval()


def all_configurations(d):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))


@pytest.mark.parametrize("name", CONFIGS)
def test_probabilities_over_all_1024_configurations_sum_to_one(name):
    model = build(name).double()
    log_p = model.log_prob(all_configurations(D).double())
    assert log_p.shape == (1024,)
    assert abs(torch.logsumexp(log_p, 0).exp().item() - 1.0) < 1e-5
    assert log_p.std() > 0.1  # not the uniform distribution


@pytest.mark.parametrize("name", CONFIGS)
def test_conditional_i_ignores_inputs_at_or_after_i(name):
    model = build(name)
    nets = model.distribution().nets
    x = (torch.rand(D) < 0.5).float()
    for k, net in enumerate(nets):
        jac = torch.autograd.functional.jacobian(net, x)  # jac[i, j] = d logit_i / d x_j
        order = model.order[k]
        for a in range(D):
            later = order[a:]  # inputs at or after position a in this ordering
            assert torch.all(jac[order[a], later] == 0), f"net {k}: conditional {a} sees a later input"
        assert jac.abs().sum() > 0


@pytest.mark.parametrize("name", ["nade", "made_ensemble", "rnn_ar"])
def test_ancestral_samples_follow_the_exact_probabilities(name):
    model = build(name, x_dim=3)
    torch.manual_seed(0)
    samples = model.sample(20000)
    configs = all_configurations(3)
    freq = (samples[:, None, :] == configs[None]).all(-1).float().mean(0)
    exact = model.log_prob(configs).exp()
    assert torch.allclose(freq, exact, atol=0.015)


def test_made_masks_and_orderings_survive_save_load(tmp_path):
    model = build("made_ensemble")
    x = (torch.rand(5, D) < 0.5).float()
    save_file(model.state_dict(), tmp_path / "made.safetensors")
    other = pprogen.create_model("made", x_dim=D, hidden_dims=(16,), num_masks=3, order_agnostic=True, seed=99).eval()
    assert not torch.equal(other.order, model.order)
    other.load_state_dict(load_file(tmp_path / "made.safetensors"))
    assert torch.equal(other.order, model.order)
    assert torch.allclose(other.log_prob(x), model.log_prob(x))


def test_made_cycles_its_masks_in_training_and_ensembles_them_in_evaluation():
    model = build("made_ensemble").train()
    x = (torch.rand(4, D) < 0.5).float()
    singles = []
    for k in range(3):
        assert int(model.mask_index) == k
        singles.append(model.distribution().log_prob(x))
    assert int(model.mask_index) == 0
    ensemble = model.eval().log_prob(x)
    assert torch.allclose(ensemble, torch.logsumexp(torch.stack(singles), 0) - torch.log(torch.tensor(3.0)))


def test_non_binary_data_is_refused():
    from pprogen.inference import fit

    model = pprogen.create_model("nade", x_dim=4, hidden_dim=3)
    with pytest.raises(ValueError, match="outside the support of observed site 'x'"):
        fit(model, model.default_guide(), torch.full((10, 4), 0.5), progress=False)
