r"""Variational autoencoder: a latent Gaussian pushed through a neural decoder.

.. math::

    z_n \sim \mathcal{N}(0, I_{z\_dim}), \qquad x_n \mid z_n \sim p_\theta(x_n \mid \mathrm{decoder}(z_n))

with a Bernoulli, Gaussian (learned per-dimension scale) or continuous-Bernoulli likelihood, and the
amortized guide :math:`q_\phi(z_n \mid x_n) = \mathcal{N}(\mu_\phi(x_n), \mathrm{diag}\,\sigma_\phi^2(x_n))`.
The model is an ordinary Pyro program, so any guide or ELBO estimator can replace the defaults.

Reference: Auto-Encoding Variational Bayes, Kingma & Welling, 2014, https://arxiv.org/abs/1312.6114;
The continuous Bernoulli, Loaiza-Ganem & Cunningham, 2019, https://arxiv.org/abs/1907.06845.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from pprogen.models.flows import Flow
from pprogen.nn import MLP, ConvDecoder, ConvEncoder, check_labels, normal_head, with_onehot
from pprogen.registry import register_model
from pprogen.transforms import MaskedAutoregressive, alternating_orders, check_num_layers

LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli")


class AmortizedNormalGuide(PyroModule):
    """q(z | x) = N(loc(x), diag scale(x)^2), one draw per data point inside the ``data`` plate."""

    def __init__(self, encoder: nn.Module, z_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.z_dim = z_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return normal_head(self.encoder(x), self.z_dim)

    def forward(self, x: torch.Tensor, **condition: Any) -> None:
        loc, scale = self.encode(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class VAE(PyroModule):
    """The generative story p(x, z) = p(z) p(x | z); see the module docstring."""

    def __init__(
        self,
        x_shape: Sequence[int],
        z_dim: int,
        decoder: nn.Module,
        encoder_factory: Callable[[], nn.Module],
        likelihood: str = "bernoulli",
        prior: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}"
            )
        self.x_shape = tuple(x_shape)
        self.z_dim = z_dim
        self.likelihood = likelihood
        self.decoder = decoder
        self._encoder_factory = encoder_factory
        if likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.full(self.x_shape, math.log(0.3)))
        self.register_buffer("z_loc", torch.zeros(z_dim))
        self.register_buffer("z_scale", torch.ones(z_dim))
        self.prior_flow = prior  # a pprogen Flow on z, or None for N(0, I)

    def prior(self) -> dist.TorchDistribution:
        """p(z): N(0, I), or the learned flow prior (MAF: log p(z) of the guide's draws in one pass)."""
        if self.prior_flow is None:
            return dist.Normal(self.z_loc, self.z_scale).to_event(1)
        self.prior_flow.clear_cache()
        return self.prior_flow.flow_distribution()

    def decode(self, z: torch.Tensor, **condition: Any) -> torch.Tensor:
        """The decoder's output (the likelihood's parameters) at ``z``."""
        return self.decoder(z)

    def default_guide(self) -> AmortizedNormalGuide:
        """A fresh amortized diagonal-Normal guide whose encoder mirrors the decoder."""
        return AmortizedNormalGuide(self._encoder_factory(), self.z_dim)

    def likelihood_dist(self, z: torch.Tensor, **condition: Any) -> dist.TorchDistribution:
        out = self.decode(z, **condition)
        if self.likelihood == "bernoulli":
            fn = dist.Bernoulli(logits=out)
        elif self.likelihood == "continuous_bernoulli":
            fn = dist.ContinuousBernoulli(logits=out)
        else:
            fn = dist.Normal(out, self.log_scale.exp())
        return fn.to_event(len(self.x_shape))

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        n = x.shape[0] if x is not None else (batch_size or 1)
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.likelihood_dist(z), obs=x)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> torch.Tensor:
        """``n`` draws of x from the generative story (or the likelihood's mean when ``mean``)."""
        trace = poutine.trace(self).get_trace(batch_size=n)
        site = trace.nodes["x"]
        return site["fn"].mean if mean else site["value"]

    latent_site = "z"

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.z_dim,)

    @torch.no_grad()
    def prior_latents(self, n: int) -> torch.Tensor:
        """``n`` draws of z from the prior."""
        return self.prior().sample((n,))

    @torch.no_grad()
    def from_latent(self, z: torch.Tensor, mean: bool = False, **condition: Any) -> torch.Tensor:
        """x at given latents ``z``: the likelihood's mean with ``mean``, else one draw per row."""
        fn = self.likelihood_dist(z, **condition)
        return fn.mean if mean else fn.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, guide: Callable[..., Any]) -> torch.Tensor:
        """Mean of p(x | z) at z drawn from ``guide(x)``; works with any guide that samples ``z``."""
        z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
        return self.likelihood_dist(z).mean


