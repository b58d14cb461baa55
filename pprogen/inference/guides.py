r"""Guides by name, for any model: ``make_guide(name, model, **kw)``.

``default`` is the model's own ``default_guide()``. The amortized guides are built from *any* model by
running it once on the data and taking its local latent sites (unobserved, inside the ``data`` plate):
an encoder maps each :math:`x_n` to features :math:`h_n`, and each site gets

- ``amortized_normal``:  :math:`q(z_n \mid x_n) = \mathcal{N}(\mu(h_n), \mathrm{diag}\,\sigma^2(h_n))`;
- ``amortized_lowrank``: :math:`\mathcal{N}(\mu(h_n), F(h_n) F(h_n)^\top + \mathrm{diag}\,d(h_n))`;
- ``amortized_iaf``: the diagonal Normal followed by inverse autoregressive flow steps conditioned on
  :math:`h_n` (Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow, 2016,
  arXiv:1606.04934);
- ``amortized_planar``: the diagonal Normal followed by ``num_flows`` planar steps whose parameters the
  encoder outputs for each :math:`x_n` (Rezende & Mohamed, Variational Inference with Normalizing Flows,
  2015, arXiv:1505.05770).

The per-datum plate is ``plate_name``, or the plate whose size is the number of rows the guide is first
called with. Constrained latents are sampled in unconstrained space and mapped by ``biject_to(support)``.
The encoder is an MLP for vectors and a conv net for images ``(C, H, W)``, or any module passed as
``encoder`` with its output width as ``feature_dim``. Pyro's autoguides serve global latents: ``auto_*``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.infer import autoguide
from pyro.nn import ConditionalAutoRegressiveNN, PyroModule
from torch import nn
from torch.distributions import biject_to, constraints

from pprogen.inference.tracing import SiteCollector, find_data_plate, in_plate
from pprogen.transforms import ConditionalPlanar
from pprogen.nn import MLP, ConvEncoder, normal_head
from pprogen.errors import unknown_name_error

AUTOGUIDES = {
    "auto_normal": autoguide.AutoNormal,
    "auto_diag": autoguide.AutoDiagonalNormal,
    "auto_mvn": autoguide.AutoMultivariateNormal,
    "auto_lowrank": autoguide.AutoLowRankMultivariateNormal,
    "auto_iaf": autoguide.AutoIAFNormal,
    "auto_delta": autoguide.AutoDelta,
    "auto_laplace": autoguide.AutoLaplaceApproximation,
}
FAMILIES = ("normal", "lowrank", "iaf", "planar")
GUIDES = ("default", *(f"amortized_{f}" for f in FAMILIES), *AUTOGUIDES)


class AmortizedGuide(PyroModule):
    """An amortized guide for every local latent of ``model``; built on its first call."""

    def __init__(
        self,
        model: Callable,
        family: str = "normal",
        encoder: nn.Module | None = None,
        feature_dim: int | None = None,
        hidden_dims: Sequence[int] = (256, 256),
        rank: int = 2,
        num_iaf: int = 2,
        num_flows: int = 8,
        plate_name: str | None = None,
    ) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise unknown_name_error("amortized guide family", family, FAMILIES)
        if encoder is not None and feature_dim is None:
            raise ValueError("pass feature_dim (the width of the encoder's output) with a custom encoder")
        self._model = [model]  # a list: the model is not a submodule of its guide
        self.family = family
        self.hidden_dims = tuple(hidden_dims)
        self.rank = rank
        self.num_iaf = num_iaf
        if not isinstance(num_flows, int) or num_flows < 1:
            raise ValueError(f"num_flows must be a positive integer, got {num_flows!r}")
        self.num_flows = num_flows
        self.plate_name = plate_name
        self.encoder = encoder
        self.feature_dim = feature_dim
        self.sites: list[tuple[str, tuple[int, ...], Any]] = []
        self.heads = nn.ModuleDict()
        self.flows = nn.ModuleDict()

    def _build(self, x: torch.Tensor, kwargs: dict) -> None:
        with torch.no_grad(), pyro.poutine.block(), SiteCollector() as run:
            self._model[0](x, **kwargs)
        frame = find_data_plate(run.sites, x.shape[0], self.plate_name)
        if frame is None:
            raise ValueError(
                "the model has no plate, so no site is per-datum; an amortized guide needs the local latents "
                "inside pyro.plate('data', len(x)) (or an auto_* guide for global ones)"
            )
        self.plate_name = frame.name
        for site in run.sites:
            if site["is_observed"] or any(site["name"] == known[0] for known in self.sites):
                continue
            if not in_plate(site, self.plate_name):
                raise ValueError(
                    f"latent site {site['name']!r} sits outside the {self.plate_name!r} plate; amortized "
                    "guides cover per-datum latents only: pair them with an auto_* guide for global ones "
                    "(pyro.infer.autoguide.AutoGuideList) or use an auto_* guide"
                )
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"latent site {site['name']!r} is discrete; amortized guides are continuous: enumerate "
                    "it in the model (infer={'enumerate': 'parallel'}) and train with elbo 'enum'"
                )
            self.sites.append((site["name"], tuple(site["fn"].event_shape), site["fn"].support))
        if not self.sites:
            raise ValueError("the model has no local latent site to amortize; it needs no guide (pass an empty one)")
        if self.encoder is None:
            data_shape = tuple(x.shape[1:])
            self.feature_dim = self.hidden_dims[-1] if self.hidden_dims else 64
            if len(data_shape) == 3:
                self.encoder = ConvEncoder(data_shape, self.feature_dim)
            else:
                width = math.prod(data_shape)
                self.encoder = nn.Sequential(nn.Flatten(), MLP(width, self.hidden_dims[:-1], self.feature_dim), nn.ReLU())
        for name, shape, _ in self.sites:
            dim = math.prod(shape)
            extra = dim * self.rank if self.family == "lowrank" else 0
            if self.family == "planar":
                extra = self.num_flows * (2 * dim + 1)
            self.heads[name] = nn.Linear(self.feature_dim, 2 * dim + extra)
            if self.family == "planar":  # start each step mild: u ~ 0, |w| = 1 (u_hat ~ 1/|w| blows up for small w)
                with torch.no_grad():
                    steps = self.heads[name].weight[2 * dim :].view(self.num_flows, 2 * dim + 1, -1)
                    steps.mul_(1e-2)
                    bias = self.heads[name].bias[2 * dim :].view(self.num_flows, 2 * dim + 1)
                    bias.zero_()
                    bias[:, dim : 2 * dim] = 1 / math.sqrt(dim)
            if self.family == "iaf":
                self.flows[name] = nn.ModuleList(
                    ConditionalAutoRegressiveNN(dim, self.feature_dim, [max(2 * dim, 32)])
                    for _ in range(self.num_iaf)
                )
        self.to(x.device)

    def _site_dist(self, name: str, shape: tuple[int, ...], support, h: torch.Tensor):
        dim = math.prod(shape)
        out = self.heads[name](h)
        loc, scale = normal_head(out, dim)
        if self.family == "lowrank":
            factor = out[..., 2 * dim :].reshape(out.shape[:-1] + (dim, self.rank))
            base = dist.LowRankMultivariateNormal(loc, factor, scale)
        else:
            base = dist.Normal(loc, scale).to_event(1)
        transforms = []
        if self.family == "iaf":
            transforms += [ConditionalAffineAutoregressive(nn_).condition(h) for nn_ in self.flows[name]]
        if self.family == "planar":
            transforms.append(ConditionalPlanar(out[..., 2 * dim :], dim))
        if shape != (dim,):
            transforms.append(torch.distributions.ReshapeTransform((dim,), shape))
        if not _is_real(support):
            transforms.append(biject_to(support))
        return dist.TransformedDistribution(base, transforms) if transforms else base

    def forward(self, x: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
        if not self.sites:
            self._build(x, kwargs)
        h = self.encoder(x)
        values = {}
        with pyro.plate(self.plate_name, x.shape[0]):
            for name, shape, support in self.sites:
                values[name] = pyro.sample(name, self._site_dist(name, shape, support, h))
        return values


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def make_guide(name: str, model: Callable, **kw: Any) -> Callable:
    """A guide for ``model`` by name: ``default``, ``amortized_normal|lowrank|iaf`` or ``auto_*``."""
    if name == "default":
        if not hasattr(model, "default_guide"):
            raise ValueError(
                "this model has no default_guide(); pass a guide you wrote, an amortized_* guide or one of "
                + ", ".join(AUTOGUIDES)
            )
        return model.default_guide(**kw)
    if name.startswith("amortized_") and name[len("amortized_"):] in FAMILIES:
        return AmortizedGuide(model, family=name[len("amortized_"):], **kw)
    if name in AUTOGUIDES:
        return AUTOGUIDES[name](model, **kw)
    raise unknown_name_error("guide", name, GUIDES)


class PosteriorDraws(PyroModule):
    """A guide that replays stored draws of a model's global latents (a sampler's, such as NUTS's): each call
    picks one stored draw uniformly at random at the auxiliary site ``"_draw"`` and returns each site's value
    from it; inside a plate (``pyro.plate("draws", S)``) every plate entry picks its own draw. Posterior
    predictive scores of such a guide are Monte Carlo averages over the stored draws."""

    def __init__(self, draws: dict[str, torch.Tensor]) -> None:
        super().__init__()
        sizes = {v.shape[0] for v in draws.values()}
        if not draws or len(sizes) != 1 or 0 in sizes:
            raise ValueError("PosteriorDraws needs at least one site and the same number (> 0) of draws at each, "
                             f"got {({k: tuple(v.shape) for k, v in draws.items()})}")
        self.sites = sorted(draws)
        for i, name in enumerate(self.sites):
            self.register_buffer(f"draws_{i}", draws[name].detach().clone())

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], sites: list[str]) -> "PosteriorDraws":
        """Rebuild from a state dict (``draws_0``, ...) and the site names in order."""
        return cls({name: state[f"draws_{i}"] for i, name in enumerate(sites)})

    @property
    def num_draws(self) -> int:
        return self.draws_0.shape[0]

    def draws(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"draws_{i}") for i, name in enumerate(self.sites)}

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        first = self.draws_0
        index = pyro.sample("_draw", dist.Categorical(logits=first.new_zeros(first.shape[0])),
                            infer={"is_auxiliary": True})
        out = {}
        for name, values in self.draws().items():
            out[name] = pyro.sample(name, dist.Delta(values[index], event_dim=values.dim() - 1))
        return out
