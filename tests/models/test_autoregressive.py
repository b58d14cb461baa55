import itertools

import pytest
import torch
from safetensors.torch import load_file, save_file

import pprogen

D = 10
CONFIGS = {
    "fvsbn": {},
    "nade": {"hidden_dim": 7, "block": 3},  # blocks of 3 dimensions: the sweep crosses block boundaries
    "eonade": {"hidden_dim": 7, "num_orders": 3, "block": 4},
    "made": {"hidden_dims": (16, 16)},
    "made_ensemble": {"hidden_dims": (16,), "num_masks": 3, "order_agnostic": True},
    "made_random_order": {"hidden_dims": (16,), "natural_order": False},
    "made_direct": {"hidden_dims": (16,), "num_masks": 2, "order_agnostic": True, "direct": True},
    "rnn_ar": {"hidden_dim": 8},
}


def build(name, x_dim=D):
    model = pprogen.create_model(name.split("_")[0] if name.startswith("made") else name, x_dim=x_dim, **CONFIGS[name])
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


@pytest.mark.parametrize("name", ["nade", "eonade", "made_ensemble", "made_random_order", "made_direct", "rnn_ar"])
def test_ancestral_samples_follow_the_exact_probabilities(name):
    model = build(name, x_dim=3)
    torch.manual_seed(0)
    samples = model.sample(20000)
    configs = all_configurations(3)
    freq = (samples[:, None, :] == configs[None]).all(-1).float().mean(0)
    exact = model.log_prob(configs).exp()
    assert torch.allclose(freq, exact, atol=0.015)


def test_made_draws_its_first_ordering_from_its_seed_unless_natural():
    natural = pprogen.create_model("made", x_dim=D, hidden_dims=(8,))
    drawn = [pprogen.create_model("made", x_dim=D, hidden_dims=(8,), natural_order=False, seed=s) for s in (0, 0, 1)]
    assert torch.equal(natural.order[0], torch.arange(D))
    assert sorted(drawn[0].order[0].tolist()) == list(range(D)) and not torch.equal(drawn[0].order[0], torch.arange(D))
    assert torch.equal(drawn[0].order, drawn[1].order) and not torch.equal(drawn[0].order, drawn[2].order)


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


def cumsum_nade_logits(x, w, c, v, b, u=None):
    """NADE's logits as one exclusive cumulative sum over (..., H, D): the formulation the blocked sweep replaces."""
    contributions = x.unsqueeze(-2) * w
    if u is not None:
        contributions = contributions + u
    hidden = torch.sigmoid(c.unsqueeze(-1) + contributions.cumsum(-1) - contributions)
    return b + torch.einsum("...hd,dh->...d", hidden, v)


def nade_inputs(rows, dims, hidden, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, dims, generator=g) < 0.4).to(dtype)
    shapes = [(hidden, dims), (hidden,), (dims, hidden), (dims,), (hidden, dims)]
    return [x] + [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


@pytest.mark.parametrize("block", [1, 3, 4, 11, 32])
@pytest.mark.parametrize("observed_weights", [False, True])
def test_the_blocked_nade_sweep_equals_the_cumulative_sum_and_autograd(block, observed_weights):
    from pprogen.models.autoregressive import nade_logits

    x, w, c, v, b, u = nade_inputs(5, 11, 4, torch.float64)
    x.requires_grad_()
    u = u if observed_weights else None
    assert torch.allclose(nade_logits(x, w, c, v, b, u, block), cumsum_nade_logits(x, w, c, v, b, u), atol=1e-12)
    inputs = (x, w, c, v, b) + ((u,) if observed_weights else ())
    assert torch.autograd.gradcheck(lambda *a: nade_logits(*a[:5], a[5] if observed_weights else None, block), inputs)


def test_the_blocked_nade_log_likelihood_equals_the_cumulative_sum_at_mnist_size_in_float32():
    import torch.nn.functional as F
    from pprogen.models.autoregressive import nade_logits

    x, w, c, v, b, _ = nade_inputs(8, 784, 50, torch.float32)
    w.data /= 28
    v.data /= 7
    ll = [-F.binary_cross_entropy_with_logits(f(x, w, c, v, b), x, reduction="none").sum(-1)
          for f in (nade_logits, cumsum_nade_logits)]
    assert torch.allclose(ll[0], ll[1], rtol=1e-5, atol=0)
    grads = [torch.autograd.grad(value.sum(), (w, c, v, b)) for value in ll]
    for fast, slow in zip(*grads):
        assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-5)


