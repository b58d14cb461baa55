r"""Client programs: Pyro programs written the way Pyro's tutorials write them, not the way pprogen's zoo does.

pprogen promises that ``fit``, ``make_elbo``, ``make_guide`` and ``log_marginal`` serve any Pyro program. These
programs are what a Pyro user brings: a plain class whose ``model``/``guide`` methods register their networks
with ``pyro.module``; plain functions reaching parameters through ``pyro.module`` or ``pyro.param`` (per-datum
tables indexed by the plate); PyroModules; Pyro's autoguides and ``EasyGuide``; global latents outside the data
plate; subsampled plates; a per-datum plate not named ``"data"``.

The Gaussian programs come with their closed forms, so the tests compare values, not shapes:

- linear-Gaussian: :math:`z_n \sim \mathcal{N}(0, I)`, :math:`x_n \mid z_n \sim \mathcal{N}(W z_n + b, s^2 I)`,
  with posterior :math:`\mathcal{N}(\Sigma W^\top (x_n - b) / s^2, \Sigma)`, :math:`\Sigma = (I + W^\top W / s^2)^{-1}`,
  and evidence :math:`\mathcal{N}(x_n; b, W W^\top + s^2 I)`;
- Normal-Normal with a global mean: :math:`\theta \sim \mathcal{N}(0, \tau^2)`,
  :math:`x_n \mid \theta \sim \mathcal{N}(\theta, \sigma^2)`, so
  :math:`x_{1:N} \sim \mathcal{N}(0, \sigma^2 I + \tau^2 \mathbf{1}\mathbf{1}^\top)`;
- hierarchical Normal: the same with a local latent between, :math:`z_n \mid \theta \sim \mathcal{N}(\theta, a^2)`,
  :math:`x_n \mid z_n \sim \mathcal{N}(z_n, s^2)`;
- scalar Gaussian: :math:`z_n \sim \mathcal{N}(0, 1)`, :math:`x_n \mid z_n \sim \mathcal{N}(z_n, s^2)`, whose
  Rényi bound :math:`\frac{1}{1-\alpha}\log\int q(z)^\alpha p(x, z)^{1-\alpha} dz` is a Gaussian integral for
  any Gaussian q.

The Poisson factorization (global weights, per-datum factors) has no closed form; it is checked against
Pyro's own estimates of the same program (``helpers.pyro_log_weights``).

References: Kingma & Welling, Auto-Encoding Variational Bayes, 2014, arXiv:1312.6114 (the VAE);
Gopalan, Hofman & Blei, Scalable Recommendation with Hierarchical Poisson Factorization, 2015,
arXiv:1311.1704; Li & Turner, Rényi Divergence Variational Inference, 2016, arXiv:1602.02311.
"""

from __future__ import annotations

import math
from typing import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.contrib.easyguide import EasyGuide
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import constraints

DTYPE = torch.float64

# ---------------------------------------------------------------------------------------------------------------
# Linear-Gaussian model: z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I_3)
# ---------------------------------------------------------------------------------------------------------------

X_DIM, Z_DIM = 3, 2
# Orthogonal columns of equal norm make the exact posterior covariance a multiple of I, so each guide family
# below (diagonal Normal with one scale, AutoNormal, EasyGuide) holds the exact posterior.
_COLUMNS = [torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2), torch.tensor([1.0, -1.0, 1.0]) / math.sqrt(3)]
WEIGHT = 2.0 * torch.stack(_COLUMNS, 1).to(DTYPE)
BIAS = torch.tensor([0.5, -1.0, 0.25], dtype=DTYPE)
OBS_SCALE = 0.5


def posterior_cov() -> torch.Tensor:
    return torch.linalg.inv(torch.eye(Z_DIM, dtype=DTYPE) + WEIGHT.T @ WEIGHT / OBS_SCALE**2)


