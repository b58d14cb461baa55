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
import torch
from pyro.nn import PyroModule
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from pprogen.registry import unknown_name_error


class _SiteCollector(Messenger):
    """Collects a program's sample sites; optionally replays latent values from a guide."""

    def __init__(self, replay: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.sites: list[dict] = []
        self.replay = replay

    def _pyro_sample(self, msg: dict) -> None:
        if self.replay is not None and not msg["is_observed"] and msg["name"] in self.replay:
            msg["value"] = self.replay[msg["name"]]
            msg["done"] = True

    def _pyro_post_sample(self, msg: dict) -> None:
        if not site_is_subsample(msg):
            self.sites.append(msg)


def site_log_prob_sum(site: dict) -> torch.Tensor:
    """The scaled, masked log-density of one recorded site, summed."""
    log_prob = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_prob = log_prob * site["mask"]
    total = log_prob.sum()
    scale = site["scale"]
    return total if isinstance(scale, float) and scale == 1.0 else total * scale


def guess_max_plate_nesting(model: Callable, guide: Callable, args, kwargs) -> int:
    """How many plate dimensions the program uses (0 when none), found by running it once.

    The run leaves the random number generators as it found them.
    """
    nesting = 0
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        with _SiteCollector() as guide_sites:
            guide(*args, **kwargs)
        replay = {s["name"]: s["value"] for s in guide_sites.sites}
        with _SiteCollector(replay) as model_sites:
            model(*args, **kwargs)
    for site in guide_sites.sites + model_sites.sites:
        for frame in site["cond_indep_stack"]:
            if frame.vectorized:
                nesting = max(nesting, -frame.dim)
    return nesting


def direct_call(fn: Callable) -> Callable:
    """``fn.forward`` for a PyroModule whose ``__call__`` would only announce parameters, else ``fn``.

    ``PyroModule.__call__`` opens a context in which every access to a plain ``nn.Module`` child
    emits ``pyro.module`` (one ``pyro.param`` message per parameter) so Pyro's global param store
    can find them. Torch-native training reads ``module.parameters()`` instead, so for a module
    tree that holds no ``PyroParam``/``PyroSample`` and no hooks, calling ``forward`` directly runs
    the same program without that bookkeeping (about a tenth of a small VAE's step on a CPU).
    """
    if not isinstance(fn, PyroModule) or type(fn).__call__ is not PyroModule.__call__:
        return fn
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return fn
    for module in fn.modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return fn
        if isinstance(module, PyroModule) and (module._pyro_params or module._pyro_samples):
            return fn
    return fn.forward


class TraceELBO:
    """Lean, vectorized Trace_ELBO with a KL weight ``beta``; see the module docstring."""

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool = True,
        beta: float = 1.0,
        max_plate_nesting: int | None = None,
    ) -> None:
        if num_particles < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}")
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        self.num_particles = int(num_particles)
        self.vectorize_particles = vectorize_particles
        self.beta = float(beta)
        self.max_plate_nesting = max_plate_nesting
        self.last_terms: dict[str, torch.Tensor] = {}

    def __call__(self, model: Callable, guide: Callable) -> "ELBOLoss":
        return ELBOLoss(self, model, guide)

    def _particle_plate(self, args, kwargs, model, guide):
        if self.num_particles == 1 or not self.vectorize_particles:
            return None
        if self.max_plate_nesting is None:
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        return pyro.plate(
            "num_particles_vectorized", self.num_particles, dim=-1 - self.max_plate_nesting
        )

    def _run(self, model, guide, args, kwargs):
        model, guide = direct_call(model), direct_call(guide)
        with _SiteCollector() as guide_run:
            guide(*args, **kwargs)
        replay = {s["name"]: s["value"] for s in guide_run.sites}
        with _SiteCollector(replay) as model_run:
            model(*args, **kwargs)
        return guide_run.sites, model_run.sites

    def _elbo_particle_sum(self, model, guide, args, kwargs) -> torch.Tensor | None:
        plate = self._particle_plate(args, kwargs, model, guide)
        if plate is None:
            guide_sites, model_sites = self._run(model, guide, args, kwargs)
        else:
            with plate:
                guide_sites, model_sites = self._run(model, guide, args, kwargs)
        guide_names = set()
        for site in guide_sites:
            if not site["is_observed"] and not site["fn"].has_rsample:
                return None  # score-function gradients needed: leave it to Pyro
            guide_names.add(site["name"])
        observed = latent = 0.0
        terms = self.last_terms = {}
        for site in model_sites:
            term = terms[site["name"]] = site_log_prob_sum(site)
            if site["is_observed"]:
                observed = observed + term
            elif site["name"] in guide_names:
                latent = latent + term
            else:
                raise ValueError(
                    f"model latent site {site['name']!r} has no match in the guide; "
                    "sample it in the guide too, or observe it in the model"
                )
        model_names = {s["name"] for s in model_sites}
        for site in guide_sites:
            if site["name"] not in model_names and not site["infer"].get("is_auxiliary"):
                raise ValueError(
                    f"guide site {site['name']!r} is not in the model; rename it to match a "
                    "model latent site or mark it infer={'is_auxiliary': True}"
                )
            term = terms["guide." + site["name"]] = site_log_prob_sum(site)
            latent = latent - term
        return observed + self.beta * latent

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        """Negative ELBO estimate that autograd differentiates; averaged over particles."""
        if self.vectorize_particles or self.num_particles == 1:
            total = self._elbo_particle_sum(model, guide, args, kwargs)
        else:
            parts = [self._elbo_particle_sum(model, guide, args, kwargs) for _ in range(self.num_particles)]
            total = None if any(p is None for p in parts) else sum(parts)
        if total is None:
            if self.beta != 1.0:
                raise ValueError(
                    "beta != 1 needs a reparameterized guide with the 'trace' estimator; "
                    "use a reparameterizable guide or beta=1"
                )
            fallback = pyro.infer.Trace_ELBO(
                num_particles=self.num_particles,
                vectorize_particles=self.vectorize_particles,
                max_plate_nesting=self.max_plate_nesting or float("inf"),
            )
            return fallback.differentiable_loss(model, guide, *args, **kwargs)
        return -total / self.num_particles

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()


