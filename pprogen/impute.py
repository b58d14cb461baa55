"""Imputation: draws of a data set's missing entries from a trained model, given its observed entries.

``impute(model, guide, x, missing)`` takes the route the model offers:

- Bayesian networks and mixtures draw exactly from p(x_mis | x_obs) (``model.impute``: ``infer_discrete``; the
  component's posterior given the observed entries, then the missing entries from that component);
- autoregressive models complete ancestrally when the observed entries come first in their order (exact), and
  otherwise importance-resample clamped ancestral completions (``model.impute``);
- latent-variable programs (VAEs, any model with a guide and one observed site ``x`` whose distribution scores
  entries independently given the latents) importance-resample the guide's draws of the latents, proposed at the
  data with its missing entries filled by the model's reconstruction, weighted by
  p(z) p(x_obs | z) / q(z | x_filled), then draw the missing entries from p(x_mis | z).

Missing entries are ``NaN`` in the data, or given as a boolean ``missing`` mask of the data's shape.
``completion_log_likelihood`` scores the true missing values under a set of completions (per entry, the
completions' frequencies of its value, smoothed; binary data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro import poutine

from pprogen.capabilities import capabilities


@dataclass
class Imputation:
    """``completions`` (N, S, *shape): the observed entries kept, the missing ones drawn; ``missing`` (N, *shape);
    ``method`` in words; ``ess`` (N,) the effective sample size of importance-resampled routes (None if exact)."""

    completions: torch.Tensor
    missing: torch.Tensor
    method: str
    ess: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "num_rows": self.completions.shape[0],
                               "num_completions": self.completions.shape[1],
                               "missing_per_row": float(self.missing.reshape(self.missing.shape[0], -1).sum(-1)
                                                        .float().mean())}
        if self.ess is not None:
            out.update(ess_mean=float(self.ess.mean()), ess_min=float(self.ess.min()))
        return out


def split_missing(x: torch.Tensor, missing: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x with missing entries set to 0, missing mask)`` from NaN entries and/or an explicit mask; one-line
    errors for a mask of the wrong shape and for data with nothing missing."""
    nan = torch.isnan(x)
    if missing is not None:
        missing = torch.as_tensor(missing)
        if tuple(missing.shape) != tuple(x.shape):
            raise ValueError(f"the missing-entry mask has shape {tuple(missing.shape)} but the data {tuple(x.shape)}; "
                             "give one flag per entry (True where missing)")
        if missing.dtype != torch.bool:
            if not bool(((missing == 0) | (missing == 1)).all()):
                raise ValueError("the missing-entry mask must hold booleans or 0/1 (1 where missing)")
            missing = missing.bool()
        missing = missing | nan
    else:
        missing = nan
    if not missing.any():
        raise ValueError("nothing is missing: mark the entries to fill in with NaN or a mask (True where missing)")
    return torch.where(missing, torch.zeros_like(x), x), missing


@torch.no_grad()
def impute(model, guide, x: torch.Tensor, missing: torch.Tensor | None = None, num_completions: int = 8,
           num_particles: int = 256, condition: dict[str, torch.Tensor] | None = None) -> Imputation:
    """Completions of the rows of ``x`` (see the module docstring for the route each model takes)."""
    if num_completions < 1 or num_particles < 1:
        raise ValueError(f"num_completions and num_particles must be at least 1, got {num_completions}, "
                         f"{num_particles}")
    x, missing = split_missing(x, missing)
    condition = condition or {}
    caps = capabilities(model)
    name = type(model).__name__.lower()
    if caps.adversarial:
        raise ValueError(f"{name} is a GAN: it has no likelihood to condition on observed entries")
    if callable(getattr(model, "impute", None)):
        kw = {"num_particles": num_particles} if "num_particles" in _params(model.impute) else {}
        completions, info = model.impute(x, missing, num_completions, **kw, **condition)
        return Imputation(completions, missing, info["method"], info.get("ess"))
    if guide is None or caps.exact_log_prob:
        raise ValueError(f"{name} offers no conditional sampling of missing entries (imputation serves Bayesian "
                         "networks, mixtures, autoregressive models and latent-variable models with a guide)")
    return _guide_resampling(model, guide, x, missing, num_completions, num_particles, condition)


