r"""Deterministic autoencoders, the model the VAE is introduced against, and their linear case (PCA).

.. math::

    z_n = \mathrm{encoder}(x_n), \qquad \hat x_n = \mathrm{decoder}(z_n), \qquad
    \min \textstyle\sum_n \ell(x_n, \hat x_n)

with a Bernoulli cross-entropy or a squared-error reconstruction loss :math:`\ell`. As a Pyro program the code
``z`` has a flat, improper prior (``ImproperUniform``: log density 0, no draws) and the guide is a point mass at
the encoder's output, so the ELBO any estimator computes is exactly :math:`-\ell`. There is no likelihood:
``log p(x)`` is not defined, the program cannot be sampled from a prior, and pprogen scores it by
reconstruction error (``reconstruction_error``), never by importance sampling.

The linear autoencoder with squared error learns the span of the data's leading principal directions (Baldi &
Hornik 1989): ``LinearAutoencoder.subspace()`` gives an orthonormal basis of it to compare with PCA's.

Reference: Hinton & Salakhutdinov, Reducing the Dimensionality of Data with Neural Networks, Science 2006;
Baldi & Hornik, Neural networks and principal component analysis, Neural Networks 2(1), 1989.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import nn

from pprogen.nn import MLP, ConvDecoder, ConvEncoder
from pprogen.registry import register_model

RECONSTRUCTIONS = ("bernoulli", "mse")
ARCHITECTURES = ("mlp", "conv")


class FlatPrior(dist.ImproperUniform):
    """Pyro's ``ImproperUniform`` over the reals with its zero log density made on the value's device and dtype."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        shape = value.shape[:value.dim() - len(self.event_shape)]
        return value.new_zeros(shape)

    def expand(self, batch_shape: Sequence[int], _instance: FlatPrior | None = None) -> FlatPrior:
        return FlatPrior(self.support, torch.Size(batch_shape), self.event_shape)


class DeterministicEncoder(PyroModule):
    """The guide of an autoencoder: a point mass q(z | x) = delta(z - encoder(x)) in the ``data`` plate."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor, **condition: Any) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(self.encoder(x), event_dim=1))


class Autoencoder(PyroModule):
    """An encoder and a decoder trained on reconstruction; see the module docstring."""

    latent_site = "z"

    def __init__(self, x_shape: Sequence[int], z_dim: int, decoder: nn.Module,
                 encoder_factory: Callable[[], nn.Module], reconstruction: str = "bernoulli") -> None:
        super().__init__()
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"unknown reconstruction loss {reconstruction!r}; choose one of {', '.join(RECONSTRUCTIONS)}")
        self.x_shape, self.z_dim, self.reconstruction = tuple(x_shape), z_dim, reconstruction
        self.decoder = decoder
        self._encoder_factory = encoder_factory

    def default_guide(self) -> DeterministicEncoder:
        """A fresh encoder (a point-mass guide) mirroring the decoder."""
        return DeterministicEncoder(self._encoder_factory())

    def code_prior(self) -> dist.TorchDistribution:
        """The flat prior over codes: log density 0 everywhere, so the ELBO is the reconstruction term alone."""
        return FlatPrior(constraints.real, (), (self.z_dim,))

    def reconstruction_dist(self, z: torch.Tensor) -> dist.TorchDistribution:
        """Bernoulli(logits = decoder(z)), or N(decoder(z), 1) whose negative log density is half the squared
        error plus (D / 2) log(2 pi)."""
        out = self.decoder(z)
        fn = dist.Bernoulli(logits=out) if self.reconstruction == "bernoulli" else dist.Normal(out, 1.0)
        return fn.to_event(len(self.x_shape))

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        if x is None:
            raise ValueError("an autoencoder has no prior over its codes, so it generates nothing on its own; give "
                             "it data to reconstruct (or train a vae, which has one)")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.code_prior())
            return pyro.sample("x", self.reconstruction_dist(z), obs=x)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.z_dim,)

    def prior_latents(self, n: int) -> torch.Tensor:
        raise ValueError("an autoencoder has no prior over its codes to draw from; start from the codes of data "
                         "(pprogen sample RUN --from-data ...)")

    @torch.no_grad()
    def from_latent(self, z: torch.Tensor, mean: bool = True, **condition: Any) -> torch.Tensor:
        """The decoder's output at codes ``z``: its mean, or one draw of the reconstruction distribution."""
        fn = self.reconstruction_dist(z)
        return fn.mean if mean else fn.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, guide: Callable[..., Any]) -> torch.Tensor:
        """decoder(encoder(x)) (the mean of the reconstruction distribution) with the guide's encoder."""
        z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
        return self.reconstruction_dist(z).mean

    @torch.no_grad()
    def reconstruction_error(self, x: torch.Tensor, guide: Callable[..., Any]) -> dict[str, torch.Tensor]:
        """Per row: the squared error of the reconstruction and the training loss (Bernoulli cross-entropy in
        nats, or half the squared error plus the Gaussian constant)."""
        z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
        fn = self.reconstruction_dist(z)
        squared = (fn.mean - x).pow(2).flatten(1).sum(1)
        return {"squared_error": squared, "loss": -fn.log_prob(x)}