def posterior_encoder() -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(A, c, std)`` with the exact posterior ``N(A x + c, std^2 I)``."""
    cov = posterior_cov()
    assert torch.allclose(cov, cov[0, 0] * torch.eye(Z_DIM, dtype=DTYPE))
    weight = cov @ WEIGHT.T / OBS_SCALE**2
    return weight, -weight @ BIAS, cov[0, 0].sqrt().item()


def posterior_loc(x: torch.Tensor) -> torch.Tensor:
    weight, bias, _ = posterior_encoder()
    return x @ weight.T + bias


def posterior_std() -> float:
    return posterior_encoder()[2]


def log_evidence(x: torch.Tensor) -> torch.Tensor:
    """Exact log p(x_n) per row."""
    cov = WEIGHT @ WEIGHT.T + OBS_SCALE**2 * torch.eye(X_DIM, dtype=DTYPE)
    return dist.MultivariateNormal(BIAS, covariance_matrix=cov).log_prob(x)


def sample_linear_gaussian(num_data: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num_data, Z_DIM, generator=g, dtype=DTYPE)
    return z @ WEIGHT.T + BIAS + OBS_SCALE * torch.randn(num_data, X_DIM, generator=g, dtype=DTYPE)


def linear_gaussian_model(plate_name: str = "data", subsample_size: int | None = None) -> Callable:
    """The model as a plain function; with ``subsample_size`` it takes the full data set and subsamples it."""

    def model(x):
        weight, bias = WEIGHT.to(x), BIAS.to(x)
        with pyro.plate(plate_name, x.shape[0], subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            obs = x if subsample_size is None else x[idx]
            pyro.sample("x", dist.Normal(z @ weight.T + bias, OBS_SCALE).to_event(1), obs=obs)

    return model


class LinearEncoder(nn.Module):
    """x -> (loc, scale) of a diagonal Normal with one learned scale per latent dimension."""

    def __init__(self, x_dim: int = X_DIM, z_dim: int = Z_DIM) -> None:
        super().__init__()
        self.loc = nn.Linear(x_dim, z_dim)
        self.log_scale = nn.Parameter(torch.zeros(z_dim))

    def forward(self, x):
        loc = self.loc(x)
        return loc, self.log_scale.exp().expand_as(loc)


def exact_encoder(offset: float = 0.0, log_scale_offset: float = 0.0) -> LinearEncoder:
    """A :class:`LinearEncoder` at the exact posterior (or shifted from it by the offsets)."""
    weight, bias, std = posterior_encoder()
    encoder = LinearEncoder().to(DTYPE)
    with torch.no_grad():
        encoder.loc.weight.copy_(weight + offset * torch.linspace(-1, 1, weight.numel(), dtype=DTYPE).view_as(weight))
        encoder.loc.bias.copy_(bias + offset)
        encoder.log_scale.fill_(math.log(std) + log_scale_offset)
    return encoder


class PosteriorGuide(PyroModule):
    """The PyroModule idiom: networks as attributes, the guide as ``forward``."""

    def __init__(self, encoder: LinearEncoder, plate_name: str = "data") -> None:
        super().__init__()
        self.encoder = encoder
        self.plate_name = plate_name

    def forward(self, x):
        with pyro.plate(self.plate_name, x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def function_guide(encoder: nn.Module, plate_name: str = "data") -> Callable:
    """The tutorial idiom: a plain function that registers its network with ``pyro.module``, then calls it."""

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate(plate_name, x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return guide


def table_guide(init_loc: torch.Tensor, init_scale: torch.Tensor, plate_name: str = "data",
                subsample_size: int | None = None) -> Callable:
    """Non-amortized local latents: a per-datum ``pyro.param`` table indexed by the plate's indices."""

    def guide(x):
        loc = pyro.param("z_loc", lambda: init_loc.clone())
        scale = pyro.param("z_scale", lambda: init_scale.clone(), constraint=constraints.positive)
        with pyro.plate(plate_name, x.shape[0], subsample_size=subsample_size) as idx:
            pyro.sample("z", dist.Normal(loc[idx], scale).to_event(1))

    return guide


class LocalEasyGuide(EasyGuide):
    """An EasyGuide over the local latents: one group, a per-datum table auto-subsampled by ``pyro.param``."""

    def guide(self, x):
        group = self.group(match="z")
        with self.plate("data", x.shape[0]):
            loc = pyro.param("easy_loc", lambda: x.new_zeros(x.shape[0], Z_DIM), event_dim=1)
            scale = pyro.param("easy_scale", lambda: x.new_ones(x.shape[0], Z_DIM), constraint=constraints.positive,
                               event_dim=1)
            group.sample("z_group", dist.Normal(loc, scale).to_event(1))


