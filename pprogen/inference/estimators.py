"""ELBO estimators by name: ``make_elbo(name, **kw)``.

=============  =====================================================================================
``trace``      pprogen's lean Trace_ELBO (vectorized particles, ``beta``)
``stl``        sticking-the-landing: Trace_ELBO with the path-derivative guide gradient
``meanfield``  Pyro's TraceMeanField_ELBO (analytic KL where Pyro knows it)
``graph``      Pyro's TraceGraph_ELBO (Rao-Blackwellized score-function gradients; no torch-native path)
``enum``       Pyro's TraceEnum_ELBO (discrete latents marked for enumeration are summed out)
``renyi``      per-datum Rényi bound of order ``alpha`` in [0, 1)
``iwae``       per-datum IWAE bound (Rényi with alpha = 0)
``iwae_dreg``  IWAE bound with doubly reparameterized guide gradients
=============  =====================================================================================
"""

from __future__ import annotations

from typing import Any, Callable

import pyro

from pprogen.inference.elbo import TraceELBO
from pprogen.inference.iwae import RenyiELBO
from pprogen.errors import unknown_name_error


def _pyro_elbo(cls_name: str):
    def build(num_particles: int = 1, vectorize_particles: bool = True, beta: float = 1.0, **kw):
        if beta != 1.0:
            raise ValueError(f"beta applies to the 'trace' and 'stl' estimators, not to Pyro's {cls_name}")
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        cls = getattr(pyro.infer, cls_name)
        return cls(num_particles=num_particles, vectorize_particles=vectorize_particles, **kw)

    return build


def _stl(**kw: Any) -> TraceELBO:
    return TraceELBO(stl=True, **kw)


def _iwae(num_particles: int = 2, **kw: Any) -> RenyiELBO:
    return RenyiELBO(alpha=0.0, num_particles=num_particles, **kw)


def _iwae_dreg(num_particles: int = 2, **kw: Any) -> RenyiELBO:
    return RenyiELBO(alpha=0.0, num_particles=num_particles, dreg=True, **kw)


def _renyi(num_particles: int = 2, alpha: float = 0.5, **kw: Any) -> RenyiELBO:
    return RenyiELBO(alpha=alpha, num_particles=num_particles, **kw)


ELBOS: dict[str, Callable[..., Any]] = {
    "trace": TraceELBO,
    "stl": _stl,
    "meanfield": _pyro_elbo("TraceMeanField_ELBO"),
    "graph": _pyro_elbo("TraceGraph_ELBO"),
    "enum": _pyro_elbo("TraceEnum_ELBO"),
    "renyi": _renyi,
    "iwae": _iwae,
    "iwae_dreg": _iwae_dreg,
}


def make_elbo(name: str, **kw: Any):
    """An ELBO estimator by name (see the module docstring).

    Keyword arguments: ``num_particles``, ``beta`` (``trace``, ``stl``), ``alpha`` (``renyi``),
    ``vectorize_particles`` and the estimator's own.
    """
    if name not in ELBOS:
        raise unknown_name_error("ELBO estimator", name, ELBOS)
    return ELBOS[name](**kw)