class LinearAutoencoder(Autoencoder):
    """x_hat = W_dec (W_enc x + b_enc) + b_dec with squared error: its optimum spans PCA's leading subspace."""

    def subspace(self) -> torch.Tensor:
        """An orthonormal basis (x_dim, z_dim) of the decoder's column space: the learned subspace."""
        q, _ = torch.linalg.qr(self.decoder.weight.detach().double())
        return q


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The principal angles (radians, ascending) between the column spaces of ``a`` and ``b`` (Björck & Golub)."""
    qa, _ = torch.linalg.qr(a.double())
    qb, _ = torch.linalg.qr(b.double())
    cosines = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.arccos(cosines)  # singular values descend, so the angles ascend


def _check(z_dim: int, hidden_dims: Sequence[int]) -> tuple[int, ...]:
    if not isinstance(z_dim, int) or isinstance(z_dim, bool) or z_dim < 1:
        raise ValueError(f"z_dim must be a positive integer, got {z_dim!r}")
    hidden = tuple(int(h) for h in hidden_dims)
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden_dims must be positive integers, got {list(hidden_dims)}")
    return hidden


class _Flat(nn.Module):
    """An MLP on images: flatten (C, H, W), run the network, reshape its output to ``out_shape``."""

    def __init__(self, net: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        self.net, self.in_ndim, self.out_shape = net, len(in_shape), tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:x.dim() - self.in_ndim]
        return self.net(x.reshape(batch + (-1,))).reshape(batch + self.out_shape)


@register_model(
    kind="autoencoder",
    reference="Hinton & Salakhutdinov, Reducing the Dimensionality of Data with Neural Networks, Science 2006",
    default_data="digits_binary",
    story="z = encoder(x) (a point-mass guide), x_hat = decoder(z); trained on Bernoulli cross-entropy or squared "
    "error with a flat, improper prior on z, so the ELBO is the reconstruction loss alone. No likelihood: scored by "
    "reconstruction error; no prior to sample from (a vae has one).",
)
def autoencoder(
    x_shape: Sequence[int] = (784,),
    z_dim: int = 16,
    hidden_dims: Sequence[int] = (400, 400),
    architecture: str = "mlp",
    channels: Sequence[int] = (32, 64),
    reconstruction: str = "bernoulli",
    activation: str = "relu",
) -> Autoencoder:
    """A deterministic autoencoder, MLP (any data shape) or convolutional (images (C, H, W))."""
    hidden = _check(z_dim, hidden_dims)
    x_shape = tuple(int(s) for s in x_shape)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    if architecture == "conv":
        if len(x_shape) != 3:
            raise ValueError(f"architecture='conv' needs images of shape (C, H, W), got {x_shape}; use "
                             "architecture='mlp' for flat data")
        chans = _check(z_dim, channels)
        return Autoencoder(x_shape, z_dim, ConvDecoder(z_dim, x_shape, chans[::-1], hidden, activation),
                           lambda: ConvEncoder(x_shape, z_dim, chans, hidden, activation), reconstruction)
    dim = math.prod(x_shape)
    return Autoencoder(x_shape, z_dim, _Flat(MLP(z_dim, hidden, dim, activation), (z_dim,), x_shape),
                       lambda: _Flat(MLP(dim, hidden[::-1], z_dim, activation), x_shape, (z_dim,)), reconstruction)


@register_model(
    kind="autoencoder",
    reference="Baldi & Hornik, Neural networks and principal component analysis, Neural Networks 2(1), 1989",
    default_data="digits",
    # full-batch Adam, annealed: the subspace converges at the pace of the smallest eigengap it must resolve
    train_defaults={"epochs": 1000, "batch_size": 4096, "lr": 0.05, "schedule": "cosine", "patience": 1000},
    story="z = A x + a, x_hat = W z + b, trained on squared error: the learned column space of W is PCA's "
    "leading z_dim-dimensional subspace (and PPCA's maximum-likelihood one). No likelihood: scored by "
    "reconstruction error.",
)
def linear_ae(x_dim: int = 64, z_dim: int = 2) -> LinearAutoencoder:
    """A linear autoencoder with squared-error reconstruction (PCA learned by gradient descent)."""
    _check(z_dim, ())
    if not isinstance(x_dim, int) or x_dim < 1:
        raise ValueError(f"x_dim must be a positive integer, got {x_dim!r}")
    if z_dim >= x_dim:
        raise ValueError(f"linear_ae with z_dim={z_dim} >= x_dim={x_dim} is as wide as the data: it learns the identity, "
                         "not a subspace; choose z_dim < x_dim")
    return LinearAutoencoder((x_dim,), z_dim, nn.Linear(z_dim, x_dim), lambda: nn.Linear(x_dim, z_dim), "mse")
