r"""Programs shaped like Pyro's own examples, written the way its tutorials write them, each with its reference.

- ``normal_2d``: :math:`z_n \sim \mathcal{N}(0, I_2)`, :math:`x_n \mid z_n \sim \mathcal{N}(z_n, s^2 I_2)`; the
  evidence is :math:`\mathcal{N}(x_n; 0, (1 + s^2) I_2)`, the posterior mode :math:`x_n / (1 + s^2)`.
- ``state_space``: the deep Markov model's loop in a linear-Gaussian form, :math:`z_t = a z_{t-1} + \epsilon_t`,
  :math:`x_t = z_t + \eta_t`, written with ``pyro.markov``, ``pyro.module`` networks and a ``poutine.mask`` per
  step for sequences of different lengths; :func:`kalman_log_evidence` is the Kalman filter's evidence of each
  sequence's observed prefix.
- ``hmm``: a hidden Markov model whose states are enumerated (``infer={"enumerate": "parallel"}``) inside
  ``pyro.markov``; :func:`forward_log_evidence` is the forward algorithm.
- ``gmm``: Pyro's GMM tutorial (``config_enumerate``, ``locs[assignment]``, global weights, locs and scale);
  :func:`gmm_prior_reference` averages its enumerated likelihood over many prior draws in plain torch.
- ``indexed``: global component means (each with its own prior mean, so that the labels do not switch) indexed by
  an enumerated label, ``locs[c]``, whose evidence is a sum over every labelling of Gaussian marginals
  (:func:`indexed_log_evidence`, brute-force enumeration).
- ``schools``: eight schools (a constant-size plate); :func:`schools_log_evidence` integrates its two global
  latents by quadrature.

References: Pyro's examples (dmm.py, hmm.py, lda.py, eight_schools) and GMM tutorial; Krishnan, Shalit & Sontag,
Structured Inference Networks for Nonlinear State Space Models, 2017, arXiv:1609.09869.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from torch import nn

DTYPE = torch.float64

# ---------------------------------------------------------------------------------------------------------------
# 2-d Normal: z ~ N(0, I), x | z ~ N(z, s^2 I)
# ---------------------------------------------------------------------------------------------------------------

NOISE = 0.1


def normal_2d(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, NOISE).to_event(1), obs=x)


def normal_2d_evidence(x: torch.Tensor) -> torch.Tensor:
    return dist.Normal(0.0, math.sqrt(1 + NOISE**2)).log_prob(x).sum(-1)


def normal_2d_mode(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + NOISE**2)


def normal_2d_data(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=DTYPE) * math.sqrt(1 + NOISE**2)


# ---------------------------------------------------------------------------------------------------------------
# Linear-Gaussian state-space model in the deep Markov model's idiom
# ---------------------------------------------------------------------------------------------------------------

STEPS, DECAY, START, DRIFT, OBS = 5, 0.8, 1.0, 0.6, 0.5


class Transition(nn.Module):
    """z_{t-1} -> the mean of z_t (the DMM's gated transition, here the linear map a z)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1, bias=False).to(DTYPE)
        with torch.no_grad():
            self.linear.weight.fill_(DECAY)

    def forward(self, z):
        return self.linear(z.unsqueeze(-1)).squeeze(-1)


class Combiner(nn.Module):
    """x_t -> (loc, scale) of q(z_t | x): the DMM's combiner, here linear with one learned scale."""

    def __init__(self, gain: float = 0.7, scale: float = 0.5) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(gain, dtype=DTYPE))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale), dtype=DTYPE))

    def forward(self, x_t):
        return self.gain * x_t, self.log_scale.exp().expand_as(x_t)


class StateSpace:
    """Model and guide as methods of a plain class, networks registered with ``pyro.module``; ``lengths`` (a
    per-sequence condition) masks the steps past each sequence's end, as the DMM masks its minibatches."""

    def __init__(self) -> None:
        self.transition = Transition()
        self.combiner = Combiner()

    def model(self, x, lengths):
        pyro.module("transition", self.transition)
        with pyro.plate("sequences", x.shape[0]):
            z = x.new_zeros(x.shape[0])
            for t in pyro.markov(range(x.shape[1])):
                with poutine.mask(mask=t < lengths):
                    scale = START if t == 0 else DRIFT
                    z = pyro.sample(f"z_{t}", dist.Normal(self.transition(z), scale))
                    pyro.sample(f"x_{t}", dist.Normal(z, OBS), obs=x[:, t])

    def guide(self, x, lengths):
        pyro.module("combiner", self.combiner)
        with pyro.plate("sequences", x.shape[0]):
            for t in pyro.markov(range(x.shape[1])):
                with poutine.mask(mask=t < lengths):
                    loc, scale = self.combiner(x[:, t])
                    pyro.sample(f"z_{t}", dist.Normal(loc, scale))


