r"""Probabilistic PCA and factor analysis: a linear-Gaussian latent model with exact evidence.

.. math::

    z_n \sim \mathcal{N}(0, I_{z\_dim}), \qquad x_n \mid z_n \sim \mathcal{N}(W z_n + \mu, \Psi),
    \qquad p(x_n) = \mathcal{N}(x_n; \mu, W W^\top + \Psi),

with :math:`\Psi = \sigma^2 I` (PPCA) or a diagonal :math:`\Psi` (factor analysis). The posterior is
Gaussian, :math:`q(z_n \mid x_n) = \mathcal{N}(M^{-1} W^\top \Psi^{-1}(x_n - \mu), M^{-1})` with
:math:`M = I + W^\top \Psi^{-1} W`, so the default guide — an affine encoder with a shared full
covariance — contains it: the ELBO can be tight, which makes PPCA the zoo's ground truth for
estimators. PPCA's maximum-likelihood parameters have a closed form (``closed_form_mle``).

Reference: Tipping & Bishop, Probabilistic Principal Component Analysis, JRSS B, 1999.
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pprogen.registry import register_model

NOISES = ("isotropic", "diagonal")


class LinearGaussianGuide(PyroModule):
    """q(z | x) = N(A x + b, L L^T) with L lower-triangular and shared across data points."""

    def __init__(self, x_dim: int, z_dim: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(x_dim, z_dim)
        self.raw_tril = nn.Parameter(torch.zeros(z_dim, z_dim))

    def scale_tril(self) -> torch.Tensor:
        lower = torch.tril(self.raw_tril, -1)
        return lower + torch.diag(F.softplus(self.raw_tril.diagonal()) + 1e-5)

    def forward(self, x: torch.Tensor, **condition: Any) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(self.encoder(x), scale_tril=self.scale_tril()))


class PPCA(PyroModule):
    """The story above; ``log_prob(x)`` is exact."""

    def __init__(self, x_dim: int, z_dim: int, noise: str = "isotropic") -> None:
        super().__init__()
        if noise not in NOISES:
            raise ValueError(f"unknown noise model {noise!r}; choose one of {', '.join(NOISES)}")
        if not (isinstance(z_dim, int) and 1 <= z_dim) or not (isinstance(x_dim, int) and x_dim >= 1):
            raise ValueError(f"x_dim and z_dim must be positive integers, got x_dim={x_dim!r}, z_dim={z_dim!r}")
        self.x_shape = (x_dim,)
        self.z_dim = z_dim
        self.noise = noise
        self.weight = nn.Parameter(torch.randn(x_dim, z_dim) / math.sqrt(z_dim))
        self.loc = nn.Parameter(torch.zeros(x_dim))
        self.log_noise = nn.Parameter(torch.zeros(1 if noise == "isotropic" else x_dim))
        self.register_buffer("z_loc", torch.zeros(z_dim))
        self.register_buffer("z_scale", torch.ones(z_dim))

    def noise_scale(self) -> torch.Tensor:
        return self.log_noise.exp().expand(self.x_shape)

    def default_guide(self) -> LinearGaussianGuide:
        return LinearGaussianGuide(self.x_shape[0], self.z_dim).to(self.loc.device)

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        n = x.shape[0] if x is not None else (batch_size or 1)
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(self.z_loc, self.z_scale).to_event(1))
            mean = z @ self.weight.T + self.loc
            return pyro.sample("x", dist.Normal(mean, self.noise_scale()).to_event(1), obs=x)

    def marginal(self) -> dist.MultivariateNormal:
        cov = self.weight @ self.weight.T + torch.diag(self.noise_scale() ** 2)
        return dist.MultivariateNormal(self.loc, covariance_matrix=cov)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per row."""
        return self.marginal().log_prob(x)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.marginal().sample((n,))

    @staticmethod
    def closed_form_mle(x: torch.Tensor, z_dim: int) -> dict[str, torch.Tensor]:
        """Tipping & Bishop's maximum-likelihood ``loc``, ``weight`` (up to rotation), ``noise_var``."""
        loc = x.mean(0)
        cov = (x - loc).T @ (x - loc) / x.shape[0]
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
        noise_var = eigvals[z_dim:].mean()
        weight = eigvecs[:, :z_dim] * (eigvals[:z_dim] - noise_var).clamp(min=0).sqrt()
        return {"loc": loc, "weight": weight, "noise_var": noise_var, "cov": weight @ weight.T + noise_var * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)}


@register_model(
    kind="latent",
    reference="Tipping & Bishop, Probabilistic Principal Component Analysis, JRSS B 61(3), 1999",
    default_data="moons",
    story="z ~ N(0, I); x | z ~ N(W z + mu, sigma^2 I) (PPCA) or N(W z + mu, diag psi) (factor analysis); "
    "exact log p(x) = N(x; mu, W W^T + Psi); guide: affine encoder with shared full covariance.",
)
def ppca(x_dim: int = 2, z_dim: int = 1, noise: str = "isotropic") -> PPCA:
    """Probabilistic PCA (``noise="isotropic"``) or factor analysis (``noise="diagonal"``)."""
    return PPCA(x_dim, z_dim, noise)
