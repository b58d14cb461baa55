"""Imputation: draws of a data set's missing entries from a trained model, given its observed entries.

``impute(model, guide, x, missing)`` takes the route the model offers:

- Bayesian networks and mixtures draw exactly from p(x_mis | x_obs) (``model.impute``: ``infer_discrete``; the
  component's posterior given the observed entries, then the missing entries from that component);
- autoregressive models complete ancestrally when the observed entries come first in their order (exact), and
  otherwise importance-resample clamped ancestral completions (``model.impute``);
- latent-variable programs (VAEs, any model with a guide and one observed site ``x`` whose distribution scores
  entries independently given the latents) importance-resample their latents: per row, a diagonal Gaussian over
  each latent site starts at the moments of the guide's draws (at the data with its missing entries filled by the
  model's reconstruction) and is fitted by a few Adam steps to the evidence lower bound of the observed entries
  alone; ``num_particles`` draws from it are weighted by p(z) p(x_obs | z) / q(z), resampled, and the missing
  entries drawn from p(x_mis | z). Consistent as the particles grow; the effective sample size is reported.
  ``mcmc_steps`` adds Metropolis-within-Gibbs steps (independence proposals from the same Gaussian, then
  x_mis ~ p(x_mis | z); Mattei & Frellsen, NeurIPS 2018), exact in the limit of many steps.

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
from pyro.poutine.util import site_is_subsample

from pprogen.capabilities import capabilities
from pprogen.latent import guide_draws


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
           num_particles: int = 256, condition: dict[str, torch.Tensor] | None = None,
           mcmc_steps: int = 0) -> Imputation:
    """Completions of the rows of ``x`` (see the module docstring for the route each model takes)."""
    if num_completions < 1 or num_particles < 1:
        raise ValueError(f"num_completions and num_particles must be at least 1, got {num_completions}, "
                         f"{num_particles}")
    x, missing = split_missing(x, missing)
    condition = condition or {}
    caps = capabilities(model)
    name = type(model).__name__.lower()
    if caps.stated_likelihood:
        raise ValueError(f"{name} is trained adversarially, not on its stated likelihood: imputation is offered for "
                         "models trained on their likelihood")
    if caps.adversarial:
        raise ValueError(f"{name} is a GAN: it has no likelihood to condition on observed entries")
    if caps.reconstruction:
        raise ValueError(f"{name} is an autoencoder: it has no likelihood to condition on observed entries (a vae has)")
    if callable(getattr(model, "impute", None)):
        kw = {"num_particles": num_particles} if "num_particles" in _params(model.impute) else {}
        completions, info = model.impute(x, missing, num_completions, **kw, **condition)
        return Imputation(completions, missing, info["method"], info.get("ess"))
    if guide is None or caps.exact_log_prob:
        raise ValueError(f"{name} offers no conditional sampling of missing entries (imputation serves Bayesian "
                         "networks, mixtures, autoregressive models and latent-variable models with a guide)")
    return _guide_resampling(model, guide, x, missing, num_completions, num_particles, condition, mcmc_steps)


def _params(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def _observed_site(trace, rows: int, latents=()):
    """The program's one observed site (any name; ``latents``, conditioned on, are not data) and its per-entry
    distribution, checked to score ``rows`` rows entry by entry."""
    observed = [site for site in trace.nodes.values() if site["type"] == "sample" and site.get("is_observed")
                and not site_is_subsample(site) and site["name"] not in latents]
    if len(observed) != 1:
        raise ValueError(f"imputation through a guide needs the data observed at one site; this program observes "
                         f"{len(observed)} ({', '.join(s['name'] for s in observed) or 'none'})")
    site = observed[0]
    fn = site["fn"]
    while hasattr(fn, "base_dist") and not hasattr(fn, "logits") and not hasattr(fn, "loc"):
        fn = fn.base_dist
    if fn is site["fn"] and getattr(site["fn"], "event_shape", ()) != ():
        raise ValueError(f"the observed site {site['name']!r} does not score entries one by one (its distribution is "
                         f"{type(site['fn']).__name__}); imputation through a guide needs independent entries given "
                         "the latents")
    if not fn.batch_shape or fn.batch_shape[0] != rows:
        raise ValueError(f"the observed site {site['name']!r} scores {fn.batch_shape[0] if fn.batch_shape else 0} rows "
                         f"of the {rows} given (a subsampled plate?); imputation scores every row at once: build the "
                         "plate over all rows (no subsample_size)")
    return site, fn


def _per_datum_sites(guide_trace, model_trace, rows: int) -> list[str]:
    """The guide's latent sites, each checked to lie in a plate over the ``rows`` rows: a global latent has no
    per-row posterior to draw from, and is refused in one line."""
    sites = []
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site.get("is_observed") or site_is_subsample(site) \
                or name not in model_trace.nodes:
            continue
        if not any(frame.size == rows for frame in site["cond_indep_stack"]):
            raise ValueError(f"latent {name!r} is global (outside the per-datum plate): imputation through a guide "
                             "draws per-row latents given each row's observed entries; it serves models whose latents "
                             "are all per-datum")
        sites.append(name)
    return sites


def _guide_resampling(model, guide, x, missing, num_completions, num_particles, condition,
                      mcmc_steps: int, refine_steps: int = 100) -> Imputation:
    n, shape = x.shape[0], x.shape[1:]
    observed = (~missing).to(x)
    # the guide's input: missing entries filled with the model's reconstruction, two rounds from a neutral start
    filled = torch.where(missing, torch.full_like(x, 0.5), x)
    for _ in range(2):
        guide_trace = poutine.trace(guide).get_trace(filled, **condition)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(filled, **condition)
        _, fn = _observed_site(model_trace, n)
        filled = torch.where(missing, fn.mean.reshape(x.shape), x)
    sites = _per_datum_sites(guide_trace, model_trace, n)
    try:  # every row scored at once: a plate that subsamples would score some of them (checked on twice the rows)
        probe = {k: guide_trace.nodes[k]["value"].repeat(2, *([1] * (guide_trace.nodes[k]["value"].dim() - 1)))
                 for k in sites}
        rows2 = filled.repeat(2, *([1] * (x.dim() - 1)))
        reps2 = {k: v.repeat(2, *([1] * (v.dim() - 1))) for k, v in condition.items()}
        _observed_site(poutine.trace(poutine.condition(model, data=probe)).get_trace(rows2, **reps2), 2 * n, probe)
    except ValueError as err:
        if "Shape mismatch" not in str(err) and "subsampled" not in str(err):
            raise
        raise ValueError("the program's plate does not cover every row given (a subsampled plate?); imputation scores "
                         "every row at once: build the plate over all rows (no subsample_size)") from None
    # a Gaussian per row and latent site: the guide's draws' moments, refined on the observed entries alone
    draws = guide_draws(guide, sites, filled, condition, 16)
    loc = {k: v.mean(0) for k, v in draws.items()}
    scale = {k: v.std(0).clamp_min(1e-3) for k, v in draws.items()}
    loc, scale = _refine(model, x, observed, condition, loc, scale, refine_steps)

    def log_target(latents, rows, reps, mask):
        """log p(z) + log p(x_entries | z) over the entries ``mask`` selects, per row."""
        trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(rows, **reps)
        trace.compute_log_prob(site_filter=lambda name, site: name in latents)
        _, fn = _observed_site(trace, rows.shape[0], latents)
        per_entry = fn.log_prob(rows.reshape(fn.batch_shape)).reshape(rows.shape)
        return (sum(trace.nodes[k]["log_prob"] for k in latents)
                + (per_entry * mask).reshape(rows.shape[0], -1).sum(-1)), fn

    def proposal(repeat):
        q = {k: torch.distributions.Normal(loc[k].repeat_interleave(repeat, 0), scale[k].repeat_interleave(repeat, 0))
             for k in sites}
        z = {k: q[k].sample() for k in sites}
        return z, q

    def log_q(q, z):
        return sum(q[k].log_prob(z[k]).reshape(z[k].shape[0], -1).sum(-1) for k in sites)

    reps = {k: v.repeat_interleave(num_particles, 0) for k, v in condition.items()}
    known = x.repeat_interleave(num_particles, 0)  # observed entries, zeros where missing (masked out)
    z, q = proposal(num_particles)
    target, _ = log_target(z, known, reps, observed.repeat_interleave(num_particles, 0))
    log_w = target - log_q(q, z)
    w = torch.softmax(log_w.reshape(n, num_particles).double(), -1)
    pick = torch.multinomial(w.float(), num_completions, replacement=True)
    index = (torch.arange(n, device=x.device)[:, None] * num_particles + pick).reshape(-1)
    # a fresh draw of x given each chosen particle's latents (a particle chosen twice gives two draws)
    chosen = {k: v[index] for k, v in z.items()}
    given = {k: v[index] for k, v in reps.items()}
    rows = x.repeat_interleave(num_completions, 0)
    flat_missing = missing.repeat_interleave(num_completions, 0)
    _, fn = log_target(chosen, rows, given, torch.zeros_like(rows))
    state = torch.where(flat_missing, fn.sample().reshape(rows.shape), rows)
    ess = (1 / w.pow(2).sum(-1)).float()
    method = (f"importance resampling of {num_particles} draws per row from a Gaussian over the latents fitted to "
              f"the observed entries ({refine_steps} steps from the guide's), then x_mis ~ p(x_mis | z)")
    accepted = 0.0
    everything = torch.ones_like(rows)
    for _ in range(mcmc_steps):  # independence Metropolis-Hastings on z, then x_mis | z: exact in the limit
        proposed, q = proposal(num_completions)
        new, _ = log_target(proposed, state, given, everything)
        old, _ = log_target(chosen, state, given, everything)
        ratio = new + log_q(q, chosen) - old - log_q(q, proposed)
        take = torch.rand_like(ratio).log() < ratio
        accepted += take.float().mean().item() / mcmc_steps
        chosen = {k: torch.where(take.reshape(-1, *([1] * (v.dim() - 1))), proposed[k], v) for k, v in chosen.items()}
        _, fn = log_target(chosen, state, given, everything)
        state = torch.where(flat_missing, fn.sample().reshape(rows.shape), state)
    if mcmc_steps:
        method += f"; then {mcmc_steps} Metropolis-within-Gibbs steps (independence proposals from that Gaussian)"
    return Imputation(state.reshape(n, num_completions, *shape), missing, method, ess,
                      {"acceptance": accepted} if mcmc_steps else {})


def _refine(model, x, observed, condition, loc, scale, steps, particles: int = 8):
    """Per row, a diagonal Gaussian over each latent site fitted by ``steps`` Adam steps on the evidence lower
    bound of the observed entries alone (reparameterized, ``particles`` draws a step); the model is left as it
    was."""
    if not steps:
        return loc, scale
    params = [p for p in (model.parameters() if isinstance(model, torch.nn.Module) else []) if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            mu = {k: v.detach().clone().requires_grad_(True) for k, v in loc.items()}
            log_s = {k: v.detach().log().clone().requires_grad_(True) for k, v in scale.items()}
            opt = torch.optim.Adam([*mu.values(), *log_s.values()], lr=0.05)
            rows = x.repeat(particles, *([1] * (x.dim() - 1)))
            mask = observed.repeat(particles, *([1] * (x.dim() - 1)))
            reps = {k: v.repeat(particles, *([1] * (v.dim() - 1))) for k, v in condition.items()}
            for _ in range(steps):
                z = {k: (mu[k] + log_s[k].exp() * torch.randn(particles, *mu[k].shape, device=x.device,
                                                                dtype=x.dtype)).reshape(-1, *mu[k].shape[1:])
                     for k in mu}
                trace = poutine.trace(poutine.condition(model, data=z)).get_trace(rows, **reps)
                trace.compute_log_prob(site_filter=lambda name, site: name in z)
                _, fn = _observed_site(trace, rows.shape[0], z)
                per_entry = fn.log_prob(rows.reshape(fn.batch_shape)).reshape(rows.shape)
                elbo = (sum(trace.nodes[k]["log_prob"] for k in z) + (per_entry * mask).reshape(rows.shape[0], -1)
                        .sum(-1)).mean() * x.shape[0] + sum(v.sum() for v in log_s.values())
                opt.zero_grad()
                (-elbo).backward()
                opt.step()
    finally:
        for p in params:
            p.requires_grad_(True)
    return {k: v.detach() for k, v in mu.items()}, {k: v.detach().exp() for k, v in log_s.items()}


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
