"""Lean tracing shared by the estimators and the evidence: site collection, particle plates, per-datum sums.

Pyro's ``Trace`` records everything a program does and is then pruned and copied; the estimators here
need only the sample sites, so one small effect handler records them as the program runs.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable

import pyro
import torch
from pyro.nn import PyroModule
from pyro.poutine.messenger import Messenger
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.util import site_is_subsample

PARTICLES = "num_particles_vectorized"


class SiteCollector(Messenger):
    """Collects a program's sample sites; optionally replays latent values (e.g. from a guide)."""

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


class LocalParticlePlate(PlateMessenger):
    """A particle plate that applies only to sites inside the ``data`` plate.

    Local latents get ``size`` draws per data point while global latents are drawn once and shared by
    all particles: the construction under which per-datum importance-weighted bounds stay valid.
    """

    def __init__(self, size: int, dim: int, data_plate: str = "data") -> None:
        super().__init__(PARTICLES, size, dim=dim)
        self.data_plate = data_plate

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and in_plate(msg, self.data_plate):
            super()._process_message(msg)


class scale_latents(Messenger):
    """Multiplies the log-density of every unobserved sample site by ``beta`` (the KL weight)."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = msg["scale"] * self.beta


class detach_params(Messenger):
    """Detaches the values that ``pyro.param`` returns (for guides written with ``pyro.param``)."""

    def _pyro_post_param(self, msg: dict) -> None:
        msg["value"] = msg["value"].detach()


def in_plate(site: dict, plate_name: str) -> bool:
    return any(f.name == plate_name for f in site["cond_indep_stack"])


def masked_log_prob(site: dict) -> torch.Tensor:
    log_prob = site["fn"].log_prob(site["value"])
    return log_prob * site["mask"] if site["mask"] is not None else log_prob


def site_log_prob_sum(site: dict) -> torch.Tensor:
    """The scaled, masked log-density of one recorded site, summed."""
    total = masked_log_prob(site).sum()
    scale = site["scale"]
    return total if isinstance(scale, float) and scale == 1.0 else total * scale


def per_datum(log_prob: torch.Tensor, particle_dim: int, data_dim: int, num_dims: int) -> torch.Tensor:
    """Sum a site's log-density over every batch dim but the particle and data dims -> ``(K|1, B|1)``."""
    if log_prob.dim() < num_dims:
        log_prob = log_prob.reshape((1,) * (num_dims - log_prob.dim()) + log_prob.shape)
    keep = {log_prob.dim() + particle_dim, log_prob.dim() + data_dim}
    other = [d for d in range(log_prob.dim()) if d not in keep]
    if other:
        log_prob = log_prob.sum(other)
    return log_prob.reshape(log_prob.shape[0], -1)


_DIRECT: "weakref.WeakKeyDictionary[Callable, bool]" = weakref.WeakKeyDictionary()


def direct_call(fn: Callable) -> Callable:
    """:func:`_direct_call`, decided once per module (register hooks before its first call)."""
    if not isinstance(fn, PyroModule):
        return fn
    direct = _DIRECT.get(fn)
    if direct is None:
        direct = _DIRECT[fn] = _direct_call(fn) is not fn
    return fn.forward if direct else fn


def _direct_call(fn: Callable) -> Callable:
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


def run_pair(model: Callable, guide: Callable, args, kwargs, replay_transform=None):
    """Run the guide, then the model on the guide's latent values; returns both site lists.

    ``model`` and ``guide`` are called as given: pass them through ``direct_call`` first to skip
    PyroModule's parameter announcements.
    """
    with SiteCollector() as guide_run:
        guide(*args, **kwargs)
    replay = {s["name"]: s["value"] for s in guide_run.sites}
    if replay_transform is not None:
        replay = replay_transform(replay)
    with SiteCollector(replay) as model_run:
        model(*args, **kwargs)
    return guide_run.sites, model_run.sites, replay


def detached_guide_sites(guide: Callable, replay: dict[str, torch.Tensor], args, kwargs) -> list[dict]:
    """Re-run ``guide`` on ``replay`` values with its parameters cut from the graph (for path derivatives)."""
    with SiteCollector(replay) as run, detach_params():
        if isinstance(guide, torch.nn.Module):
            params = {name: p.detach() for name, p in guide.named_parameters()}
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not registered in the param store")
                torch.func.functional_call(guide, params, args, kwargs)
        else:
            guide(*args, **kwargs)
    return run.sites


def probe_sites(model: Callable, guide: Callable | None, args, kwargs) -> tuple[list[dict], list[dict]]:
    """Guide and model sites from one run without gradients; the random generators are left as found."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        if guide is None:
            with SiteCollector() as model_run:
                direct_call(model)(*args, **kwargs)
            return [], model_run.sites
        guide_sites, model_sites, _ = run_pair(direct_call(model), direct_call(guide), args, kwargs)
        return guide_sites, model_sites


def plate_nesting(sites: list[dict]) -> int:
    """How many plate dimensions the sites use (0 when none)."""
    return max((-f.dim for s in sites for f in s["cond_indep_stack"] if f.vectorized), default=0)


def guess_max_plate_nesting(model: Callable, guide: Callable | None, args, kwargs) -> int:
    """How many plate dimensions the program uses, found by running it once (see :func:`probe_sites`)."""
    guide_sites, model_sites = probe_sites(model, guide, args, kwargs)
    return plate_nesting(guide_sites + model_sites)


def check_reparameterized(sites: list[dict], estimator: str) -> None:
    for site in sites:
        if not site["is_observed"] and not site["fn"].has_rsample:
            raise ValueError(
                f"the {estimator!r} estimator needs reparameterized latents, but guide site "
                f"{site['name']!r} ({type(site['fn']).__name__}) has no rsample; use elbo 'trace' or 'graph'"
            )


def check_sites_match(guide_sites: list[dict], model_sites: list[dict]) -> None:
    guide_names = {s["name"] for s in guide_sites}
    model_names = {s["name"] for s in model_sites}
    for site in model_sites:
        if not site["is_observed"] and site["name"] not in guide_names:
            raise ValueError(
                f"model latent site {site['name']!r} has no match in the guide; "
                "sample it in the guide too, or observe it in the model"
            )
    for site in guide_sites:
        if site["name"] not in model_names and not site["infer"].get("is_auxiliary"):
            raise ValueError(
                f"guide site {site['name']!r} is not in the model; rename it to match a "
                "model latent site or mark it infer={'is_auxiliary': True}"
            )


def particle_plate(size: int, nesting: int) -> pyro.plate:
    return pyro.plate(PARTICLES, size, dim=-1 - nesting)