def test_nade_refuses_a_bad_block_and_an_ensemble_it_was_not_trained_for():
    from pprogen.models.autoregressive import nade_logits

    with pytest.raises(ValueError, match="block must be a positive integer"):
        nade_logits(*nade_inputs(2, 4, 3, torch.float32)[:5], block=0)
    with pytest.raises(ValueError, match="set order_agnostic=True"):
        pprogen.create_model("nade", x_dim=4, hidden_dim=3, num_orders=2)


def test_eonade_draws_a_fresh_ordering_each_training_step_and_averages_its_orderings_in_evaluation():
    model = build("eonade").train()
    x = (torch.rand(4, D) < 0.5).float()
    torch.manual_seed(0)
    orders = [model.distribution().orders[0] for _ in range(3)]
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    torch.manual_seed(0)
    assert torch.equal(model.distribution().orders[0], orders[0])  # from the training stream: reproducible
    model.eval()
    singles = [net(x) for net in model.distribution().nets]
    per_order = torch.stack([-torch.nn.functional.binary_cross_entropy_with_logits(s, x, reduction="none").sum(-1)
                             for s in singles])
    assert torch.allclose(model.log_prob(x), torch.logsumexp(per_order, 0) - torch.log(torch.tensor(3.0)))
    assert torch.equal(model.order[0], torch.arange(D))


def test_eonade_trains_by_svi():
    from pprogen.inference import fit

    torch.manual_seed(0)
    x = (torch.rand(64, D) < 0.3).float()
    model = pprogen.create_model("eonade", x_dim=D, hidden_dim=8, num_orders=2)
    history = fit(model, model.default_guide(), x, epochs=15, batch_size=16, lr=0.05, progress=False)
    assert history.records[-1]["train_loss"] < history.records[0]["train_loss"] - 0.5


def test_non_binary_data_is_refused():
    from pprogen.inference import fit

    model = pprogen.create_model("nade", x_dim=4, hidden_dim=3)
    with pytest.raises(ValueError, match="outside the support of observed site 'x'"):
        fit(model, model.default_guide(), torch.full((10, 4), 0.5), progress=False)