class SubsampledLinearGaussian:
    """Model and guide both subsample ``pyro.plate("data", N, subsample_size=B)``; the guide's per-datum tables
    are indexed by the plate. Each call records which rows it saw, so a test can check that model and guide agree.
    """

    def __init__(self, init_loc: torch.Tensor, init_scale: torch.Tensor, subsample_size: int) -> None:
        self.init_loc = init_loc
        self.init_scale = init_scale
        self.subsample_size = subsample_size
        self.seen: list[tuple[str, torch.Tensor]] = []

    def model(self, x):
        with pyro.plate("data", x.shape[0], subsample_size=self.subsample_size) as idx:
            self.seen.append(("model", idx.clone()))
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ WEIGHT.T + BIAS, OBS_SCALE).to_event(1), obs=x[idx])

    def guide(self, x):
        loc = pyro.param("z_loc", lambda: self.init_loc.clone())
        scale = pyro.param("z_scale", lambda: self.init_scale.clone(), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0], subsample_size=self.subsample_size) as idx:
            self.seen.append(("guide", idx.clone()))
            pyro.sample("z", dist.Normal(loc[idx], scale).to_event(1))

    def last_indices(self) -> dict[str, torch.Tensor]:
        """The rows the last model call and the last guide call saw."""
        return {role: idx for role, idx in self.seen}


def subsampled_linear_gaussian(num_data: int, subsample_size: int, exact: bool = False):
    """``(program, x)``: a :class:`SubsampledLinearGaussian` whose tables start at the exact posterior, or shifted
    and widened from it."""
    x = sample_linear_gaussian(num_data)
    loc = posterior_loc(x)
    std = torch.full((Z_DIM,), posterior_std(), dtype=DTYPE)
    if not exact:
        loc, std = loc + 0.5, 1.5 * std
    return SubsampledLinearGaussian(loc, std, subsample_size), x


# ---------------------------------------------------------------------------------------------------------------
# VAE as a plain class with model/guide methods (the Pyro VAE tutorial's shape)
# ---------------------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, x_dim: int, hidden_dim: int, z_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(x_dim, hidden_dim)
        self.loc = nn.Linear(hidden_dim, z_dim)
        self.log_scale = nn.Linear(hidden_dim, z_dim)

    def forward(self, x):
        h = nn.functional.softplus(self.hidden(x))
        return self.loc(h), self.log_scale(h).exp()


