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


PIXEL_CONFIGS = {
    "plain_1ch": dict(x_shape=(1, 2, 5), hidden_channels=8, num_blocks=1, kernel_size=3),
    "gated_1ch": dict(x_shape=(1, 2, 5), hidden_channels=8, num_blocks=2, kernel_size=3, gated=True),
    "gated_3ch": dict(x_shape=(3, 1, 3), hidden_channels=6, num_blocks=1, kernel_size=3, gated=True),
}


def build_pixelcnn(config):
    model = pprogen.create_model("pixelcnn", **PIXEL_CONFIGS[config])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("config", PIXEL_CONFIGS)
def test_pixelcnn_probabilities_sum_to_one_and_respect_the_raster_order(config):
    model = build_pixelcnn(config).double()
    shape = model.x_shape
    configs = all_configurations(shape[0] * shape[1] * shape[2]).double().reshape(-1, *shape)
    log_p = model.log_prob(configs)
    assert abs(torch.logsumexp(log_p, 0).exp().item() - 1.0) < 1e-5
    x = configs[5]
    jac = torch.autograd.functional.jacobian(model.logits, x).reshape(x.numel(), x.numel())
    order = model.order[0]
    for a in range(len(order)):
        assert torch.all(jac[order[a], order[a:]] == 0)


def test_pixelcnn_receptive_field_has_the_blind_spot():
    model = pprogen.create_model("pixelcnn", x_shape=(1, 6, 6), hidden_channels=16, num_blocks=1, kernel_size=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    seen = torch.zeros(6, 6, dtype=torch.bool)
    for _ in range(8):  # a union over inputs, so that no ReLU pattern hides a connection
        x = (torch.rand(1, 6, 6) < 0.5).float()
        seen |= torch.autograd.functional.jacobian(model.logits, x)[0, 4, 2, 0] != 0  # d logit(4, 2) / d x
    assert seen[3, 2] and seen[4, 1] and seen[3, 1]  # the pixel above, to the left, above-left
    before = torch.zeros(6, 6, dtype=torch.bool)
    before[:4] = True
    before[4, :2] = True
    assert not seen[~before].any()  # nothing at or after the pixel itself
    assert (before & ~seen).any()  # earlier pixels it cannot see: the blind spot and beyond the field
    # two 3x3 layers reach (2, 4), two rows up and two right, yet not (3, 4) below it: the blind spot
    assert seen[2, 4] and not seen[3, 4]


def test_pixelcnn_refuses_shapes_it_cannot_take():
    with pytest.raises(ValueError, match=r"images of shape \(C, H, W\) with 1 or 3 channels"):
        pprogen.create_model("pixelcnn", x_shape=(2, 8, 8))
    with pytest.raises(ValueError, match="images of shape"):
        pprogen.create_model("pixelcnn", x_shape=(64,))
