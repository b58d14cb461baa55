r"""Normalizing flows: a standard Normal pushed through learnable bijections, observed at one site.

.. math::

    u \sim \mathcal{N}(0, I), \quad x = f_K \circ \dots \circ f_1(u), \qquad
    \log p(x) = \log \mathcal{N}(f^{-1}(x); 0, I) - \sum_k \log\left|\det \frac{\partial f_k}{\partial u_{k-1}}\right|

Each zoo flow is a :class:`Flow`: a ``PyroModule`` that builds a Pyro ``TransformedDistribution`` from the
transforms in :mod:`pprogen.transforms` and observes ``x`` with it inside the ``data`` plate, so SVI with the
empty guide is maximum likelihood. Vector flows (``nice``, ``realnvp``, ``maf``, ``iaf``, ``nsf``) take
``x_dim`` and end, on the data side, with an ActNorm layer that standardizes the data from its first batch;
``glow`` takes images ``(C, H, W)``.

With ``num_levels`` set, a flow models images with that many intensity levels in [0, 1] (17 for the 8x8
digits, 256 for 8-bit images): uniform dequantization ``y = (x (L - 1) + u) / L``, ``u ~ U(0, 1)^D``, then
the logit preprocessing (:class:`pprogen.transforms.Logit`), whose Jacobian is part of the density. Then
``log_prob`` is the dequantization bound :math:`\mathbb{E}_u[\log p(y)] - D \log L \le \log P(x)` in nats,
estimated with importance weighting over ``eval_samples`` draws of ``u`` at evaluation, and bits/dim are
``-log_prob / (D ln 2)``.

``planar`` and ``radial`` (Rezende & Mohamed 2015) have no closed-form inverse: they score only their own
samples, serve as variational posteriors (``flow.as_guide("z")``), and are fitted by reverse KL to an
unnormalized density such as :data:`ENERGIES` written as a Pyro model (:class:`EnergyTarget`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import constraints

from pprogen.nn import EmptyGuide, value_check
from pprogen.registry import register_model
from pprogen.transforms import (
    alternating_orders,
    check_num_layers,
    ActNorm, Bijection, Coupling, FlowBatchNorm, InvertibleLinear, Logit, MaskedAutoregressive, MultiScale,
    NoInverseError, Planar, Radial, Scaling,
)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Dequantized(TorchDistribution):
    """Pixels on a grid of ``num_levels`` levels in [0, 1], modelled by a continuous ``flow`` on (0, 1)^D
    through uniform dequantization; ``log_prob`` is the (importance-weighted, ``num_samples`` draws)
    dequantization bound on the probability of the discrete pixels."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, flow: dist.TransformedDistribution, num_levels: int, num_samples: int = 1,
                 validate_args=None) -> None:
        self.flow, self.num_levels, self.num_samples = flow, num_levels, num_samples
        super().__init__(flow.batch_shape, flow.event_shape, validate_args=validate_args)

    @property
    def support(self):
        return constraints.independent(constraints.unit_interval, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        return Dequantized(self.flow.expand(batch_shape), self.num_levels, self.num_samples)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dequantized_log_prob(self.flow.log_prob, value, self.num_levels, self.num_samples,
                                    math.prod(self.event_shape))

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return quantize(self.flow.sample(sample_shape), self.num_levels)


def dequantize(x: torch.Tensor, levels: int, num_samples: int | None = None) -> torch.Tensor:
    """``(x (L - 1) + u) / L`` with ``u ~ U(0, 1)``; ``num_samples`` draws stacked in front when given."""
    shape = x.shape if num_samples is None else (num_samples,) + x.shape
    return (x * (levels - 1) + torch.rand(shape, dtype=x.dtype, device=x.device)) / levels


def quantize(y: torch.Tensor, levels: int) -> torch.Tensor:
    """The level of each continuous value in (0, 1), back on the grid ``k / (L - 1)``."""
    return (y * levels).floor().clamp(0, levels - 1) / (levels - 1)


def dequantized_log_prob(log_density: Callable, x: torch.Tensor, levels: int, num_samples: int, dim: int):
    """The dequantization bound ``log mean_k p(y_k) - D log L`` over ``num_samples`` draws of ``u``."""
    lp = log_density(dequantize(x, levels, num_samples)) - dim * math.log(levels)
    return lp[0] if num_samples == 1 else torch.logsumexp(lp, 0) - math.log(num_samples)


class Flow(PyroModule):
    """A normalizing flow observed at site ``x``; ``transforms`` run from the base (noise) to the data."""

    def __init__(self, x_shape: Sequence[int], transforms: Sequence[Bijection], num_levels: int | None = None,
                 logit_alpha: float = 0.05, eval_samples: int = 16, name: str = "flow") -> None:
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        self.name = name
        self.layers = nn.ModuleList(transforms)
        if num_levels is not None and (not isinstance(num_levels, int) or num_levels < 2):
            raise ValueError(f"num_levels must be an integer >= 2 (the pixel intensities' count), got {num_levels!r}")
        self.num_levels = num_levels
        self.eval_samples = eval_samples
        self.preprocess = Logit(self.x_shape, logit_alpha) if num_levels else None
        self.register_buffer("base_loc", torch.zeros(self.x_shape))
        self.register_buffer("base_scale", torch.ones(self.x_shape))

    # -- distributions
    @property
    def invertible(self) -> bool:
        return not any(isinstance(t, (Planar, Radial)) for t in self.layers)

    @property
    def reports_bits_per_dim(self) -> bool:
        return self.num_levels is not None

    @property
    def log_prob_method(self) -> str:
        if self.num_levels is None:
            return "exact"
        return (f"dequantization bound, {self.eval_samples} uniform draws per example (importance-weighted), "
                f"{self.num_levels} levels")

    def transforms(self) -> list[Bijection]:
        return list(self.layers) + ([self.preprocess] if self.preprocess is not None else [])

    def base(self) -> dist.TorchDistribution:
        return dist.Normal(self.base_loc, self.base_scale).to_event(len(self.x_shape))

    def flow_distribution(self) -> dist.TransformedDistribution:
        """The continuous density (on (0, 1)^D for dequantized images) as a Pyro TransformedDistribution."""
        return dist.TransformedDistribution(self.base(), self.transforms())

    def distribution(self) -> TorchDistribution:
        """What the site ``x`` observes: the flow, or its dequantized version (one draw of ``u``)."""
        flow = self.flow_distribution()
        return Dequantized(flow, self.num_levels) if self.num_levels else flow

    # -- the Pyro program
    def default_guide(self) -> EmptyGuide:
        return EmptyGuide()

    def check(self, x: torch.Tensor) -> None:
        """One-line errors for data this flow cannot score."""
        if tuple(x.shape[1:]) != self.x_shape:
            what = "x_dim" if len(self.x_shape) == 1 else "x_shape"
            raise ValueError(
                f"{self.name} expects examples of shape {self.x_shape}, got {tuple(x.shape[1:])}; build it for "
                f"this data ({what}=...) or pick other data"
            )
        if not self.invertible:
            raise ValueError(
                f"{self.name} flows have no closed-form inverse, so they cannot score data by maximum likelihood; "
                "use them as a variational posterior fitted by reverse KL (flow.as_guide, "
                "examples/flow_energy_2d.py) or fit data with realnvp, maf or nsf"
            )
        if self.num_levels is not None:
            value_check((x >= 0) & (x <= 1), lambda: (
                f"{self.name} dequantizes pixels in [0, 1], got values in [{x.min().item():g}, {x.max().item():g}]; "
                "rescale the images to [0, 1]"))
            scaled = x * (self.num_levels - 1)
            off = (scaled - scaled.round()).abs()
            value_check(off <= 1e-3, lambda: (
                f"{self.name} expects pixels on a grid of num_levels={self.num_levels} levels in [0, 1], but "
                f"{x.flatten()[off.flatten().argmax()].item():g} lies between levels; set num_levels to the data's "
                "number of intensity levels"))

    def clear_cache(self) -> None:
        """Forget the transforms' cached last calls (see :meth:`Bijection.clear_cache`): data are scored
        through the inverse, never through the cache."""
        for layer in self.transforms():
            layer.clear_cache()

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        if x is not None:
            self.check(x)
            self.clear_cache()
        n = x.shape[0] if x is not None else (batch_size or 1)
        with pyro.plate("data", n):
            return pyro.sample("x", self.distribution(), obs=x)

    def flow_log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """The continuous density at ``y`` in one pass from the data side to the base: each transform's
        ``inverse_ladj`` directly, without the distribution objects and caches (the same value as
        ``flow_distribution().log_prob(y)``, tested)."""
        event = tuple(range(-len(self.x_shape), 0))
        ladj = 0
        for layer in reversed(self.transforms()):
            y, step = layer.inverse_ladj(y)
            ladj = ladj + step
        base = -0.5 * ((y - self.base_loc) / self.base_scale).pow(2) - self.base_scale.log() - _HALF_LOG_2PI
        return base.sum(event) - ladj

    def log_prob(self, x: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """log p(x) per row: exact, or the dequantization bound for images (see the module docstring)."""
        self.check(x)
        if self.num_levels is None:
            return self.flow_log_prob(x)
        return dequantized_log_prob(self.flow_log_prob, x, self.num_levels, num_samples or self.eval_samples,
                                    math.prod(self.x_shape))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws, passing base noise through each transform's ``forward_ladj`` directly."""
        return self.from_latent(self.prior_latents(n))

    has_latent_mean = False  # x = T(z)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.x_shape

    @torch.no_grad()
    def prior_latents(self, n: int) -> torch.Tensor:
        """``n`` draws of the base variable z."""
        return self.base_loc + self.base_scale * torch.randn((n,) + self.x_shape, device=self.base_loc.device,
                                                             dtype=self.base_loc.dtype)

    @torch.no_grad()
    def from_latent(self, z: torch.Tensor, mean: bool = False) -> torch.Tensor:
        """x = T(z) for given base values (quantized to the data's levels for image flows)."""
        if mean:
            raise ValueError(f"{self.name} makes x as a function of z: there is no likelihood mean to show")
        for layer in self.transforms():
            z = layer.forward_ladj(z)[0]
        return z if self.num_levels is None else quantize(z, self.num_levels)

    def sample_with_log_prob(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized draws of the continuous flow and their exact log-density (works for planar and
        radial flows too: the density of a flow's own sample needs no inverse)."""
        d = self.flow_distribution()
        x = d.rsample((n,))
        return x, d.log_prob(x)

    def as_guide(self, site: str = "z") -> "FlowGuide":
        """This flow as the guide of a model's latent ``site`` (one draw per data point)."""
        return FlowGuide(self, site)

    # -- data-dependent init and diagnostics
    def data_side(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous values the flow sees: dequantized pixels (one draw) or the data itself."""
        return x if self.num_levels is None else dequantize(x, self.num_levels)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, max_rows: int = 2048) -> None:
        """Data-dependent init of every ActNorm (Glow): pass a batch from the data side to the base."""
        if not self.invertible:
            return
        self.check(x[:max_rows])
        was = self.training
        self.train()
        y = self.data_side(x[:max_rows].to(self.base_loc.device))
        for _, layer in self.named_layers():
            y, _ = layer.inverse_ladj(y)
        self.train(was)

    def named_layers(self) -> list[tuple[str, Bijection]]:
        """Every bijection in data -> noise order, with a name for messages (multi-scale levels unrolled)."""
        out = []
        for i, layer in reversed(list(enumerate(self.transforms()))):
            label = "logit preprocessing" if layer is self.preprocess else f"layer {i + 1} ({type(layer).__name__})"
            out.append((label, layer))
        return out

    @torch.no_grad()
    def locate_nonfinite(self, x: torch.Tensor) -> str | None:
        """The first layer, from the data side, whose output or log-Jacobian is not finite on ``x``."""
        if not self.invertible:
            return None
        y = self.data_side(x)
        if not torch.isfinite(y).all():
            return "the data"
        for label, layer in self.named_layers():
            if isinstance(layer, MultiScale):
                inner = y
                for sub, step in _unroll(layer):
                    inner, ladj = step(inner)
                    if not (torch.isfinite(inner).all() and torch.isfinite(ladj).all()):
                        return f"{label}, {sub}"
            y, ladj = layer.inverse_ladj(y)
            if not (torch.isfinite(y).all() and torch.isfinite(ladj).all()):
                return label
        return None


def _unroll(level: MultiScale | None) -> list[tuple[str, Callable]]:
    """The data -> noise passes inside nested multi-scale levels, named, for locating a failure."""
    from pprogen.transforms import squeeze

    out: list[tuple[str, Callable]] = []
    depth = 1
    while level is not None:
        out.append((f"scale {depth} squeeze", lambda y: (squeeze(y), y.new_zeros(y.shape[:-3]))))
        out += [(f"scale {depth} step {j + 1} ({type(s).__name__})", s.inverse_ladj) for j, s in enumerate(level.steps)]
        if level.inner is not None:
            keep = level.keep
            out.append((f"scale {depth} factor-out", lambda y, k=keep: (y[..., k:, :, :], y.new_zeros(y.shape[:-3]))))
        level, depth = level.inner, depth + 1
    return out


class FlowGuide(PyroModule):
    """A flow as the guide of one latent site, one draw per data point."""

    def __init__(self, flow: Flow, site: str = "z") -> None:
        super().__init__()
        self.flow, self.site = flow, site

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None, **kwargs) -> torch.Tensor:
        n = x.shape[0] if x is not None else (batch_size or 1)
        with pyro.plate("data", n):
            return pyro.sample(self.site, self.flow.flow_distribution())


# ----------------------------------------------------------------------------- Rezende & Mohamed's energies


def _w1(z):
    return torch.sin(2 * math.pi * z[..., 0] / 4)


def _wall(z):
    # a soft wall at |z_i| = 4 so that U2-U4, flat along z1, are normalizable (the paper plots [-4, 4]^2)
    return (z / 4).pow(8).sum(-1)


def _u1(z):
    r = z.norm(dim=-1)
    modes = torch.stack([-0.5 * ((z[..., 0] - 2) / 0.6) ** 2, -0.5 * ((z[..., 0] + 2) / 0.6) ** 2])
    return 0.5 * ((r - 2) / 0.4) ** 2 - torch.logsumexp(modes, 0)


def _u2(z):
    return 0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2 + _wall(z)


def _u3(z):
    w2 = 3 * torch.exp(-0.5 * ((z[..., 0] - 1) / 0.6) ** 2)
    a = -0.5 * ((z[..., 1] - _w1(z)) / 0.35) ** 2
    b = -0.5 * ((z[..., 1] - _w1(z) + w2) / 0.35) ** 2
    return -torch.logsumexp(torch.stack([a, b]), 0) + _wall(z)


def _u4(z):
    w3 = 3 * torch.sigmoid((z[..., 0] - 1) / 0.3)
    a = -0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2
    b = -0.5 * ((z[..., 1] - _w1(z) + w3) / 0.35) ** 2
    return -torch.logsumexp(torch.stack([a, b]), 0) + _wall(z)


ENERGIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"u1": _u1, "u2": _u2, "u3": _u3, "u4": _u4}
"""The four 2-D energies U(z) of Rezende & Mohamed (2015), Table 1 (U2-U4 with a soft wall at |z_i| = 4)."""


def load_energy(spec: str | Callable, dim: int = 2) -> Callable[[torch.Tensor], torch.Tensor]:
    """An energy U(z) by name (:data:`ENERGIES`), as ``FILE.py:FUNCTION`` (a user's function of z (N, D) returning
    (N,)), or a callable; checked on a few points of dimension ``dim``. One-line errors otherwise."""
    if callable(spec):
        energy, what = spec, getattr(spec, "__name__", "the energy")
    elif spec in ENERGIES:
        if dim != 2:
            raise ValueError(f"energy {spec} is 2-D; drop --set x_dim={dim}")
        return ENERGIES[spec]
    elif isinstance(spec, str) and ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        import importlib.util
        from pathlib import Path

        path, name = spec.rsplit(":", 1)
        if not Path(path).is_file():
            raise ValueError(f"target file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:  # the user's file: report its first line of error
            raise ValueError(f"cannot import {path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        energy, what = getattr(module, name, None), f"{path}:{name}"
        if not callable(energy):
            raise ValueError(f"{path} defines no function {name!r}")
    else:
        raise ValueError(f"unknown target {spec!r}; choose {', '.join(ENERGIES)} or FILE.py:FUNCTION (a function of "
                         "z (N, D) returning the energy U(z), shape (N,))")
    try:
        value = energy(torch.zeros(3, dim))
    except Exception as err:
        raise ValueError(f"{what} fails on z of shape (3, {dim}) ({type(err).__name__}: {err}); it must take z (N, D) "
                         "and return U(z) (N,)") from None
    if not torch.is_tensor(value) or tuple(value.shape) != (3,) or not torch.isfinite(value).all():
        raise ValueError(f"{what} must return one finite energy per row (shape (3,) for z of shape (3, {dim})), got "
                         f"{tuple(value.shape) if torch.is_tensor(value) else type(value).__name__}")
    return energy


class EnergyTarget(PyroModule):
    """The unnormalized density p(z) ∝ exp(-U(z)) as a Pyro model: a flat (masked) site ``z`` plus
    ``pyro.factor(-U(z))``; its ELBO with a flow guide is -KL(q || p) + log Z."""

    def __init__(self, energy: str | Callable = "u1", dim: int = 2) -> None:
        super().__init__()
        if isinstance(energy, str):
            if energy not in ENERGIES:
                from pprogen.errors import unknown_name_error

                raise unknown_name_error("energy", energy, ENERGIES)
            energy = ENERGIES[energy]
        self.energy, self.dim = energy, dim
        self.register_buffer("zeros", torch.zeros(dim))

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> None:
        n = x.shape[0] if x is not None else (batch_size or 1)
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(self.zeros, 1.0).to_event(1).mask(False))
            pyro.factor("energy", -self.energy(z))

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        return -self.energy(z)


# ----------------------------------------------------------------------------- the zoo


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
    "maf", "nice", "nsf", "planar", "radial", "realnvp", "dequantize", "quantize",
]
