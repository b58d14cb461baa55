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
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from pprogen.nn import MLP, ConvDecoder, ConvEncoder
from pprogen.registry import register_model

LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli")


class AmortizedNormalGuide(PyroModule):
    """q(z | x) = N(loc(x), diag scale(x)^2), one draw per data point inside the ``data`` plate."""

    def __init__(self, encoder: nn.Module, z_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.z_dim = z_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.encoder(x).split(self.z_dim, -1)
        return loc, F.softplus(raw_scale) + 1e-5

    def forward(self, x: torch.Tensor, **condition) -> None:
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
        encoder_factory,
        likelihood: str = "bernoulli",
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

    def default_guide(self) -> AmortizedNormalGuide:
        """A fresh amortized diagonal-Normal guide whose encoder mirrors the decoder."""
        return AmortizedNormalGuide(self._encoder_factory(), self.z_dim)

    def likelihood_dist(self, z: torch.Tensor) -> dist.TorchDistribution:
        out = self.decoder(z)
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
            z = pyro.sample("z", dist.Normal(self.z_loc, self.z_scale).to_event(1))
            return pyro.sample("x", self.likelihood_dist(z), obs=x)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> torch.Tensor:
        """``n`` draws of x from the generative story (or the likelihood's mean when ``mean``)."""
        trace = poutine.trace(self).get_trace(batch_size=n)
        site = trace.nodes["x"]
        return site["fn"].mean if mean else site["value"]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, guide) -> torch.Tensor:
        """Mean of p(x | z) at z drawn from ``guide(x)``; works with any guide that samples ``z``."""
        z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
        return self.likelihood_dist(z).mean


def _check_sizes(z_dim: int, hidden_dims: Sequence[int], what: str = "hidden_dims") -> tuple[int, ...]:
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
    story="z ~ N(0, I); x | z ~ Bernoulli / Normal / ContinuousBernoulli(MLP decoder(z)); "
    "guide q(z | x) = N(MLP encoder(x)) amortized over the data plate.",
)
def vae(
    x_dim: int = 784,
    z_dim: int = 50,
    hidden_dims: Sequence[int] = (400, 400),
    likelihood: str = "bernoulli",
    activation: str = "relu",
) -> VAE:
    """A VAE with MLP encoder and decoder on flat data of dimension ``x_dim``."""
    hidden = _check_sizes(z_dim, hidden_dims)
    return VAE(
        (x_dim,),
        z_dim,
        MLP(z_dim, hidden, x_dim, activation),
        lambda: MLP(x_dim, hidden[::-1], 2 * z_dim, activation),
        likelihood,
    )


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
    hidden = _check_sizes(z_dim, hidden_dims)
    chans = _check_sizes(z_dim, channels, "channels")
    return VAE(
        x_shape,
        z_dim,
        ConvDecoder(z_dim, x_shape, chans[::-1], hidden, activation),
        lambda: ConvEncoder(x_shape, 2 * z_dim, chans, hidden, activation),
        likelihood,
    )
