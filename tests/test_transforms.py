"""The contract of every flow transform and every zoo flow, in float64: inverse round trips, log|det J|
against autograd Jacobians, densities that integrate to 1 over a 2-D grid, shapes, gradients, save/load."""

import math

import pyro
import pytest
import torch
from safetensors.torch import load_file, save_file

import pprogen
from pprogen import transforms as T
from pprogen.inference import fit
from pprogen.inference.train import NonFiniteLossError
from pprogen.models.flows import EnergyTarget, Flow, Permutation


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def randomize(module, scale=0.3):
    """Random parameters (the zoo starts near the identity, which would hide errors)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


VECTOR = (3,)
IMAGE = (2, 4, 4)


def vector_transforms():
    yield "maf_affine", T.MaskedAutoregressive(3, (16, 16), "density", "affine", order=[2, 0, 1])
    yield "iaf_affine", T.MaskedAutoregressive(3, (16, 16), "sample", "affine")
    yield "maf_spline", T.MaskedAutoregressive(3, (16,), "density", "spline", bins=4, bound=2.0)
    yield "iaf_spline", T.MaskedAutoregressive(3, (16,), "sample", "spline", bins=4, bound=2.0)
    yield "coupling_additive", T.Coupling(VECTOR, "additive", (16,))
    yield "coupling_affine", T.Coupling(VECTOR, "affine", (16,), swap=True)
    yield "coupling_spline", T.Coupling(VECTOR, "spline", (16,), bins=5, bound=2.0)
    yield "scaling", T.Scaling(VECTOR)
    yield "actnorm", T.ActNorm(VECTOR)
    yield "linear_lu", T.InvertibleLinear(VECTOR, lu=True, seed=1)
    yield "linear_free", T.InvertibleLinear(VECTOR, lu=False, seed=2)
    yield "reverse", T.Reverse(VECTOR)
    yield "permutation", Permutation(torch.tensor([1, 2, 0]))
    yield "batchnorm", T.FlowBatchNorm(VECTOR).eval()
    yield "logit", T.Logit(VECTOR, 0.05)


def image_transforms():
    yield "img_coupling_affine", T.Coupling(IMAGE, "affine", hidden_channels=4)
    yield "img_coupling_spline", T.Coupling(IMAGE, "spline", hidden_channels=4, swap=True, bins=3, bound=2.0)
    yield "img_actnorm", T.ActNorm(IMAGE)
    yield "img_linear_lu", T.InvertibleLinear(IMAGE, lu=True, seed=3)
    yield "img_batchnorm", T.FlowBatchNorm(IMAGE).eval()
    inner = T.MultiScale((4, 2, 2), [T.ActNorm((16, 1, 1)), T.Coupling((16, 1, 1), "affine", hidden_channels=4)])
    yield "multiscale", T.MultiScale(IMAGE, [T.InvertibleLinear((8, 2, 2), seed=4),
                                             T.Coupling((8, 2, 2), "affine", hidden_channels=4)], inner)


INVERTIBLE = list(vector_transforms()) + list(image_transforms())
NON_INVERTIBLE = [("planar", T.Planar(3)), ("radial", T.Radial(3))]


def sample_input(name, shape, n=4):
    x = torch.randn(n, *shape)
    return torch.rand(n, *shape) * 0.9 + 0.05 if name == "logit" else x


def jacobian_ladj(transform, x):
    """log|det J| of one example from autograd's full Jacobian."""
    jac = torch.autograd.functional.jacobian(lambda v: transform.forward_ladj(v.reshape(x.shape))[0].flatten(), x.flatten())
    return torch.linalg.slogdet(jac)[1]


@pytest.mark.parametrize("name,transform", INVERTIBLE, ids=[n for n, _ in INVERTIBLE])
def test_round_trip_and_log_det_match_autograd(name, transform):
    randomize(transform.double()).eval()  # eval: batch norm on running statistics, ActNorm already set
    shape = IMAGE if name.startswith(("img", "multi")) else VECTOR
    x = sample_input(name, shape)
    y, ladj = transform.forward_ladj(x)
    assert y.shape == x.shape and ladj.shape == (x.shape[0],)
    x_back, ladj_back = transform.inverse_ladj(y)
    assert torch.allclose(x_back, x, atol=1e-8), "inverse(forward(x)) != x"
    assert torch.allclose(ladj_back, ladj, atol=1e-8), "the inverse pass reports another log|det J|"
    for i in range(x.shape[0]):
        assert torch.allclose(ladj[i], jacobian_ladj(transform, x[i]), atol=1e-8)


