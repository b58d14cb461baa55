r"""ELBO estimators by name, and pprogen's own lean ``Trace_ELBO``.

:class:`TraceELBO` computes the same estimator as Pyro's ``Trace_ELBO`` for reparameterized guides,

.. math::

    \mathcal{L}(x) = \frac{1}{K}\sum_{k=1}^K \Big[\log p(x \mid z_k)
        + \beta\,\big(\log p(z_k) - \log q(z_k \mid x)\big)\Big], \qquad z_k \sim q(z \mid x),

with the K particles vectorized in a plate, but records the sample sites with one small effect handler
instead of building two ``Trace`` objects, pruning and copying them. That bookkeeping is most of Pyro's
per-step overhead on small networks. A guide with a non-reparameterized site falls back to Pyro's
``Trace_ELBO`` (score-function gradients), which remains the reference implementation.

Reference: Pyro's ``Trace_ELBO``; beta-VAE: Higgins et al., 2017, https://openreview.net/forum?id=Sy2fzU9gl.
"""

from __future__ import annotations

from typing import Any, Callable

import pyro
from pyro.distributions import Delta
from pyro.distributions.kl import kl_divergence  # torch's, with Pyro's pairs (Independent, Delta) registered
import torch
from torch import nn

from pprogen.inference.tracing import (
    check_reparameterized,
    check_sites_match,
    direct_call,
    guess_max_plate_nesting,
    particle_plate,
    run_pair,
    score_term,
    site_log_prob_sum,
)


