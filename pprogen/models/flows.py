r"""The flow zoo: registered presets that assemble the transforms of :mod:`pprogen.transforms` into a :class:`Flow`.

.. math::

    u \sim \mathcal{N}(0, I), \quad x = f_K \circ \dots \circ f_1(u), \qquad
    \log p(x) = \log \mathcal{N}(f^{-1}(x); 0, I) - \sum_k \log\left|\det \frac{\partial f_k}{\partial u_{k-1}}\right|

Vector flows take ``x_dim`` and end, on the data side, with an ActNorm layer that standardizes the data from its
first batch:

- ``nice`` — additive couplings after a diagonal scaling (Dinh, Krueger & Bengio 2015, arXiv:1410.8516);
- ``realnvp`` — affine couplings with alternating halves, or fixed random permutations (:class:`Permutation`)
  between them (Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803);
- ``maf``, ``iaf`` — affine MADE layers, fast density or fast sampling (Papamakarios et al. 2017,
  arXiv:1705.07057; Kingma et al. 2016, arXiv:1606.04934);
- ``nsf`` — rational-quadratic splines in couplings or MADE layers (Durkan et al. 2019, arXiv:1906.04032).

``glow`` takes images ``(C, H, W)``: multi-scale levels of ActNorm, invertible 1x1 convolution and affine
coupling (Kingma & Dhariwal 2018, arXiv:1807.03039). With ``num_levels`` set, a flow models discrete pixels
through uniform dequantization (:mod:`pprogen.models.dequantization`).

``planar`` and ``radial`` (Rezende & Mohamed 2015, arXiv:1505.05770) have no closed-form inverse: they score
only their own samples, serve as variational posteriors (``flow.as_guide("z")``), and are fitted by reverse KL to
an unnormalized density such as :data:`ENERGIES` written as a Pyro model (:class:`EnergyTarget`).

The flow model (:class:`Flow`, :class:`FlowGuide`) lives in :mod:`pprogen.models.normalizing_flow`, the
dequantization in :mod:`pprogen.models.dequantization`, the energy targets in :mod:`pprogen.models.targets`;
their names are re-exported here.
"""

from __future__ import annotations

from typing import Sequence

import torch

from pprogen.models.dequantization import Dequantized, dequantize, dequantized_log_prob, quantize
from pprogen.models.normalizing_flow import Flow, FlowGuide
from pprogen.models.targets import ENERGIES, EnergyTarget, load_energy
from pprogen.registry import register_model
from pprogen.transforms import (
    alternating_orders,
    check_num_layers,
    ActNorm, Bijection, Coupling, FlowBatchNorm, InvertibleLinear, MaskedAutoregressive, MultiScale,
    NoInverseError, Planar, Radial, Scaling,
)


def _check_dim(x_dim, what="x_dim") -> int:
    if not isinstance(x_dim, int) or x_dim < 1:
        raise ValueError(f"{what} must be a positive integer, got {x_dim!r}")
    return x_dim


def _vector_flow(name: str, x_dim: int, layers: list[Bijection], num_levels, logit_alpha) -> Flow:
    # data side last: an ActNorm standardizes the data from its first batch
    return Flow((x_dim,), layers + [ActNorm((x_dim,))], num_levels, logit_alpha, name=name)


_FLOW = dict(kind="flow", default_data="moons")


@register_model(
    **_FLOW, default_target="u1",
    reference="Rezende & Mohamed, Variational Inference with Normalizing Flows, 2015, arXiv:1505.05770",
    story="u ~ N(0, I); z = f_K(...f_1(u)), f(z) = z + u tanh(w'z + b). No closed-form inverse: a variational "
    "posterior fitted by reverse KL (flow.as_guide('z'), examples/flow_energy_2d.py), not a density for data.",
)
def planar(x_dim: int = 2, flow_length: int = 8) -> Flow:
    """Planar flow of ``flow_length`` steps on vectors of size ``x_dim``."""
    _check_dim(x_dim)
    return Flow((x_dim,), [Planar(x_dim) for _ in range(check_num_layers(flow_length))], name="planar")


@register_model(
    **_FLOW, default_target="u1",
    reference="Rezende & Mohamed, Variational Inference with Normalizing Flows, 2015, arXiv:1505.05770",
    story="u ~ N(0, I); z = f_K(...f_1(u)), f(z) = z + beta (z - z0) / (alpha + |z - z0|). No closed-form "
    "inverse: a variational posterior fitted by reverse KL, not a density for data.",
)
def radial(x_dim: int = 2, flow_length: int = 8) -> Flow:
    """Radial flow of ``flow_length`` steps on vectors of size ``x_dim``."""
    _check_dim(x_dim)
    return Flow((x_dim,), [Radial(x_dim) for _ in range(check_num_layers(flow_length))], name="radial")


