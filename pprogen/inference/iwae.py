r"""Importance-weighted bounds per data point: Rényi (order alpha), IWAE (alpha = 0) and IWAE with DReG.

For local latents :math:`z_n` inside the ``data`` plate and global latents :math:`\theta` outside it,

.. math::

    \mathcal{L}_\alpha = \mathbb{E}_{q(\theta)}\Big[\log\frac{p(\theta)}{q(\theta)}
        + \sum_n \frac{1}{1-\alpha}\log\frac{1}{K}\sum_{k=1}^K w_{nk}^{1-\alpha}\Big],
    \qquad w_{nk} = \frac{p(x_n, z_{nk} \mid \theta)}{q(z_{nk} \mid x_n, \theta)},

with the K particles drawn for the local latents only and one :math:`\theta` shared by them, so each
data point keeps its own log-sum-exp (a sum over n, hence exact under minibatch scaling) and the bound
stays a lower bound on :math:`\log p(x)` for every alpha in [0, 1). Pyro's ``RenyiELBO`` instead takes one
log-sum-exp over the whole batch once any latent sits outside the data plate.

``iwae_dreg`` keeps the IWAE value but uses the doubly reparameterized gradient for the guide, turning the
guide gradient into :math:`\sum_k \tilde w_k^2 \, \partial \log w_k / \partial z_k \cdot \partial z_k /
\partial \phi`: the gradient reaching each local latent is multiplied by its normalized weight, and log q
is evaluated at those latents with its score term :math:`\partial_\phi \log q(z; \phi)` (fixed z) taken
out by a second evaluation at the detached draws, so it works however the guide reaches its parameters
(modules, ``pyro.module``, ``pyro.param``, autoguides).

The per-datum plate is ``plate_name``, or found by itself: the plate whose size (full size, when
subsampled) is the number of rows handed to the program. With no guide latent inside it the particles share every
draw and the bound equals the ELBO of one particle; the first call says so in a warning at the user's line.

References: Li & Turner, Rényi Divergence Variational Inference, 2016, arXiv:1602.02311; Burda, Grosse &
Salakhutdinov, Importance Weighted Autoencoders, 2016, arXiv:1509.00519; Tucker, Lawson, Gu & Maddison,
Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives, 2019, arXiv:1810.04152.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch

from pprogen.inference.elbo import ELBOLoss
from pprogen.inference.tracing import (
    LocalParticlePlate,
    check_reparameterized,
    check_sites_match,
    data_rows,
    direct_call,
    find_data_plate,
    in_plate,
    masked_log_prob,
    per_datum,
    plate_nesting,
    probe_sites,
    rerun_guide,
    run_pair,
    score_term,
    user_stacklevel,
)


class RenyiELBO:
    """Per-datum Rényi / IWAE bound with vectorized particles; see the module docstring."""

    def __init__(
        self,
        alpha: float = 0.0,
        num_particles: int = 2,
        beta: float = 1.0,
        dreg: bool = False,
        max_plate_nesting: int | None = None,
        plate_name: str | None = None,
        vectorize_particles: bool = True,
    ) -> None:
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha must lie in [0, 1) for a lower bound, got {alpha}")
        if dreg and alpha != 0:
            raise ValueError("doubly reparameterized gradients are for the IWAE bound (alpha = 0)")
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        if not vectorize_particles:
            raise ValueError("importance-weighted bounds always vectorize their particles; drop vectorize_particles=False")
        self.alpha = float(alpha)
        self.num_particles = num_particles
        self.dreg = dreg
        self.max_plate_nesting = max_plate_nesting
        self.plate_name = plate_name
        self.beta = float(beta)
        self.name = "iwae_dreg" if dreg else "iwae" if alpha == 0 else "renyi"
        self.last_terms: dict[str, torch.Tensor] = {}
        self._warned = False

    def _warn_without_locals(self, guide_sites: list[dict]) -> None:
        """Warn, once, at the user's call when no guide latent sits inside the per-datum plate: the particles then
        share every draw, and the bound equals the ELBO of one particle (``trace``)."""
        self._warned = True
        if any(not s["is_observed"] and in_plate(s, self.plate_name) for s in guide_sites):
            return
        warnings.warn(
            f"no latent site of the guide sits inside plate {self.plate_name!r}, so the {self.name} bound's particles "
            "share every draw and it equals the trace ELBO of one particle here; use elbo 'trace' (or 'analytic'), "
            f"or put the per-datum latents in pyro.plate({self.plate_name!r}, ...)", UserWarning,
            stacklevel=user_stacklevel())

    def __call__(self, model: Callable, guide: Callable) -> ELBOLoss:
        return ELBOLoss(self, model, guide)

    def _bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """Per-datum bound from log weights ``(K, B)``."""
        k = log_w.shape[0]
        return (torch.logsumexp((1.0 - self.alpha) * log_w, 0) - math.log(k)) / (1.0 - self.alpha)

    def per_datum_bound(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor | float]:
        """``(bound per datum (B,), global term, data-plate scale)``, all differentiable."""
        if self.max_plate_nesting is None or self.plate_name is None:
            guide_sites, model_sites = probe_sites(model, guide, args, kwargs)
            if self.plate_name is None:
                frame = find_data_plate(guide_sites + model_sites, data_rows(args, kwargs))
                self.plate_name = "data" if frame is None else frame.name
            if self.max_plate_nesting is None:
                self.max_plate_nesting = max(1, plate_nesting(guide_sites + model_sites))
        particle_dim = -1 - self.max_plate_nesting
        hooked: dict[str, torch.Tensor] = {}

        def hook_values(replay):
            if not self.dreg:
                return replay
            for name, value in replay.items():
                hooked[name] = value.view_as(value) if value.requires_grad else value
            return dict(hooked)

        with LocalParticlePlate(self.num_particles, particle_dim, self.plate_name):
            guide_sites, model_sites, replay = run_pair(direct_call(model), direct_call(guide), args, kwargs, hook_values)
            check_reparameterized(guide_sites, self.name)
            check_sites_match(guide_sites, model_sites)
            if not self._warned:
                self._warn_without_locals(guide_sites)
            first_guide_sites = guide_sites
            if self.dreg:  # log q at the hooked latents, its score term taken out (see the module docstring)
                guide_sites = rerun_guide(guide, replay, args, kwargs)
                outside = frozenset(s["name"] for s in guide_sites if not in_plate(s, self.plate_name))
                score = score_term(guide, replay, args, kwargs, self._local_log_q(particle_dim), live=outside)
        terms = [(s, 1.0) for s in model_sites] + [(s, -1.0) for s in guide_sites]
        log_w = 0.0
        global_term = 0.0
        scale = None
        self.last_terms = {}
        for site, sign in terms:
            log_prob = masked_log_prob(site)
            if not site["is_observed"] and self.beta != 1.0:
                log_prob = self.beta * log_prob  # beta-weighted log weights: log p(x|z) + beta log p(z)/q(z)
            self.last_terms[("guide." if sign < 0 else "") + site["name"]] = log_prob
            if in_plate(site, self.plate_name):
                frame = next(f for f in site["cond_indep_stack"] if f.name == self.plate_name)
                log_w = log_w + sign * per_datum(log_prob, particle_dim, frame.dim, self.max_plate_nesting + 1)
                scale = site["scale"] if scale is None else scale
            else:
                global_term = global_term + sign * log_prob.sum() * site["scale"]
        if not torch.is_tensor(log_w):
            raise ValueError(
                f"no site sits inside the {self.plate_name!r} plate; importance-weighted bounds need "
                f"per-datum sites in pyro.plate({self.plate_name!r}, ...) (use elbo 'trace' otherwise)"
            )
        log_w = log_w.expand(self.num_particles, -1)
        if self.dreg:
            log_w = log_w + score
            # the score term's reparameterized twin puts (1 - beta) w + beta w^2 on each path derivative: the
            # gradient reaching a draw already carries w from the log-sum-exp (w^2 at beta = 1, Tucker et al.)
            weights = torch.softmax(log_w.detach(), 0)
            if self.beta != 1.0:
                weights = (1.0 - self.beta) + self.beta * weights
            for site in first_guide_sites:  # every reparameterized local draw, auxiliary ones included
                if site["name"] in hooked and hooked[site["name"]].requires_grad and in_plate(site, self.plate_name):
                    _scale_gradient(hooked[site["name"]], weights, site, particle_dim, self.plate_name)
        return self._bound(log_w), global_term, (1.0 if scale is None else scale)

    def _local_log_q(self, particle_dim: int) -> Callable[[dict], torch.Tensor]:
        """A guide site's log q summed per (particle, datum) ``(K|1, B|1)``; global sites count zero."""

        def reduce(site: dict) -> torch.Tensor:
            if not in_plate(site, self.plate_name):
                return torch.zeros((), device=site["value"].device)
            frame = next(f for f in site["cond_indep_stack"] if f.name == self.plate_name)
            log_prob = masked_log_prob(site)
            if self.beta != 1.0:
                log_prob = self.beta * log_prob
            return per_datum(log_prob, particle_dim, frame.dim, self.max_plate_nesting + 1)

        return reduce

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        bound, global_term, scale = self.per_datum_bound(model, guide, *args, **kwargs)
        return -(bound.sum() * scale + global_term)

    def loss(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()


def _scale_gradient(value: torch.Tensor, weights: torch.Tensor, site: dict, particle_dim: int, plate_name: str) -> None:
    """Multiply the gradient reaching a local latent by its factor (its normalized importance weight at beta 1)."""
    frame = next(f for f in site["cond_indep_stack"] if f.name == plate_name)
    event_dim = site["fn"].event_dim
    shape = [1] * value.dim()
    batch_dims = value.dim() - event_dim
    shape[batch_dims + particle_dim] = weights.shape[0]
    shape[batch_dims + frame.dim] = weights.shape[1]
    factor = weights.reshape(shape)
    value.register_hook(lambda grad: grad * factor)