def check_sizes(z_dim: int, hidden_dims: Sequence[int], what: str = "hidden_dims") -> tuple[int, ...]:
    if not isinstance(z_dim, int) or z_dim < 1:
        raise ValueError(f"z_dim must be a positive integer, got {z_dim!r}")
    hidden = tuple(int(h) for h in hidden_dims)
    if any(h < 1 for h in hidden):
        raise ValueError(f"{what} must be positive integers, got {list(hidden_dims)}")
    return hidden


@register_model(
    kind="latent",
    reference="Kingma & Welling, Auto-Encoding Variational Bayes, 2014, arXiv:1312.6114",
    default_data="digits_binary",
    story="z ~ N(0, I) (or a learned MAF / spline-flow prior: prior=maf|nsf); x | z ~ Bernoulli / Normal / "
    "ContinuousBernoulli(MLP decoder(z)); guide q(z | x) = N(MLP encoder(x)) amortized over the data plate "
    "(or --guide amortized_iaf / amortized_planar for flow posteriors).",
)
def vae(
    x_dim: int = 784,
    z_dim: int = 50,
    hidden_dims: Sequence[int] = (400, 400),
    likelihood: str = "bernoulli",
    activation: str = "relu",
    prior: str = "normal",
    prior_layers: int = 4,
    prior_hidden_dims: Sequence[int] = (256, 256),
) -> VAE:
    """A VAE with MLP encoder and decoder on flat data of dimension ``x_dim``; ``prior="maf"`` learns
    p(z) as a masked autoregressive flow."""
    hidden = check_sizes(z_dim, hidden_dims)
    return VAE(
        (x_dim,),
        z_dim,
        MLP(z_dim, hidden, x_dim, activation),
        lambda: MLP(x_dim, hidden[::-1], 2 * z_dim, activation),
        likelihood,
        flow_prior(prior, z_dim, prior_layers, prior_hidden_dims),
    )


PRIORS = ("normal", "maf", "nsf")


def flow_prior(kind: str, z_dim: int, num_layers: int, hidden_dims: Sequence[int]):
    """None for N(0, I); else a flow on z whose layers start near the identity (no data-side ActNorm:
    the guide's draws move during training)."""
    if kind == "normal":
        return None
    if kind not in PRIORS:
        raise ValueError(f"unknown prior {kind!r}; choose one of {', '.join(PRIORS)}")
    element = "affine" if kind == "maf" else "spline"
    layers = [MaskedAutoregressive(z_dim, hidden_dims, "density", element, order=order)
              for order in alternating_orders(z_dim, check_num_layers(num_layers, "prior_layers"))]
    return Flow((z_dim,), layers, name=f"{kind} prior")


@register_model(
    kind="latent",
    reference="Kingma & Welling, Auto-Encoding Variational Bayes, 2014, arXiv:1312.6114",
    default_data="digits_binary",
    story="z ~ N(0, I); x | z ~ Bernoulli / Normal / ContinuousBernoulli(conv decoder(z)) on (C, H, W) "
    "images; guide q(z | x) = N(conv encoder(x)).",
)
def conv_vae(
    x_shape: Sequence[int] = (1, 28, 28),
    z_dim: int = 32,
    hidden_dims: Sequence[int] = (256,),
    channels: Sequence[int] = (32, 64),
    likelihood: str = "bernoulli",
    activation: str = "relu",
) -> VAE:
    """A VAE with a convolutional encoder and a transposed-convolution decoder on images."""
    if len(x_shape) != 3:
        raise ValueError(f"conv_vae needs images of shape (C, H, W), got {tuple(x_shape)}")
    hidden = check_sizes(z_dim, hidden_dims)
    chans = check_sizes(z_dim, channels, "channels")
    return VAE(
        x_shape,
        z_dim,
        ConvDecoder(z_dim, x_shape, chans[::-1], hidden, activation),
        lambda: ConvEncoder(x_shape, 2 * z_dim, chans, hidden, activation),
        likelihood,
    )