def state_space_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = START * torch.randn(n, generator=g, dtype=DTYPE)
    xs = []
    for t in range(STEPS):
        if t:
            z = DECAY * z + DRIFT * torch.randn(n, generator=g, dtype=DTYPE)
        xs.append(z + OBS * torch.randn(n, generator=g, dtype=DTYPE))
    lengths = torch.randint(2, STEPS + 1, (n,), generator=g)
    lengths[0] = STEPS
    return torch.stack(xs, 1), lengths


def kalman_log_evidence(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """log p(x_{0:L-1}) of each sequence by the Kalman filter, L its length."""
    out = []
    for row, length in zip(x, lengths.tolist()):
        mean, var, total = 0.0, START**2, 0.0
        for t in range(length):
            if t:
                mean, var = DECAY * mean, DECAY**2 * var + DRIFT**2
            total += dist.Normal(mean, math.sqrt(var + OBS**2)).log_prob(row[t]).item()
            gain = var / (var + OBS**2)
            mean, var = mean + gain * (row[t].item() - mean), (1 - gain) * var
        out.append(total)
    return torch.tensor(out, dtype=DTYPE)


# ---------------------------------------------------------------------------------------------------------------
# Hidden Markov model with enumerated states
# ---------------------------------------------------------------------------------------------------------------

INIT = torch.tensor([0.5, 0.3, 0.2], dtype=DTYPE)
TRANSITIONS = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]], dtype=DTYPE)
EMISSIONS = torch.tensor([-2.0, 0.0, 2.0], dtype=DTYPE)


def hmm(x):
    with pyro.plate("sequences", x.shape[0]):
        state = None
        for t in pyro.markov(range(x.shape[1])):
            probs = INIT if state is None else TRANSITIONS[state]
            state = pyro.sample(f"state_{t}", dist.Categorical(probs), infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(EMISSIONS[state], 1.0), obs=x[:, t])


def forward_log_evidence(x: torch.Tensor) -> torch.Tensor:
    alpha = INIT.log() + dist.Normal(EMISSIONS, 1.0).log_prob(x[:, :1])
    for t in range(1, x.shape[1]):
        alpha = torch.logsumexp(alpha[:, :, None] + TRANSITIONS.log(), 1) + dist.Normal(EMISSIONS, 1.0).log_prob(
            x[:, t, None])
    return torch.logsumexp(alpha, -1)


# ---------------------------------------------------------------------------------------------------------------
# Pyro's GMM tutorial, and an indexing model with a closed form
# ---------------------------------------------------------------------------------------------------------------

COMPONENTS = 2
GMM_DATA = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0], dtype=DTYPE)