class Decoder(nn.Module):
    def __init__(self, z_dim: int, hidden_dim: int, x_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(z_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, x_dim)

    def forward(self, z):
        return self.out(nn.functional.softplus(self.hidden(z)))


class VAE:
    """A plain class (no PyroModule): ``model`` and ``guide`` register their networks with ``pyro.module``.

    ``obs_scale=None`` gives Bernoulli pixels with the decoder's output as logits; a number gives a Normal
    likelihood of that scale around the decoder's output (with a linear decoder: the linear-Gaussian model).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, z_dim: int, obs_scale: float | None = None) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.z_dim = z_dim
        self.obs_scale = obs_scale

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            out = self.decoder(z)
            if self.obs_scale is None:
                pyro.sample("x", dist.Bernoulli(logits=out).to_event(1), obs=x)
            else:
                pyro.sample("x", dist.Normal(out, self.obs_scale).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def bernoulli_vae(x_dim: int = 6, hidden_dim: int = 8, z_dim: int = 2, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(Encoder(x_dim, hidden_dim, z_dim), Decoder(z_dim, hidden_dim, x_dim), z_dim)


def linear_gaussian_vae(encoder: LinearEncoder) -> VAE:
    """The linear-Gaussian model as a :class:`VAE` with a linear decoder fixed at (W, b)."""
    decoder = nn.Linear(Z_DIM, X_DIM).to(DTYPE)
    with torch.no_grad():
        decoder.weight.copy_(WEIGHT)
        decoder.bias.copy_(BIAS)
    return VAE(encoder, decoder, Z_DIM, obs_scale=OBS_SCALE)


def binary_data(num_data: int, x_dim: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(num_data, x_dim, generator=g) < torch.linspace(0.2, 0.8, x_dim)).float()


# ---------------------------------------------------------------------------------------------------------------
# Normal-Normal with a global mean, and its hierarchical version with local latents
# ---------------------------------------------------------------------------------------------------------------

PRIOR_SCALE = 2.0   # tau
NOISE_SCALE = 1.0   # sigma (Normal-Normal)
LOCAL_SCALE = 0.8   # a (hierarchical: z_n | theta)
LEAF_SCALE = 0.6    # s (hierarchical: x_n | z_n)


def normal_normal_model(x):
    theta = pyro.sample("theta", dist.Normal(x.new_zeros(()), PRIOR_SCALE))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(theta, NOISE_SCALE), obs=x)


def hierarchical_model(x):
    theta = pyro.sample("theta", dist.Normal(x.new_zeros(()), PRIOR_SCALE))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(theta, LOCAL_SCALE))
        pyro.sample("x", dist.Normal(z, LEAF_SCALE), obs=x)


def global_posterior(x: torch.Tensor, noise_scale: float) -> tuple[float, float]:
    """Posterior ``(loc, scale)`` of theta given x_n ~ N(theta, noise_scale^2)."""
    precision = 1 / PRIOR_SCALE**2 + x.shape[0] / noise_scale**2
    return (x.sum() / noise_scale**2 / precision).item(), precision**-0.5


def global_log_evidence(x: torch.Tensor, noise_scale: float) -> float:
    """log p(x_1..N) with x ~ N(0, noise_scale^2 I + tau^2 11^T)."""
    n = x.shape[0]
    cov = noise_scale**2 * torch.eye(n, dtype=x.dtype) + PRIOR_SCALE**2 * torch.ones(n, n, dtype=x.dtype)
    return dist.MultivariateNormal(x.new_zeros(n), covariance_matrix=cov).log_prob(x).item()


def normal_normal_guide(loc: float, scale: float) -> Callable:
    """The guide a user writes with ``pyro.param``, initialized here at the exact posterior."""

    def guide(x):
        theta_loc = pyro.param("theta_loc", lambda: torch.tensor(loc, dtype=x.dtype))
        theta_scale = pyro.param("theta_scale", lambda: torch.tensor(scale, dtype=x.dtype),
                                 constraint=constraints.positive)
        pyro.sample("theta", dist.Normal(theta_loc, theta_scale))

    return guide


def hierarchical_guide(x_all: torch.Tensor) -> Callable:
    """Exact posterior q(theta) q(z_n | theta, x_n): every importance weight equals p(x_1..N)."""
    loc, scale = global_posterior(x_all, math.hypot(LOCAL_SCALE, LEAF_SCALE))
    precision = 1 / LOCAL_SCALE**2 + 1 / LEAF_SCALE**2

    def guide(x):
        theta_loc = pyro.param("theta_loc", lambda: torch.tensor(loc, dtype=x.dtype))
        theta_scale = pyro.param("theta_scale", lambda: torch.tensor(scale, dtype=x.dtype),
                                 constraint=constraints.positive)
        theta = pyro.sample("theta", dist.Normal(theta_loc, theta_scale))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal((theta / LOCAL_SCALE**2 + x / LEAF_SCALE**2) / precision, precision**-0.5))

    return guide


def sample_normal_normal(num_data: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    theta = PRIOR_SCALE * torch.randn((), generator=g, dtype=DTYPE)
    return theta + NOISE_SCALE * torch.randn(num_data, generator=g, dtype=DTYPE)


# ---------------------------------------------------------------------------------------------------------------
# Scalar Gaussian with a per-datum Gaussian guide: the Rényi bound in closed form
# ---------------------------------------------------------------------------------------------------------------

SCALAR_OBS_SCALE = 0.8


def scalar_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(z, SCALAR_OBS_SCALE), obs=x)


def scalar_guide(loc: torch.Tensor, scale: torch.Tensor) -> Callable:
    def guide(x):
        z_loc = pyro.param("z_loc", lambda: loc.clone())
        z_scale = pyro.param("z_scale", lambda: scale.clone(), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]) as idx:
            pyro.sample("z", dist.Normal(z_loc[idx], z_scale[idx]))

    return guide


def scalar_renyi_bound(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, alpha: float) -> float:
    r"""Sum over n of :math:`\frac{1}{1-\alpha}\log\int q_n(z)^\alpha\,p(x_n, z)^{1-\alpha}\,dz`.

    The integrand is :math:`\exp(-\tfrac12 a z^2 + b z + c)`, whose integral is
    :math:`\sqrt{2\pi/a}\,\exp(b^2 / 2a + c)`.
    """
    s2, v = SCALAR_OBS_SCALE**2, scale**2
    a = alpha / v + (1 - alpha) * (1 + 1 / s2)
    b = alpha * loc / v + (1 - alpha) * x / s2
    c = alpha * (-0.5 * torch.log(2 * math.pi * v) - loc**2 / (2 * v)) + (1 - alpha) * (
        -0.5 * math.log(2 * math.pi) - 0.5 * math.log(2 * math.pi * s2) - x**2 / (2 * s2)
    )
    log_integral = 0.5 * torch.log(2 * math.pi / a) + b**2 / (2 * a) + c
    return (log_integral / (1 - alpha)).sum().item()


def scalar_log_evidence(x: torch.Tensor) -> torch.Tensor:
    return dist.Normal(x.new_zeros(()), math.sqrt(1 + SCALAR_OBS_SCALE**2)).log_prob(x)


def scalar_posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    precision = 1 + 1 / SCALAR_OBS_SCALE**2
    return x / SCALAR_OBS_SCALE**2 / precision, torch.full_like(x, precision**-0.5)


# ---------------------------------------------------------------------------------------------------------------
# Poisson factorization: global weights, per-datum factors, per-datum guide tables
# ---------------------------------------------------------------------------------------------------------------

NUM_FACTORS, NUM_FEATURES = 2, 6


def poisson_factorization(subsample_size: int | None = None) -> tuple[Callable, Callable]:
    r"""``(model, guide)``: :math:`W \sim \mathrm{Gamma}(1, 1)^{K \times D}` outside the plate,
    :math:`z_n \sim \mathrm{Gamma}(2, 1)^K` and :math:`x_n \sim \mathrm{Poisson}(z_n W)` inside it; the guide is
    log-normal with a ``(K, D)`` table for W and ``(N, K)`` tables for the factors, indexed by the plate.
    Both take the full data set; with ``subsample_size`` both subsample the plate.
    """

    def model(x):
        weights = pyro.sample("W", dist.Gamma(x.new_ones(NUM_FACTORS, NUM_FEATURES), 1.0).to_event(2))
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Gamma(x.new_full((NUM_FACTORS,), 2.0), 1.0).to_event(1))
            # the factor sum broadcasts over leading (particle) dims of z (..., B, K) and W (..., 1, K, D)
            rate = (z.unsqueeze(-1) * weights).sum(-2)
            pyro.sample("x", dist.Poisson(rate).to_event(1), obs=x[idx])

    def guide(x):
        w_loc = pyro.param("W_loc", lambda: x.new_zeros(NUM_FACTORS, NUM_FEATURES))
        w_scale = pyro.param("W_scale", lambda: x.new_full((NUM_FACTORS, NUM_FEATURES), 0.3),
                             constraint=constraints.positive)
        pyro.sample("W", dist.LogNormal(w_loc, w_scale).to_event(2))
        z_loc = pyro.param("z_loc", lambda: x.new_zeros(x.shape[0], NUM_FACTORS))
        z_scale = pyro.param("z_scale", lambda: x.new_full((x.shape[0], NUM_FACTORS), 0.3),
                             constraint=constraints.positive)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            pyro.sample("z", dist.LogNormal(z_loc[idx], z_scale[idx]).to_event(1))

    return model, guide


def sample_poisson_factorization(num_data: int, seed: int = 0) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        weights = dist.Gamma(torch.ones(NUM_FACTORS, NUM_FEATURES), 1.0).sample()
        z = dist.Gamma(torch.full((num_data, NUM_FACTORS), 2.0), 1.0).sample()
        return dist.Poisson(z @ weights).sample()
