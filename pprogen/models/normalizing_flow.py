r"""The flow model: a standard Normal pushed through learnable bijections, observed at one site.

.. math::

    u \sim \mathcal{N}(0, I), \quad x = f_K \circ \dots \circ f_1(u), \qquad
    \log p(x) = \log \mathcal{N}(f^{-1}(x); 0, I) - \sum_k \log\left|\det \frac{\partial f_k}{\partial u_{k-1}}\right|

:class:`Flow` is a ``PyroModule`` that builds a Pyro ``TransformedDistribution`` from the transforms in
:mod:`pprogen.transforms` and observes ``x`` with it inside the ``data`` plate, so SVI with the empty guide is
maximum likelihood. It also scores data in one pass from the data side to the base (``log_prob``), samples in one
pass the other way (``sample``, ``from_latent``), initializes every ActNorm from a data batch
(``init_from_data``) and names the first layer that turns a batch non-finite (``locate_nonfinite``).

With ``num_levels`` set, a flow models images with that many intensity levels in [0, 1] through uniform
dequantization (:mod:`pprogen.models.dequantization`) and the logit preprocessing
(:class:`pprogen.transforms.Logit`), whose Jacobian is part of the density; ``log_prob`` is then the
dequantization bound in nats, and bits/dim are ``-log_prob / (D ln 2)``.

Flows without a closed-form inverse (planar, radial) score only their own samples; :class:`FlowGuide`
(``flow.as_guide("z")``) makes a flow the variational posterior of a model's latent site. The zoo's presets
that assemble flows are in :mod:`pprogen.models.flows`.

References: Rezende & Mohamed, Variational Inference with Normalizing Flows, 2015, arXiv:1505.05770;
Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference, 2021, arXiv:1912.02762.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.nn import PyroModule
from torch import nn

from pprogen.models.dequantization import Dequantized, dequantize, dequantized_log_prob, quantize
from pprogen.nn import EmptyGuide, value_check
from pprogen.transforms import Bijection, Logit, MultiScale, Planar, Radial


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


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

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None, **kwargs: Any) -> torch.Tensor:
        n = x.shape[0] if x is not None else (batch_size or 1)
        with pyro.plate("data", n):
            return pyro.sample(self.site, self.flow.flow_distribution())