@pytest.mark.parametrize("name,transform", NON_INVERTIBLE, ids=[n for n, _ in NON_INVERTIBLE])
def test_planar_and_radial_log_det_match_autograd_and_refuse_inverse(name, transform):
    randomize(transform.double(), 1.0)
    x = torch.randn(4, 3)
    y, ladj = transform.forward_ladj(x)
    for i in range(4):
        assert torch.allclose(ladj[i], jacobian_ladj(transform, x[i]), atol=1e-8)
    # scoring its own sample goes through the cache, with the log-det of the forward pass
    x_new = torch.randn(4, 3)
    y_new = transform(x_new)
    assert transform.log_abs_det_jacobian(x_new, y_new) is not None
    assert torch.equal(transform.log_abs_det_jacobian(x_new, y_new), transform.forward_ladj(x_new)[1])
    with pytest.raises(T.NoInverseError, match="no closed-form inverse"):
        transform.inv(torch.randn(2, 3))


def test_conditional_planar_matches_planar_steps():
    params = torch.randn(5, 2 * (2 * 3 + 1))
    x = torch.randn(5, 3)
    y, ladj = T.ConditionalPlanar(params, 3).forward_ladj(x)
    for i in range(5):
        assert torch.allclose(ladj[i], jacobian_ladj(T.ConditionalPlanar(params[i], 3), x[i]), atol=1e-8)


def test_spline_is_monotone_and_identity_outside_its_bound():
    spline = T.RationalQuadratic(bins=6, bound=2.0)
    p = torch.randn(spline.num_params, 1, 1).expand(-1, 1, 401)
    x = torch.linspace(-3, 3, 401).reshape(1, 401)
    y, _ = spline.forward(x, p)
    assert (y[0, 1:] > y[0, :-1]).all()
    outside = x.abs() >= 2
    assert torch.equal(y[outside], x[outside])


def test_squeeze_is_a_permutation_of_pixels():
    x = torch.arange(2 * 4 * 6.0).reshape(1, 2, 4, 6)
    s = T.squeeze(x)
    assert s.shape == (1, 8, 2, 3)
    assert torch.equal(torch.sort(s.flatten()).values, x.flatten())
    assert torch.equal(T.unsqueeze(s), x)
    assert torch.equal(s[0, :4, 0, 0], torch.tensor([0.0, 1.0, 6.0, 7.0]))  # one 2x2 patch of channel 0


def test_actnorm_initializes_from_the_first_data_batch():
    layer = T.ActNorm((2, 3, 3))
    y = torch.randn(50, 2, 3, 3) * torch.tensor([2.0, 0.5]).reshape(2, 1, 1) + 3
    x, _ = layer.inverse_ladj(y)
    per_channel = x.movedim(1, 0).reshape(2, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(2), atol=1e-10)
    assert torch.allclose(per_channel.std(1), torch.ones(2), atol=1e-10)


# ----------------------------------------------------------------------------- whole flows

VECTOR_FLOWS = [
    ("nice", {}), ("realnvp", {}), ("realnvp", {"mixing": "permute", "batch_norm": True}), ("maf", {}),
    ("maf", {"batch_norm": True}), ("iaf", {}), ("nsf", {"bins": 4}), ("nsf", {"kind": "autoregressive", "bins": 4}),
]
IDS = [n + "".join(f"-{k}={v}" for k, v in kw.items()) for n, kw in VECTOR_FLOWS]


def small_flow(name, **kw):
    flow = pprogen.create_model(name, x_dim=2, hidden_dims=(16,), num_layers=3, **kw)
    flow.init_from_data(torch.randn(256, 2) * 1.5 + 0.5)
    randomize(flow, 0.15)
    return flow.eval()


def grid_integral(log_prob, lim=9.0, n=500):
    xs = torch.linspace(-lim, lim, n)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = torch.cat([log_prob(c).exp() for c in grid.split(50000)])
    return density.sum().item() * (xs[1] - xs[0]).item() ** 2


@pytest.mark.parametrize("name,kw", VECTOR_FLOWS, ids=IDS)
def test_flow_density_integrates_to_one(name, kw):
    flow = small_flow(name, **kw)
    assert abs(grid_integral(flow.log_prob) - 1) < 0.01
    x = torch.randn(9, 2)  # the direct pass equals Pyro's TransformedDistribution on the same transforms
    assert torch.allclose(flow.log_prob(x), flow.flow_distribution().log_prob(x.clone()), atol=1e-10)


@pytest.mark.parametrize("name", ["realnvp", "maf", "nsf"])
def test_repeated_training_steps_on_the_same_tensor_score_the_current_weights(name):
    """The site observes the same ``x`` object every step: no transform cache may hand back the last step's
    graph or values (each step's loss is -log p(x) under the weights the step starts from)."""
    from pprogen.inference.train import TrainStep, build_loss, collect_parameters, make_optimizer

    torch.manual_seed(0)
    flow = pprogen.create_model(name, num_layers=2, hidden_dims=(8,))
    x = torch.randn(32, 2)
    loss_module = build_loss(flow, flow.default_guide())
    params = collect_parameters(loss_module, x)
    step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=1e-2))
    for _ in range(3):
        with torch.no_grad():
            expected = -flow.log_prob(x.clone()).sum().item()
        loss, finite = step(x)
        assert loss == pytest.approx(expected, rel=1e-5) and finite


