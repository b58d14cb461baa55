"""ELBO estimators by name: ``make_elbo(name, **kw)``.

=============  =====================================================================================
``analytic``   ``trace`` with each latent site's KL term in closed form where its prior and guide have one and
               the guide draws the latents in the model's order, sampled elsewhere (the default)
``trace``      pprogen's lean Trace_ELBO (vectorized particles, ``beta``)
``stl``        sticking-the-landing: Trace_ELBO with the path-derivative guide gradient
``meanfield``  Pyro's TraceMeanField_ELBO (analytic KL where Pyro knows it)
               (Pyro's estimators come wrapped in :class:`BetaELBO` so that ``beta`` applies to them)
``graph``      Pyro's TraceGraph_ELBO (Rao-Blackwellized score-function gradients; no torch-native path)
``enum``       Pyro's TraceEnum_ELBO (discrete latents marked for enumeration are summed out)
``renyi``      per-datum Rényi bound of order ``alpha`` in [0, 1)
``iwae``       per-datum IWAE bound (Rényi with alpha = 0)
``iwae_dreg``  IWAE bound with doubly reparameterized guide gradients
=============  =====================================================================================
"""

from __future__ import annotations

import contextlib
import warnings

from typing import Any, Callable

import pyro

from pprogen.inference.elbo import ELBOLoss, TraceELBO
from pprogen.inference.iwae import RenyiELBO
from pprogen.inference.tracing import scale_latents
from pprogen.errors import unknown_name_error


class BetaELBO:
    """One of Pyro's estimators with every latent site's log-density weighted by ``beta``.

    Scaling the unobserved sites of model and guide alike turns log p(x|z) + log p(z) - log q(z) into
    log p(x|z) + beta (log p(z) - log q(z)): the beta-VAE objective, for any Trace_ELBO-family estimator.
    """

    def __init__(self, elbo: pyro.infer.ELBO, beta: float = 1.0) -> None:
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        self.elbo = elbo
        self.beta = float(beta)
        self.num_particles = elbo.num_particles
        if hasattr(elbo, "differentiable_loss"):
            self.differentiable_loss = self._differentiable_loss

    def __call__(self, model: Callable, guide: Callable) -> ELBOLoss:
        return ELBOLoss(self, model, guide)

    def _weighted(self, fn: Callable) -> Callable:
        return scale_latents(self.beta)(fn) if self.beta != 1.0 else fn

    def _differentiable_loss(self, model, guide, *args, **kwargs):
        with _quiet():
            return self.elbo.differentiable_loss(self._weighted(model), self._weighted(guide), *args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        with _quiet():
            return self.elbo.loss(self._weighted(model), self._weighted(guide), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        with _quiet():
            return self.elbo.loss_and_grads(self._weighted(model), self._weighted(guide), *args, **kwargs)


@contextlib.contextmanager
def _quiet():
    # a batch with nothing to enumerate (complete data for a model that enumerates missing values) is fine
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured for enumeration")
        yield


def _pyro_elbo(cls_name: str) -> Callable[..., BetaELBO]:
    def build(num_particles: int = 1, vectorize_particles: bool = True, beta: float = 1.0, **kw: Any) -> BetaELBO:
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        cls = getattr(pyro.infer, cls_name)
        return BetaELBO(cls(num_particles=num_particles, vectorize_particles=vectorize_particles, **kw), beta)

    return build


def _analytic(**kw: Any) -> TraceELBO:
    return TraceELBO(analytic_kl=True, **kw)


def _stl(**kw: Any) -> TraceELBO:
    return TraceELBO(stl=True, **kw)


def _iwae(num_particles: int = 2, **kw: Any) -> RenyiELBO:
    return RenyiELBO(alpha=0.0, num_particles=num_particles, **kw)


def _iwae_dreg(num_particles: int = 2, **kw: Any) -> RenyiELBO:
    return RenyiELBO(alpha=0.0, num_particles=num_particles, dreg=True, **kw)


def _renyi(num_particles: int = 2, alpha: float = 0.5, **kw: Any) -> RenyiELBO:
    return RenyiELBO(alpha=alpha, num_particles=num_particles, **kw)


ELBOS: dict[str, Callable[..., TraceELBO | RenyiELBO | BetaELBO]] = {
    "analytic": _analytic,
    "trace": TraceELBO,
    "stl": _stl,
    "meanfield": _pyro_elbo("TraceMeanField_ELBO"),
    "graph": _pyro_elbo("TraceGraph_ELBO"),
    "enum": _pyro_elbo("TraceEnum_ELBO"),
    "renyi": _renyi,
    "iwae": _iwae,
    "iwae_dreg": _iwae_dreg,
}


def make_elbo(name: str, **kw: Any) -> TraceELBO | RenyiELBO | BetaELBO:
    """An ELBO estimator by name (see the module docstring).

    Keyword arguments: ``num_particles``, ``beta`` (the KL weight, for every estimator), ``alpha`` (``renyi``),
    ``vectorize_particles`` and the estimator's own. Returns a :class:`TraceELBO` (``analytic``, ``trace``,
    ``stl``), a :class:`RenyiELBO` (``renyi``, ``iwae``, ``iwae_dreg``) or one of Pyro's estimators wrapped in
    :class:`BetaELBO` (``meanfield``, ``graph``, ``enum``).
    """
    if name not in ELBOS:
        raise unknown_name_error("ELBO estimator", name, ELBOS)
    return ELBOS[name](**kw)