PIXEL_CONFIGS = {
    "plain_1ch": dict(x_shape=(1, 2, 5), hidden_channels=8, num_blocks=1, kernel_size=3, two_stack=False),
    "gated_1ch": dict(x_shape=(1, 2, 5), hidden_channels=8, num_blocks=2, kernel_size=3, gated=True,
                      two_stack=False),
    "gated_3ch": dict(x_shape=(3, 1, 3), hidden_channels=6, num_blocks=1, kernel_size=3, gated=True,
                      two_stack=False),
    "two_stack_1ch": dict(x_shape=(1, 2, 5), hidden_channels=8, num_blocks=2, kernel_size=3),
    "two_stack_3ch": dict(x_shape=(3, 1, 3), hidden_channels=6, num_blocks=2, kernel_size=3),
    "two_stack_3ch_tall": dict(x_shape=(3, 2, 2), hidden_channels=6, num_blocks=1, kernel_size=5),
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


ROW_BY_ROW = {
    "two_stack_1ch": PIXEL_CONFIGS["two_stack_1ch"],
    "two_stack_3ch_tall": PIXEL_CONFIGS["two_stack_3ch_tall"],
    "conditional_3ch": dict(x_shape=(3, 5, 4), hidden_channels=12, num_blocks=3, kernel_size=5, num_classes=3),
}


@pytest.mark.parametrize("config", ROW_BY_ROW)
def test_the_two_stack_pixelcnn_row_by_row_pass_equals_the_full_pass(config):
    """Sampling runs the vertical stack on the rows above and the horizontal stack on one row: every row's logits
    equal the full pass's."""
    torch.manual_seed(0)
    model = pprogen.create_model("pixelcnn", **ROW_BY_ROW[config]).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    x = (torch.rand(6, *model.x_shape) < 0.4).double()
    y = torch.tensor([0, 1, 2, 0, 1, 2]) if model.conditional else None
    full = model.logits(x, y)
    for r in range(model.x_shape[1]):
        row = model._row_logits(x[:, :, r: r + 1], model._links(x[:, :, :r], y), y)
        assert torch.allclose(row[:, :, 0], full[:, :, r], atol=1e-10), f"row {r}"


@pytest.mark.parametrize("shape", [(1, 2, 2), (3, 2, 1)])
def test_two_stack_pixelcnn_samples_follow_the_exact_probabilities(shape):
    torch.manual_seed(0)
    model = pprogen.create_model("pixelcnn", x_shape=shape, hidden_channels=6, num_blocks=2, kernel_size=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)
    samples = model.sample(20000).reshape(20000, -1)
    configs = all_configurations(samples.shape[1])
    freq = (samples[:, None, :] == configs[None]).all(-1).float().mean(0)
    exact = model.log_prob(configs.reshape(-1, *shape)).exp()
    assert exact.max() > 2 / len(configs)  # far from uniform: a sampler with wrong conditionals shows
    assert torch.allclose(freq, exact, atol=0.012)


def test_pixelcnn_receptive_field_has_the_blind_spot():
    model = pprogen.create_model("pixelcnn", x_shape=(1, 6, 6), hidden_channels=16, num_blocks=1, kernel_size=3,
                                 two_stack=False).eval()
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


def receptive_field(model, row, col, draws=6):
    """Which pixels logit (row, col) depends on: a union over random inputs, so no gate pattern hides one."""
    shape = model.x_shape
    seen = torch.zeros(shape[1:], dtype=torch.bool)
    for _ in range(draws):
        x = (torch.rand(shape) < 0.5).float()
        seen |= (torch.autograd.functional.jacobian(model.logits, x)[0, row, col] != 0).any(0)
    return seen


@pytest.mark.parametrize("two_stack", [True, False])
def test_the_two_stack_pixelcnn_sees_every_earlier_pixel_where_the_single_stack_has_a_blind_spot(two_stack):
    torch.manual_seed(0)
    model = pprogen.create_model("pixelcnn", x_shape=(1, 6, 6), hidden_channels=8, num_blocks=6, kernel_size=3,
                                 gated=True, two_stack=two_stack).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    for row, col in [(4, 2), (5, 0), (2, 5)]:
        seen = receptive_field(model, row, col)
        before = torch.zeros(6, 6, dtype=torch.bool)
        before[:row] = True
        before[row, :col] = True
        assert not seen[~before].any()  # never the pixel itself or a later one
        missed = before & ~seen
        if two_stack:  # seven layers of 3-wide kernels reach every earlier pixel of a 6 x 6 image
            assert not missed.any(), (row, col, missed)
        elif (row, col) == (4, 2):  # the same depth of stacked masks still misses the upper right
            assert missed.any() and missed[:row, col + 1:].any()


def test_the_class_conditional_two_stack_pixelcnn_is_a_distribution_for_every_label():
    model = pprogen.create_model("pixelcnn", x_shape=(1, 2, 3), hidden_channels=6, num_blocks=1, kernel_size=3,
                                 num_classes=3).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)
    configs = all_configurations(6).double().reshape(-1, 1, 2, 3)
    per_label = []
    for label in range(3):
        log_p = model.log_prob(configs, torch.full((64,), label))
        assert abs(torch.logsumexp(log_p, 0).exp().item() - 1.0) < 1e-6
        per_label.append(log_p)
    assert (per_label[0] - per_label[1]).abs().max() > 0.1  # the label changes the distribution
    torch.manual_seed(0)
    samples = model.float().sample(6)  # labels 0, 1, 2, 0, ... in turn
    assert samples.shape == (6, 1, 2, 3) and model.conditional
    model.double()
    with pytest.raises(ValueError, match="pixelcnn is conditioned on labels"):
        model.log_prob(configs[:2])
    with pytest.raises(ValueError, match="has no labels"):
        pprogen.create_model("pixelcnn", x_shape=(1, 2, 3)).log_prob(configs[:2], torch.zeros(2))
    with pytest.raises(ValueError, match="set two_stack=True"):
        pprogen.create_model("pixelcnn", x_shape=(1, 2, 3), num_classes=3, two_stack=False)


def test_the_two_stack_pixelcnn_trains_with_labels_by_svi():
    from pprogen.inference import fit

    torch.manual_seed(0)
    x = (torch.rand(48, 1, 4, 4) < 0.3).float()
    y = torch.randint(0, 2, (48,))
    model = pprogen.create_model("pixelcnn", x_shape=(1, 4, 4), hidden_channels=8, num_blocks=1, kernel_size=3,
                                 num_classes=2)
    history = fit(model, model.default_guide(), x, epochs=10, batch_size=16, lr=0.02, progress=False,
                  condition={"y": y})
    assert history.records[-1]["train_loss"] < history.records[0]["train_loss"] - 0.5


def test_pixelcnn_refuses_shapes_it_cannot_take():
    with pytest.raises(ValueError, match=r"images of shape \(C, H, W\) with 1 or 3 channels"):
        pprogen.create_model("pixelcnn", x_shape=(2, 8, 8))
    with pytest.raises(ValueError, match="images of shape"):
        pprogen.create_model("pixelcnn", x_shape=(64,))