def planar_inverse(layer, y, iters=200):
    """Invert one planar step numerically: w'y + b = a + (w'u_hat) tanh(a) is monotone in a."""
    u, w, b = layer.u, layer.w, layer.b
    wu = (w * u).sum()
    u_hat = u + (torch.nn.functional.softplus(wu) - 1 - wu) * w / w.pow(2).sum()
    target = y @ w + b
    lo, hi = target - abs((w * u_hat).sum()) - 1, target + abs((w * u_hat).sum()) + 1
    for _ in range(iters):
        mid = (lo + hi) / 2
        too_big = mid + (w * u_hat).sum() * torch.tanh(mid) > target
        hi, lo = torch.where(too_big, mid, hi), torch.where(too_big, lo, mid)
    return y - u_hat * torch.tanh((lo + hi) / 2).unsqueeze(-1)


def radial_inverse(layer, y, iters=200):
    """Invert one radial step numerically: |y - z0| = r (1 + beta / (alpha + r)) is monotone in r."""
    alpha = layer.log_alpha.exp()
    beta = -alpha + torch.nn.functional.softplus(layer.beta)
    d = y - layer.z0
    target = d.norm(dim=-1)
    lo, hi = torch.zeros_like(target), target + abs(beta) + 1
    for _ in range(iters):
        mid = (lo + hi) / 2
        too_big = mid * (1 + beta / (alpha + mid)) > target
        hi, lo = torch.where(too_big, mid, hi), torch.where(too_big, lo, mid)
    r = (lo + hi) / 2
    return layer.z0 + d / (1 + beta / (alpha + r)).unsqueeze(-1)


@pytest.mark.parametrize("name,inverse", [("planar", planar_inverse), ("radial", radial_inverse)])
def test_planar_and_radial_densities_integrate_to_one(name, inverse):
    flow = randomize(pprogen.create_model(name, x_dim=2, flow_length=4), 0.8)

    def log_prob(y):  # the change of variables through numerical inverses, with the flow's own log-dets
        total = torch.zeros(y.shape[0])
        for layer in reversed(flow.layers):
            x = inverse(layer, y)
            total = total - layer.forward_ladj(x)[1]
            y = x
        return flow.base().log_prob(y) + total

    x, lp = flow.sample_with_log_prob(64)
    assert torch.allclose(log_prob(x), lp, atol=1e-6), "the numerical inverse disagrees with the flow"
    assert abs(grid_integral(log_prob) - 1) < 0.01


@pytest.mark.parametrize("name,kw", VECTOR_FLOWS, ids=IDS)
def test_flow_shapes_gradients_and_save_load(name, kw, tmp_path):
    flow = small_flow(name, **kw).train()
    x = flow.sample(7)
    assert x.shape == (7, 2)
    lp = flow.log_prob(x)
    assert lp.shape == (7,) and torch.isfinite(lp).all()
    lp.sum().backward()
    for pname, param in flow.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reaches {pname}"
    flow.eval()
    before = flow.log_prob(x)
    save_file({k: v.contiguous() for k, v in flow.state_dict().items()}, tmp_path / "f.safetensors")
    other = pprogen.create_model(name, x_dim=2, hidden_dims=(16,), num_layers=3, **kw).eval()
    other.load_state_dict(load_file(tmp_path / "f.safetensors"))
    assert torch.allclose(other.log_prob(x), before, atol=1e-12)


def test_maf_and_iaf_are_fast_in_opposite_directions():
    calls = {"n": 0}
    maf = small_flow("maf")
    iaf = small_flow("iaf")
    for flow in (maf, iaf):
        for layer in flow.layers:
            if isinstance(layer, T.MaskedAutoregressive):
                layer.net.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    x = torch.randn(5, 2)
    counts = {}
    for label, run in [("maf log_prob", lambda: maf.log_prob(x)), ("maf sample", lambda: maf.sample(5)),
                       ("iaf log_prob", lambda: iaf.log_prob(x)), ("iaf sample", lambda: iaf.sample(5))]:
        calls["n"] = 0
        run()
        counts[label] = calls["n"]
    assert counts == {"maf log_prob": 3, "maf sample": 6, "iaf log_prob": 6, "iaf sample": 3}


def test_glow_round_trip_log_det_and_shapes():
    flow = pprogen.create_model("glow", x_shape=(1, 4, 4), levels=2, steps=2, hidden_channels=4, num_levels=None)
    layer = randomize(flow.layers[0], 0.2).eval()
    x = torch.randn(2, 1, 4, 4)
    y, ladj = layer.forward_ladj(x)
    assert torch.allclose(layer.inverse_ladj(y)[0], x, atol=1e-8)
    assert torch.allclose(ladj[0], jacobian_ladj(layer, x[0]), atol=1e-8)
    assert flow.sample(3).shape == (3, 1, 4, 4)