def _params(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def _observed_site(trace, name: str = "x"):
    site = trace.nodes.get(name)
    if site is None or not site.get("is_observed"):
        raise ValueError(f"imputation through a guide needs the data observed at one site {name!r}; this program "
                         "has none")
    fn = site["fn"]
    while hasattr(fn, "base_dist") and not hasattr(fn, "logits") and not hasattr(fn, "loc"):
        fn = fn.base_dist
    if fn is site["fn"] and getattr(site["fn"], "event_shape", ()) != ():
        raise ValueError(f"the observed site {name!r} does not score entries one by one (its distribution is "
                         f"{type(site['fn']).__name__}); imputation through a guide needs independent entries given "
                         "the latents")
    return site, fn


def _guide_resampling(model, guide, x, missing, num_completions, num_particles, condition) -> Imputation:
    n, shape = x.shape[0], x.shape[1:]
    observed = (~missing).to(x)
    # the guide's input: missing entries filled with the model's reconstruction, two rounds from a neutral start
    filled = torch.where(missing, torch.full_like(x, 0.5), x)
    for _ in range(2):
        guide_trace = poutine.trace(guide).get_trace(filled, **condition)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(filled, **condition)
        _, fn = _observed_site(model_trace)
        filled = torch.where(missing, fn.mean.reshape(x.shape), x)
    reps = {k: v.repeat_interleave(num_particles, 0) for k, v in condition.items()}
    rows = filled.repeat_interleave(num_particles, 0)
    guide_trace = poutine.trace(guide).get_trace(rows, **reps)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(rows, **reps)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob(site_filter=lambda name, site: not site.get("is_observed"))  # x: filled values
    log_w = torch.zeros(rows.shape[0], device=x.device, dtype=x.dtype)
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site.get("is_observed") or name not in model_trace.nodes:
            continue
        log_w = log_w + model_trace.nodes[name]["log_prob"] - site["log_prob"]
    x_site, fn = _observed_site(model_trace)
    known = x.repeat_interleave(num_particles, 0)  # observed entries, zeros where missing (masked out below)
    per_entry = fn.log_prob(known.reshape(fn.batch_shape)).reshape(rows.shape)
    log_w = log_w + (per_entry * observed.repeat_interleave(num_particles, 0)).reshape(rows.shape[0], -1).sum(-1)
    w = torch.softmax(log_w.reshape(n, num_particles).double(), -1)
    pick = torch.multinomial(w.float(), num_completions, replacement=True)
    index = (torch.arange(n, device=x.device)[:, None] * num_particles + pick).reshape(-1)
    draws = fn.sample().reshape(rows.shape)[index].reshape(n, num_completions, *shape)
    completions = torch.where(missing[:, None], draws, x[:, None])
    return Imputation(completions, missing, f"importance resampling of {num_particles} guide draws of the latents "
                      "per row, then x_mis ~ p(x_mis | z)", (1 / w.pow(2).sum(-1)).float())


def completion_log_likelihood(imputation: Imputation, truth: torch.Tensor, smoothing: float = 0.5) -> torch.Tensor:
    """Per row, the log-likelihood (nats) of the true missing values of binary data under the completions: each
    missing entry scored by the smoothed share of completions that agree with it, ``(agree + a) / (S + 2a)``,
    summed over the row's missing entries (additive smoothing ``a``; an entry no completion got right costs
    ``log(a / (S + 2a))``, not minus infinity)."""
    if not bool(((truth == 0) | (truth == 1)).all()):
        raise ValueError("completion_log_likelihood scores binary data; this data is not 0/1")
    s = imputation.completions.shape[1]
    agree = (imputation.completions == truth[:, None]).double().sum(1)
    per_entry = ((agree + smoothing) / (s + 2 * smoothing)).log()
    missing = imputation.missing.double()
    return (per_entry * missing).reshape(truth.shape[0], -1).sum(-1)


def masks(x: torch.Tensor, kind: str, fraction: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Missing-entry masks for images (N, C, H, W) or rows (N, D): ``bottom`` (the last ``fraction`` of rows of
    pixels), ``right`` (the right ``fraction`` of columns) or ``random`` (each entry with probability ``fraction``)."""
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(x.shape, generator=g) < fraction).to(x.device)
    if x.dim() != 4:
        raise ValueError(f"mask {kind!r} needs images (N, C, H, W); use 'random' for vectors")
    h, w = x.shape[-2:]
    out = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    if kind == "bottom":
        out[..., h - math.ceil(h * fraction):, :] = True
    elif kind == "right":
        out[..., w - math.ceil(w * fraction):] = True
    else:
        raise ValueError(f"unknown mask {kind!r}; choose bottom, right or random")
    return out