# ----------------------------------------------------------------------------- conditional VAE


class ConditionalNormalGuide(PyroModule):
    """q(z | x, y) = N(loc(x, y), diag scale(x, y)^2): the encoder reads the image and its one-hot label."""

    def __init__(self, encoder: nn.Module, z_dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder, self.z_dim, self.num_classes = encoder, z_dim, num_classes

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, **condition: Any) -> None:
        y = check_labels(y, self.num_classes, x.shape[0])
        loc, scale = normal_head(self.encoder(with_onehot(x, y, self.num_classes)), self.z_dim)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class CVAE(VAE):
    """p(x, z | y) = N(z; 0, I) p(x | decoder(z, y)) with a label-conditioned guide (Sohn et al. 2015)."""

    conditional = True

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int], num_classes: int, likelihood: str,
                 act: str) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        super().__init__((x_dim,), z_dim, MLP(z_dim + num_classes, hidden, x_dim, act),
                         lambda: MLP(x_dim + num_classes, hidden[::-1], 2 * z_dim, act), likelihood)
        self.num_classes = num_classes

    def default_guide(self) -> ConditionalNormalGuide:
        return ConditionalNormalGuide(self._encoder_factory(), self.z_dim, self.num_classes)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(with_onehot(z, y, self.num_classes))

    @torch.no_grad()
    def from_latent(self, z: torch.Tensor, mean: bool = False, y: torch.Tensor | None = None) -> torch.Tensor:
        """x at given latents ``z`` and labels ``y`` (0, 1, ..., K-1 in turn when not given)."""
        if y is None:
            y = torch.arange(z.shape[0], device=z.device) % self.num_classes
        return super().from_latent(z, mean, y=check_labels(y, self.num_classes, z.shape[0]).to(z.device))

    def forward(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                batch_size: int | None = None) -> torch.Tensor:
        n = x.shape[0] if x is not None else y.shape[0] if y is not None else (batch_size or 1)
        y = check_labels(y, self.num_classes, n)
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.likelihood_dist(z, y=y), obs=x)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, mean: bool = False) -> torch.Tensor:
        """``n`` draws of x given labels ``y`` (labels 0, 1, ..., K-1 in turn when not given)."""
        if y is None:
            y = torch.arange(n, device=self.z_loc.device) % self.num_classes
        y = check_labels(y, self.num_classes, n).to(self.z_loc.device)
        site = poutine.trace(self).get_trace(y=y).nodes["x"]
        return site["fn"].mean if mean else site["value"]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, guide: Callable[..., Any], y: torch.Tensor | None = None) -> torch.Tensor:
        z = poutine.trace(guide).get_trace(x, y=y).nodes["z"]["value"]
        return self.likelihood_dist(z, y=check_labels(y, self.num_classes, x.shape[0])).mean


@register_model(
    kind="latent",
    reference="Sohn, Lee & Yan, Learning Structured Output Representation using Deep Conditional Generative "
    "Models, NeurIPS 2015",
    default_data="digits_binary",
    story="z ~ N(0, I); x | z, y ~ Bernoulli / Normal(MLP decoder([z, onehot(y)])); guide q(z | x, y) = "
    "N(MLP encoder([x, onehot(y)])); sample(n, y=labels) draws digits of the given classes.",
)
def cvae(
    x_dim: int = 784,
    num_classes: int = 10,
    z_dim: int = 20,
    hidden_dims: Sequence[int] = (400, 400),
    likelihood: str = "bernoulli",
    activation: str = "relu",
) -> CVAE:
    """A label-conditioned VAE on flat data."""
    return CVAE(x_dim, z_dim, check_sizes(z_dim, hidden_dims), num_classes, likelihood, activation)


# ----------------------------------------------------------------------------- two stochastic layers


