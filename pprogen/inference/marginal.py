r"""Per-datum importance-sampled evidence, vectorized over particles and data points.

.. math::

    \log \hat p(x_n) = \log \frac{1}{K} \sum_{k=1}^{K} \frac{p(x_n, z_{nk})}{q(z_{nk} \mid x_n)},
    \qquad z_{nk} \sim q(z \mid x_n),

with the guide as proposal (the prior when ``guide=None``). Particles are drawn in chunks inside a
``pyro.plate`` and combined with a streaming log-sum-exp, so memory stays bounded for large K. The
standard error of each estimate follows from the effective sample size of its weights,
:math:`\mathrm{se} = \sqrt{1/\mathrm{ESS} - 1/K}` (delta method).

Reference: Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, 2016, arXiv:1509.00519.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pyro
import torch

from pprogen.inference.elbo import _SiteCollector, guess_max_plate_nesting


@dataclass
class Evidence:
    """Per-datum ``log_prob``, ``stderr`` and ``ess``; ``summary()`` gives the data-set figures."""

    log_prob: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    num_samples: int
    dim: int | None = None

    def summary(self) -> dict[str, float]:
        n = self.log_prob.shape[0]
        nll = -self.log_prob.double()
        out = {
            "nll": nll.mean().item(),
            "nll_stderr": (nll.std().item() / math.sqrt(n)) if n > 1 else float("nan"),
            "mean_is_stderr": self.stderr.double().mean().item(),
            "mean_ess": self.ess.double().mean().item(),
            "num_data": n,
            "num_samples": self.num_samples,
        }
        if self.dim:
            out["bits_per_dim"] = out["nll"] / (self.dim * math.log(2))
        return out


def _per_datum(site: dict, particle_dim: int, data_dim: int, num_dims: int) -> torch.Tensor:
    log_prob = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_prob = log_prob * site["mask"]
    if log_prob.dim() < num_dims:
        log_prob = log_prob.reshape((1,) * (num_dims - log_prob.dim()) + log_prob.shape)
    keep = {num_dims + particle_dim, num_dims + data_dim}
    other = [d for d in range(log_prob.dim()) if d not in keep]
    if other:
        log_prob = log_prob.sum(other)
    return log_prob


def _log_weights(model, guide, x, num_particles: int, nesting: int, plate_name: str) -> torch.Tensor:
    particle_dim = -1 - nesting
    with pyro.plate("num_particles_vectorized", num_particles, dim=particle_dim):
        guide_sites = []
        replay = None
        if guide is not None:
            with _SiteCollector() as guide_run:
                guide(x)
            guide_sites = guide_run.sites
            replay = {s["name"]: s["value"] for s in guide_sites}
        with _SiteCollector(replay) as model_run:
            model(x)
    log_w = torch.zeros(num_particles, x.shape[0], device=x.device)
    terms = [(s, 1.0) for s in model_run.sites if guide is not None or s["is_observed"]]
    terms += [(s, -1.0) for s in guide_sites if not s["infer"].get("is_auxiliary")]
    for site, sign in terms:
        frames = [f for f in site["cond_indep_stack"] if f.name == plate_name]
        if not frames:
            raise ValueError(
                f"site {site['name']!r} sits outside the {plate_name!r} plate, so the evidence does not "
                f"split per data point; put every per-datum site inside pyro.plate({plate_name!r}, ...)"
            )
        term = _per_datum(site, particle_dim, frames[0].dim, nesting + 1)
        log_w = log_w + sign * term.reshape(term.shape[0], -1)
    return log_w


@torch.no_grad()
def log_marginal(
    model: Callable,
    guide: Callable | None,
    data: torch.Tensor,
    num_samples: int = 1000,
    batch_size: int = 100,
    max_elements: int = 2_000_000,
    plate_name: str = "data",
    dim: int | None = None,
) -> Evidence:
    """Importance-sampled log p(x) for each row of ``data``; see the module docstring.

    ``max_elements`` bounds particles x data points per chunk; ``dim`` (the data dimension) turns on
    bits/dim in the summary.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if data.shape[0] == 0:
        raise ValueError("data is empty: nothing to evaluate")
    probe = data[:1]
    nesting = guess_max_plate_nesting(model, guide if guide is not None else (lambda *a, **k: None), (probe,), {})
    nesting = max(nesting, 1)
    results = []
    for start in range(0, data.shape[0], batch_size):
        x = data[start : start + batch_size]
        chunk = max(1, min(num_samples, max_elements // x.shape[0]))
        running_max = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=torch.float64)
        s1 = torch.zeros_like(running_max)
        s2 = torch.zeros_like(running_max)
        done = 0
        while done < num_samples:
            k = min(chunk, num_samples - done)
            log_w = _log_weights(model, guide, x, k, nesting, plate_name).double()
            new_max = torch.maximum(running_max, log_w.max(0).values)
            shift = torch.where(torch.isfinite(running_max), running_max - new_max, torch.zeros_like(new_max))
            s1 = s1 * shift.exp() + (log_w - new_max).exp().sum(0)
            s2 = s2 * (2 * shift).exp() + (2 * (log_w - new_max)).exp().sum(0)
            running_max = new_max
            done += k
        ess = s1**2 / s2
        log_prob = running_max + s1.log() - math.log(num_samples)
        stderr = (1.0 / ess - 1.0 / num_samples).clamp(min=0).sqrt()
        results.append((log_prob, stderr, ess))
    log_prob, stderr, ess = (torch.cat(t).float().cpu() for t in zip(*results))
    return Evidence(log_prob, stderr, ess, num_samples, dim)