def test_dequantized_log_prob_converges_to_the_cell_probabilities():
    """Two pixels with 3 levels: P(x) = integral of the flow density over x's dequantization cell. The cells
    hold the flow's whole mass on the unit square (the logit preprocessing leaves a little outside it, so
    the likelihood is of a sub-probability: conservative), and the importance-weighted bound converges
    to each cell's probability."""
    flow = pprogen.create_model("realnvp", x_dim=2, hidden_dims=(8,), num_layers=2, num_levels=3)
    flow.init_from_data(torch.randint(0, 3, (64, 2)) / 2.0)
    randomize(flow, 0.2).eval()
    d = flow.flow_distribution()
    n = 200
    mids = (torch.arange(n) + 0.5) / n
    total = 0.0
    for a in range(3):
        for b in range(3):
            cell = torch.stack(torch.meshgrid((a + mids) / 3, (b + mids) / 3, indexing="ij"), -1).reshape(-1, 2)
            with torch.no_grad():
                prob = d.log_prob(cell).exp().mean().item() / 9  # mean density x cell area
            total += prob
            estimate = flow.log_prob(torch.tensor([[a / 2, b / 2]]), num_samples=20000).item()
            bound = flow.log_prob(torch.tensor([[a / 2, b / 2]]).expand(4000, 2), num_samples=1).mean().item()
            assert abs(estimate - math.log(prob)) < 0.01
            assert bound <= math.log(prob) + 0.01  # Jensen: one draw is a lower bound on average
    with torch.no_grad():
        y = d.sample((200000,))
    on_square = ((y > 0) & (y < 1)).all(-1).double().mean().item()
    assert 0.8 < total <= 1 and abs(total - on_square) < 0.004


def test_bad_input_gives_one_line_errors():
    flow = pprogen.create_model("maf", x_dim=2)
    with pytest.raises(ValueError, match=r"expects examples of shape \(2,\), got \(3,\)"):
        flow.log_prob(torch.randn(4, 3))
    glow = pprogen.create_model("glow", x_shape=(1, 8, 8), steps=1, hidden_channels=4, num_levels=17)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        glow.log_prob(torch.full((2, 1, 8, 8), 3.0))
    with pytest.raises(ValueError, match="num_levels=17 levels"):
        glow.log_prob(torch.full((2, 1, 8, 8), 0.5 / 16))
    with pytest.raises(ValueError, match="divisible by 8; got 12x12: use levels=2"):
        pprogen.create_model("glow", x_shape=(1, 12, 12), levels=3)
    with pytest.raises(ValueError, match="no closed-form inverse"):
        pprogen.create_model("planar").log_prob(torch.randn(3, 2))


def test_nonfinite_training_names_the_layer():
    flow = pprogen.create_model("realnvp", x_dim=2, hidden_dims=(8,), num_layers=3)
    x = torch.randn(64, 2)
    flow.init_from_data(x)

    def blow_up(epoch, record):  # after the first epoch, the second coupling layer overflows
        with torch.no_grad():
            flow.layers[1].net[-1].bias.fill_(float("inf"))

    with pytest.raises(NonFiniteLossError, match=r"epoch 2.*layer 2 \(Coupling\)"):
        fit(flow, flow.default_guide(), x, epochs=2, batch_size=32, progress=False, callback=blow_up)


def test_planar_flow_fitted_by_reverse_kl_approaches_log_z():
    """Target N(m, s^2 I) written with pyro.factor: log Z = log(2 pi s^2) and the ELBO is at most log Z."""
    pyro.clear_param_store()
    m, s = torch.tensor([1.0, -0.5]), 0.7
    target = EnergyTarget(lambda z: 0.5 * ((z - m) / s).pow(2).sum(-1), dim=2)
    flow = pprogen.create_model("planar", x_dim=2, flow_length=4)
    guide = flow.as_guide("z")
    log_z = math.log(2 * math.pi * s * s)

    def elbo():
        with torch.no_grad():
            z, lq = flow.sample_with_log_prob(20000)
            return (target.log_density(z) - lq).mean().item()

    before = elbo()
    fit(target, guide, torch.zeros(256, 2), epochs=300, batch_size=256, lr=0.01, progress=False)
    after = elbo()
    assert before < after <= log_z + 0.01
    assert after > log_z - 0.1
    assert isinstance(flow, Flow)
    with torch.no_grad():
        z = flow.sample_with_log_prob(20000)[0]
    assert torch.allclose(z.mean(0), m, atol=0.1)  # the fitted flow sits on the target