@register_model(
    **_FLOW,
    reference="Dinh, Krueger & Bengio, NICE, 2015, arXiv:1410.8516",
    story="u ~ N(0, I); x = ActNorm(additive couplings(diagonal scaling(u))); halves alternate; exact log p(x).",
)
def nice(x_dim: int = 2, num_layers: int = 4, hidden_dims: Sequence[int] = (64, 64),
         num_levels: int | None = None, logit_alpha: float = 0.05) -> Flow:
    """NICE: additive coupling layers with alternating halves and a learned diagonal scaling."""
    _check_dim(x_dim)
    layers: list[Bijection] = [Scaling((x_dim,))]
    layers += [Coupling((x_dim,), "additive", hidden_dims, swap=bool(i % 2)) for i in range(check_num_layers(num_layers))]
    return _vector_flow("nice", x_dim, layers, num_levels, logit_alpha)


@register_model(
    **_FLOW,
    reference="Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP, 2017, arXiv:1605.08803",
    story="u ~ N(0, I); x = ActNorm(affine couplings(u)) with alternating halves ('alternate') or fixed random "
    "permutations ('permute') between them, optional batch norm; exact log p(x).",
)
def realnvp(x_dim: int = 2, num_layers: int = 6, hidden_dims: Sequence[int] = (64, 64), mixing: str = "alternate",
            batch_norm: bool = False, num_levels: int | None = None, logit_alpha: float = 0.05, seed: int = 0) -> Flow:
    """RealNVP on vectors: affine coupling layers; ``mixing`` is ``alternate`` or ``permute``."""
    _check_dim(x_dim)
    if mixing not in ("alternate", "permute"):
        raise ValueError(f"mixing must be 'alternate' or 'permute', got {mixing!r}")
    g = torch.Generator().manual_seed(seed)
    layers: list[Bijection] = []
    for i in range(check_num_layers(num_layers)):
        layers.append(Coupling((x_dim,), "affine", hidden_dims, swap=mixing == "alternate" and bool(i % 2)))
        if mixing == "permute" and i < num_layers - 1:
            layers.append(Permutation(torch.randperm(x_dim, generator=g)))
        if batch_norm and i < num_layers - 1:
            layers.append(FlowBatchNorm((x_dim,)))
    return _vector_flow("realnvp", x_dim, layers, num_levels, logit_alpha)


class Permutation(Bijection):
    """A fixed permutation of the features (a buffer, so it survives save/load)."""

    def __init__(self, perm: torch.Tensor) -> None:
        super().__init__(event_dim=1)
        self.register_buffer("perm", perm.long())
        self.register_buffer("inverse_perm", torch.argsort(perm.long()))

    def forward_ladj(self, x):
        return x[..., self.perm], x.new_zeros(x.shape[:-1])

    def inverse_ladj(self, y):
        return y[..., self.inverse_perm], y.new_zeros(y.shape[:-1])


def _autoregressive(name, x_dim, num_layers, hidden_dims, fast, kind, batch_norm, num_levels, logit_alpha,
                    bins=8, bound=3.0) -> Flow:
    _check_dim(x_dim)
    layers: list[Bijection] = []
    for i, order in enumerate(alternating_orders(x_dim, check_num_layers(num_layers))):
        layers.append(MaskedAutoregressive(x_dim, hidden_dims, fast, kind, order, bins, bound))
        if batch_norm and i < num_layers - 1:
            layers.append(FlowBatchNorm((x_dim,)))
    return _vector_flow(name, x_dim, layers, num_levels, logit_alpha)


@register_model(
    **_FLOW,
    reference="Papamakarios, Pavlakou & Murray, Masked Autoregressive Flow, 2017, arXiv:1705.07057",
    story="u ~ N(0, I); x_i = u_i exp(s_i(x_<i)) + m_i(x_<i) per MADE layer, orders alternating; log p(x) in "
    "one network pass per layer (sampling takes one pass per dimension).",
)
def maf(x_dim: int = 2, num_layers: int = 5, hidden_dims: Sequence[int] = (64, 64), batch_norm: bool = False,
        num_levels: int | None = None, logit_alpha: float = 0.05) -> Flow:
    """Masked autoregressive flow: fast density."""
    return _autoregressive("maf", x_dim, num_layers, hidden_dims, "density", "affine", batch_norm, num_levels, logit_alpha)