class ELBOLoss(nn.Module):
    """``loss = ELBOLoss(...)(x)``: an ``nn.Module`` holding model and guide (torch-native training)."""

    def __init__(self, elbo: Any, model: Callable, guide: Callable) -> None:
        super().__init__()
        self.elbo = elbo
        self.model = model
        self.guide = guide

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)


def _pyro_elbo(cls_name: str):
    def build(num_particles: int = 1, vectorize_particles: bool = True, beta: float = 1.0, **kw):
        if beta != 1.0:
            raise ValueError(f"beta is supported by the 'trace' estimator, not by Pyro's {cls_name}")
        cls = getattr(pyro.infer, cls_name)
        return cls(num_particles=num_particles, vectorize_particles=vectorize_particles, **kw)

    return build


ELBOS: dict[str, Callable[..., Any]] = {
    "trace": TraceELBO,
    "meanfield": _pyro_elbo("TraceMeanField_ELBO"),
    "graph": _pyro_elbo("TraceGraph_ELBO"),
    "enum": _pyro_elbo("TraceEnum_ELBO"),
}


def make_elbo(name: str, **kw: Any):
    """An ELBO estimator by name: ``trace`` (pprogen's lean Trace_ELBO), ``meanfield``, ``graph``, ``enum``.

    Keyword arguments: ``num_particles``, ``vectorize_particles``, ``beta`` and the estimator's own.
    """
    if name not in ELBOS:
        raise unknown_name_error("ELBO estimator", name, ELBOS)
    return ELBOS[name](**kw)