class TraceELBO:
    """Lean, vectorized Trace_ELBO with a KL weight ``beta``; see the module docstring.

    With ``stl=True`` it is the sticking-the-landing estimator (Roeder, Wu & Duvenaud, 2017,
    arXiv:1703.09194): the guide's gradient is the path derivative alone, which vanishes when q equals the
    posterior. The score term :math:`\\partial_\\phi \\log q(z; \\phi)` at fixed z is taken out by evaluating
    log q a second time at the detached draws with live parameters and adding that evaluation minus its
    own value (zero) to the objective, so the estimator needs no knowledge of where the guide keeps its
    parameters: modules, ``pyro.module``, ``pyro.param`` and autoguides alike.
    """

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool = True,
        beta: float = 1.0,
        max_plate_nesting: int | None = None,
        stl: bool = False,
        plate_name: str | None = None,
        analytic_kl: bool = False,
    ) -> None:
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        if stl and analytic_kl:
            raise ValueError("stl and analytic_kl do not combine: sticking the landing takes the sampled KL's path "
                             "derivative; choose one (elbo 'stl' or 'analytic')")
        self.num_particles = num_particles
        self.vectorize_particles = vectorize_particles
        self.beta = float(beta)
        self.max_plate_nesting = max_plate_nesting
        self.stl = stl
        self.plate_name = plate_name  # accepted for a uniform interface: this estimator treats every site alike
        self.analytic_kl = analytic_kl
        self.last_terms: dict[str, torch.Tensor] = {}
        self.last_analytic: tuple[str, ...] = ()  # the latent sites whose KL term the last call took in closed form
        self._checked: set[tuple[int, int]] = set()
        self._fallback: pyro.infer.Trace_ELBO | None = None

    def __call__(self, model: Callable, guide: Callable) -> "ELBOLoss":
        return ELBOLoss(self, model, guide)

    def _particle_plate(self, args, kwargs, model, guide):
        if self.num_particles == 1 or not self.vectorize_particles:
            return None
        if self.max_plate_nesting is None:
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        return particle_plate(self.num_particles, self.max_plate_nesting)

    def _elbo_particle_sum(self, model, guide, args, kwargs) -> torch.Tensor | None:
        guide_sites, model_sites, replay = run_pair(direct_call(model), direct_call(guide), args, kwargs)
        if self.stl:
            check_reparameterized(guide_sites, "stl")
        elif any(not s["is_observed"] and not s["fn"].has_rsample for s in guide_sites):
            return None  # score-function gradients needed: leave it to Pyro
        # structure checks run on a pair's first call and whenever Pyro's validation is on
        if (id(model), id(guide)) not in self._checked or pyro.poutine.util.is_validation_enabled():
            check_sites_match(guide_sites, model_sites)
            self._checked.add((id(model), id(guide)))
        observed = latent = None  # no adding to zero, no multiplying by one: each is an operation per step
        if self.stl:
            latent = score_term(guide, replay, args, kwargs, site_log_prob_sum)
        terms = self.last_terms = {}
        closed = analytic_kl_terms(guide_sites, model_sites) if self.analytic_kl else {}
        self.last_analytic = tuple(closed)
        for site in model_sites:
            name = site["name"]
            if name in closed:
                term = terms[name] = closed[name]
            else:
                term = terms[name] = site_log_prob_sum(site)
            if site["is_observed"]:
                observed = term if observed is None else observed + term
            else:
                latent = term if latent is None else latent + term
        for site in guide_sites:
            if site["name"] in closed:
                continue
            term = terms["guide." + site["name"]] = site_log_prob_sum(site)
            latent = -term if latent is None else latent - term
        if latent is not None and self.beta != 1.0:
            latent = self.beta * latent
        if observed is None or latent is None:
            found = observed if latent is None else latent
            return torch.zeros(()) if found is None else found  # no sites at all: zero, not Pyro's fallback
        return observed + latent

    def _particle_sum(self, model, guide, args, kwargs):
        plate = self._particle_plate(args, kwargs, model, guide)
        if plate is None:
            return self._elbo_particle_sum(model, guide, args, kwargs)
        with plate:
            return self._elbo_particle_sum(model, guide, args, kwargs)

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Negative ELBO estimate that autograd differentiates; averaged over particles."""
        if self.vectorize_particles or self.num_particles == 1:
            total = self._particle_sum(model, guide, args, kwargs)
        else:
            parts = [self._elbo_particle_sum(model, guide, args, kwargs) for _ in range(self.num_particles)]
            total = None if any(p is None for p in parts) else sum(parts)
        if total is None:
            if self.beta != 1.0:
                raise ValueError(
                    "beta != 1 needs a reparameterized guide with the 'trace' estimator; "
                    "use a reparameterizable guide or beta=1"
                )
            if self._fallback is None:  # built once: Pyro logs its plate-nesting guess on every new estimator
                if self.max_plate_nesting is None:
                    self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
                self._fallback = pyro.infer.Trace_ELBO(
                    num_particles=self.num_particles,
                    vectorize_particles=self.vectorize_particles,
                    max_plate_nesting=self.max_plate_nesting,
                )
            fallback = self._fallback
            return fallback.differentiable_loss(model, guide, *args, **kwargs)
        return -total if self.num_particles == 1 else -total / self.num_particles

    def loss(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()


def analytic_kl_terms(guide_sites: list[dict], model_sites: list[dict]) -> dict[str, torch.Tensor]:
    """``{site: -KL(q || p)}``, scaled and summed, for each latent site whose KL term can be taken in closed form.

    For a latent z_i, E_q[log p(z_i | z_<i) - log q(z_i | z_<i, x)] given the latents before it is
    -KL(q(z_i | ...) || p(z_i | ...)); putting that conditional expectation in place of the sampled difference
    keeps the estimator unbiased, and with it its gradient, as long as both densities condition only on latents
    drawn before z_i. That holds when the guide draws the latents in the model's order; otherwise no site is taken
    in closed form. A site also stays sampled when torch/Pyro know no KL for its pair of distributions (or the
    guide's is a ``Delta``, as autoguides draw), when their shapes do not broadcast to the site's, when it is
    masked, or when model and guide scale it differently.
    """
    model_latent = [s for s in model_sites if not s["is_observed"]]
    guide_latent = [s for s in guide_sites if not s["is_observed"] and not s["infer"].get("is_auxiliary")]
    if [s["name"] for s in model_latent] != [s["name"] for s in guide_latent]:
        return {}
    closed = {}
    for p_site, q_site in zip(model_latent, guide_latent):
        p, q = p_site["fn"], q_site["fn"]
        scale = p_site["scale"]
        if p_site["mask"] is not None or q_site["mask"] is not None or not _same_scale(scale, q_site["scale"]):
            continue
        if p.event_shape != q.event_shape or Delta in _kind(q):  # a Delta's "KL" would drop its log-density
            continue
        value = q_site["value"]
        shape = value.shape[:value.dim() - len(q.event_shape)]  # the shape of the site's log-density
        try:
            if torch.broadcast_shapes(p.batch_shape, q.batch_shape) != shape:
                continue
        except RuntimeError:
            continue
        kl = _kl(q, p)
        if kl is None or kl.shape != shape:
            continue
        total = -kl.sum()
        closed[p_site["name"]] = total if isinstance(scale, float) and scale == 1.0 else total * scale
    return closed


_NO_KL: set[tuple] = set()  # pairs of distribution types known to have no closed-form KL


def _kl(q, p) -> torch.Tensor | None:
    pair = (_kind(q), _kind(p))
    if pair in _NO_KL:
        return None
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        _NO_KL.add(pair)
        return None


def _kind(d) -> tuple:
    """A distribution's type with those of the distributions it wraps (``Independent(Normal)``, ...) and how many
    batch dimensions each ``Independent`` reinterprets (Pyro's KL of two of them needs the same number)."""
    kinds = [type(d)]
    while hasattr(d, "base_dist"):
        kinds.append(getattr(d, "reinterpreted_batch_ndims", None))
        d = d.base_dist
        kinds.append(type(d))
    return tuple(kinds)


def _same_scale(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return a is b


class ELBOLoss(nn.Module):
    """``loss = ELBOLoss(...)(x)``: an ``nn.Module`` holding model and guide (torch-native training)."""

    def __init__(self, elbo: Any, model: Callable, guide: Callable) -> None:
        super().__init__()
        self.elbo = elbo
        self.model = model
        self.guide = guide

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