@register_model(
    **_FLOW,
    reference="Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow, 2016, arXiv:1606.04934",
    story="u ~ N(0, I); x_i = u_i exp(s_i(u_<i)) + m_i(u_<i) per MADE layer, orders alternating; sampling in "
    "one network pass per layer (log p of new data takes one pass per dimension).",
)
def iaf(x_dim: int = 2, num_layers: int = 5, hidden_dims: Sequence[int] = (64, 64), batch_norm: bool = False,
        num_levels: int | None = None, logit_alpha: float = 0.05) -> Flow:
    """Inverse autoregressive flow: fast sampling."""
    return _autoregressive("iaf", x_dim, num_layers, hidden_dims, "sample", "affine", batch_norm, num_levels, logit_alpha)


@register_model(
    **_FLOW,
    reference="Durkan, Bekasov, Murray & Papamakarios, Neural Spline Flows, 2019, arXiv:1906.04032",
    story="u ~ N(0, I); monotonic rational-quadratic splines on [-bound, bound] (identity tails) whose knots "
    "come from coupling networks ('coupling') or MADE ('autoregressive', density direction); exact log p(x).",
)
def nsf(x_dim: int = 2, num_layers: int = 5, kind: str = "coupling", hidden_dims: Sequence[int] = (64, 64),
        bins: int = 8, bound: float = 3.0, num_levels: int | None = None, logit_alpha: float = 0.05) -> Flow:
    """Neural spline flow, coupling or autoregressive."""
    if kind == "autoregressive":
        return _autoregressive("nsf", x_dim, num_layers, hidden_dims, "density", "spline", False, num_levels,
                               logit_alpha, bins, bound)
    if kind != "coupling":
        raise ValueError(f"nsf kind must be 'coupling' or 'autoregressive', got {kind!r}")
    _check_dim(x_dim)
    layers: list[Bijection] = [
        Coupling((x_dim,), "spline", hidden_dims, swap=bool(i % 2), bins=bins, bound=bound)
        for i in range(check_num_layers(num_layers))
    ]
    return _vector_flow("nsf", x_dim, layers, num_levels, logit_alpha)


@register_model(
    kind="flow",
    default_data="digits",
    reference="Kingma & Dhariwal, Glow: Generative Flow with Invertible 1x1 Convolutions, 2018, arXiv:1807.03039",
    story="u ~ N(0, I) on (C, H, W); levels of squeeze -> steps of (ActNorm, invertible 1x1 convolution, affine "
    "coupling) -> factor out half the channels; uniform dequantization and logit preprocessing; bits/dim.",
)
def glow(x_shape: Sequence[int] = (1, 28, 28), levels: int = 2, steps: int = 4, hidden_channels: int = 64,
         lu: bool = True, coupling: str = "affine", num_levels: int | None = 256, logit_alpha: float = 0.05) -> Flow:
    """Glow on images with ``levels`` scales of ``steps`` steps each."""
    shape = tuple(int(s) for s in x_shape)
    if len(shape) != 3:
        raise ValueError(f"glow needs images of shape (C, H, W), got {shape}")
    if not isinstance(levels, int) or levels < 1 or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"glow needs levels >= 1 and steps >= 1, got levels={levels}, steps={steps}")
    c, h, w = shape
    if h % 2 ** levels or w % 2 ** levels:
        raise ValueError(f"glow with {levels} levels halves H and W {levels} times, so both must be divisible by "
                         f"{2 ** levels}; got {h}x{w}: use levels={_max_levels(h, w)} or pad the images")
    inner = None
    dims = []
    for k in range(levels):
        dims.append((c, h, w))
        c, h, w = 2 * c, h // 2, w // 2  # squeeze to 4c, keep half
    for k in reversed(range(levels)):
        c, h, w = dims[k]
        squeezed = (4 * c, h // 2, w // 2)
        body = []
        for s in range(steps):
            body += [ActNorm(squeezed), InvertibleLinear(squeezed, lu=lu, seed=97 * k + s),
                     Coupling(squeezed, coupling, hidden_channels=hidden_channels, swap=bool(s % 2))]
        inner = MultiScale((c, h, w), body, inner if k < levels - 1 else None)
    return Flow(shape, [inner], num_levels, logit_alpha, name="glow")


def _max_levels(h: int, w: int) -> int:
    k = 0
    while h % 2 ** (k + 1) == 0 and w % 2 ** (k + 1) == 0:
        k += 1
    return k


__all__ = [
    "Dequantized", "ENERGIES", "EnergyTarget", "Flow", "FlowGuide", "NoInverseError", "Permutation", "glow", "iaf",
    "maf", "nice", "nsf", "planar", "radial", "realnvp", "dequantize", "dequantized_log_prob", "load_energy",
    "quantize",
]