class _GaussianLayer(nn.Module):
    """h -> N(loc(h), diag scale(h)^2) through an MLP."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, act: str) -> None:
        super().__init__()
        self.net = MLP(in_dim, hidden, 2 * out_dim, act)
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(*normal_head(self.net(h), self.out_dim, min_scale=1e-4)).to_event(1)


class HVAEGuide(PyroModule):
    """q(z1 | x) q(z2 | z1), the bottom-up inference network of the IWAE paper."""

    def __init__(self, x_dim: int, z_dims: Sequence[int], hidden: Sequence[Sequence[int]], act: str) -> None:
        super().__init__()
        self.q1 = _GaussianLayer(x_dim, hidden[0], z_dims[0], act)
        self.q2 = _GaussianLayer(z_dims[0], hidden[1], z_dims[1], act)

    def forward(self, x: torch.Tensor, **condition: Any) -> None:
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self.q1(x))
            pyro.sample("z2", self.q2(z1))


class HVAE(PyroModule):
    """p(z2) p(z1 | z2) p(x | z1): two stochastic layers (Burda, Grosse & Salakhutdinov 2016)."""

    def __init__(self, x_dim: int, z_dims: Sequence[int], hidden: Sequence[Sequence[int]], act: str) -> None:
        super().__init__()
        self.x_shape = (x_dim,)
        self.x_dim, self.z_dims, self.hidden, self.act = x_dim, tuple(z_dims), hidden, act
        self.p_z1 = _GaussianLayer(z_dims[1], hidden[1], z_dims[0], act)
        self.decoder = MLP(z_dims[0], hidden[0], x_dim, act)
        self.register_buffer("z_loc", torch.zeros(z_dims[1]))
        self.register_buffer("z_scale", torch.ones(z_dims[1]))

    def default_guide(self) -> HVAEGuide:
        return HVAEGuide(self.x_dim, self.z_dims, self.hidden, self.act)

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        n = x.shape[0] if x is not None else (batch_size or 1)
        with pyro.plate("data", n):
            z2 = pyro.sample("z2", dist.Normal(self.z_loc, self.z_scale).to_event(1))
            z1 = pyro.sample("z1", self.p_z1(z2))
            return pyro.sample("x", dist.Bernoulli(logits=self.decoder(z1)).to_event(1), obs=x)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> torch.Tensor:
        site = poutine.trace(self).get_trace(batch_size=n).nodes["x"]
        return site["fn"].mean if mean else site["value"]

    latent_site = "z2"  # the top latent: interpolations and traversals start there

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.z_dims[1],)

    @torch.no_grad()
    def prior_latents(self, n: int) -> torch.Tensor:
        return dist.Normal(self.z_loc, self.z_scale).sample((n,))

    @torch.no_grad()
    def from_latent(self, z2: torch.Tensor, mean: bool = False) -> torch.Tensor:
        """x at given top latents: z1 | z2 and x | z1 their means with ``mean``, else draws."""
        q = self.p_z1(z2)
        z1 = q.mean if mean else q.sample()
        logits = self.decoder(z1)
        return torch.sigmoid(logits) if mean else dist.Bernoulli(logits=logits).sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, guide: Callable[..., Any]) -> torch.Tensor:
        z1 = poutine.trace(guide).get_trace(x).nodes["z1"]["value"]
        return torch.sigmoid(self.decoder(z1))


@register_model(
    kind="latent",
    reference="Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, 2016, arXiv:1509.00519",
    default_data="digits_binary",
    story="z2 ~ N(0, I_50); z1 | z2 ~ N(MLP 100-100(z2)); x | z1 ~ Bernoulli(MLP 200-200(z1)); guide "
    "q(z1 | x) q(z2 | z1) with the mirrored networks (the IWAE paper's two-layer architecture).",
)
def hvae(
    x_dim: int = 784,
    z_dims: Sequence[int] = (100, 50),
    hidden_dims: Sequence[int] = (200, 200),
    top_hidden_dims: Sequence[int] = (100, 100),
    activation: str = "tanh",
) -> HVAE:
    """A VAE with two stochastic layers; train it with --elbo iwae for the IWAE paper's model."""
    if len(z_dims) != 2:
        raise ValueError(f"hvae has two stochastic layers: z_dims needs two sizes, got {list(z_dims)}")
    z1 = check_sizes(int(z_dims[0]), hidden_dims)
    check_sizes(int(z_dims[1]), top_hidden_dims, "top_hidden_dims")
    return HVAE(x_dim, (int(z_dims[0]), int(z_dims[1])), (z1, tuple(int(h) for h in top_hidden_dims)), activation)