@config_enumerate
def gmm(data):
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(COMPONENTS, dtype=DTYPE)))
    scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=DTYPE), 2.0))
    with pyro.plate("components", COMPONENTS):
        locs = pyro.sample("locs", dist.Normal(torch.tensor(0.0, dtype=DTYPE), 10.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def gmm_prior_reference(data: torch.Tensor, draws: int = 2_000_000, seed: int = 0) -> tuple[float, float]:
    """``(log p(data), its standard error)`` from ``draws`` prior draws of the globals, the assignments summed."""
    g = torch.Generator().manual_seed(seed)
    chunks = []
    for _ in range(draws // 200_000):
        m = 200_000
        gamma = torch._standard_gamma(torch.full((m, COMPONENTS), 0.5, dtype=DTYPE), generator=g)
        weights = gamma / gamma.sum(-1, keepdim=True)
        scale = (2.0 * torch.randn(m, generator=g, dtype=DTYPE)).exp()
        locs = 10.0 * torch.randn(m, COMPONENTS, generator=g, dtype=DTYPE)
        per_point = dist.Normal(locs[:, None, :], scale[:, None, None]).log_prob(data[None, :, None])
        chunks.append(torch.logsumexp(weights.log()[:, None, :] + per_point, -1).sum(-1))
    log_lik = torch.cat(chunks)
    top = log_lik.max()
    w = (log_lik - top).exp()
    mean = w.mean()
    return (top + mean.log()).item(), (w.std() / math.sqrt(w.numel()) / mean).item()


PI = torch.tensor([0.3, 0.7], dtype=DTYPE)
LOC_MEANS, LOC_PRIOR, INDEXED_NOISE = torch.tensor([-2.0, 2.0], dtype=DTYPE), 1.0, 0.7
INDEXED_DATA = torch.tensor([-2.1, -1.6, 1.8, 2.4, 2.0], dtype=DTYPE)


def indexed(x):
    with pyro.plate("components", COMPONENTS):
        locs = pyro.sample("locs", dist.Normal(LOC_MEANS, LOC_PRIOR))
    with pyro.plate("data", len(x)):
        label = pyro.sample("label", dist.Categorical(PI), infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Normal(locs[label], INDEXED_NOISE), obs=x)


def indexed_log_evidence(x: torch.Tensor) -> float:
    """Every labelling c of the rows: log p(c) + log N(x; M m, s^2 I + tau^2 M M^T), M the one-hot labels, m the
    components' prior means."""
    terms = []
    for labels in itertools.product(range(COMPONENTS), repeat=x.shape[0]):
        onehot = torch.nn.functional.one_hot(torch.tensor(labels), COMPONENTS).to(DTYPE)
        cov = INDEXED_NOISE**2 * torch.eye(x.shape[0], dtype=DTYPE) + LOC_PRIOR**2 * onehot @ onehot.T
        terms.append(PI.log()[list(labels)].sum() + dist.MultivariateNormal(onehot @ LOC_MEANS, cov).log_prob(x))
    return torch.logsumexp(torch.stack(terms), 0).item()


# ---------------------------------------------------------------------------------------------------------------
# Eight schools: a constant-size plate
# ---------------------------------------------------------------------------------------------------------------

SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], dtype=DTYPE)
SCHOOLS_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=DTYPE)


def schools(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=DTYPE), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(5.0, dtype=DTYPE)))
    with pyro.plate("J", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, SCHOOLS_SIGMA), obs=y)


def schools_log_evidence(points: int = 4000) -> float:
    """log p(y) with theta integrated out in closed form and (mu, tau) by the trapezoidal rule (tau = e^s)."""
    mu = torch.linspace(-30.0, 30.0, points, dtype=DTYPE)[:, None]
    s = torch.linspace(-12.0, 6.0, points, dtype=DTYPE)[None, :]
    tau = s.exp()
    log_f = dist.Normal(0.0, 5.0).log_prob(mu) + dist.HalfCauchy(5.0).log_prob(tau) + s
    for y, sigma in zip(SCHOOLS_Y, SCHOOLS_SIGMA):
        log_f = log_f + dist.Normal(mu, (sigma**2 + tau**2).sqrt()).log_prob(y)
    top = log_f.max()
    area = torch.trapezoid(torch.trapezoid((log_f - top).exp(), s[0], dim=1), mu[:, 0])
    return (top + area.log()).item()


# ---------------------------------------------------------------------------------------------------------------
# A Normal with unknown mean and scale: two global latents, one of them constrained
# ---------------------------------------------------------------------------------------------------------------

MEAN_DATA = torch.tensor([0.8, 1.9, 1.2, 0.3, 1.5, 2.2, 0.9, 1.1, 1.7, 0.6], dtype=DTYPE)


def mean_and_scale(x):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=DTYPE), 2.0))
    sigma = pyro.sample("sigma", dist.LogNormal(torch.tensor(0.0, dtype=DTYPE), 0.5))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mu, sigma), obs=x)


def mean_and_scale_log_evidence(x: torch.Tensor, points: int = 3000) -> float:
    """log p(x) by the trapezoidal rule over (mu, log sigma)."""
    mu = torch.linspace(-4.0, 6.0, points, dtype=DTYPE)[:, None]
    s = torch.linspace(-4.0, 3.0, points, dtype=DTYPE)[None, :]
    log_f = dist.Normal(0.0, 2.0).log_prob(mu) + dist.Normal(0.0, 0.5).log_prob(s)  # LogNormal in log sigma
    log_f = log_f + dist.Normal(mu[..., None], s.exp()[..., None]).log_prob(x).sum(-1)
    top = log_f.max()
    area = torch.trapezoid(torch.trapezoid((log_f - top).exp(), s[0], dim=1), mu[:, 0])
    return (top + area.log()).item()
