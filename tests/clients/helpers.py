"""Gradients, statistics and Pyro's own importance weights, shared by the client tests."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn


def guide_parameters(guide: Callable, *args) -> list[torch.Tensor]:
    """Every leaf tensor a guide trains, however it reaches it: module attributes, ``pyro.module``, ``pyro.param``.

    Runs the guide once (autoguides and ``pyro.param`` tables are created on their first call). A bound method's
    object may hold the model's networks too; only those the guide registers count.
    """
    with torch.no_grad(), poutine.trace(param_only=True) as tracer:
        guide(*args)
    store = pyro.get_param_store()
    found = []
    for name in tracer.trace.nodes:
        if name in store:
            found.append(store.get_param(name).unconstrained())
    if isinstance(guide, nn.Module):
        found += list(guide.parameters())
    unique, seen = [], set()
    for tensor in found:
        if id(tensor) not in seen and tensor.requires_grad:
            seen.add(id(tensor))
            unique.append(tensor)
    return unique


def flat_grad(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def paired_z_scores(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """|mean difference| / its standard error per component, from ``(repeats, components)`` samples of two
    estimators (the same seed for both rows); a component with no spread scores 0 when the means agree."""
    diff = (first - second).double()
    mean = diff.mean(0)
    stderr = diff.std(0) / math.sqrt(diff.shape[0])
    agree = mean.abs() <= 1e-7 * (1 + first.abs().mean(0))
    return torch.where(agree, torch.zeros_like(mean), mean.abs() / stderr.clamp_min(1e-30))


@torch.no_grad()
def pyro_log_weights(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int,
                     max_plate_nesting: int = 1) -> torch.Tensor:
    """Joint log importance weights log p(x_1..N, z_k) - log q(z_k) ``(K,)`` from Pyro's own traces (every guide
    site counts, auxiliary ones included, as in Pyro's ELBOs)."""
    with pyro.plate("particles", num_samples, dim=-1 - max_plate_nesting):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    log_w = torch.zeros(num_samples, dtype=x.dtype)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site["infer"].get("_do_not_score"):
                continue
            if site_is_subsample(site):
                continue
            log_prob = site["fn"].log_prob(site["value"])
            log_prob = log_prob.reshape((1,) * (max_plate_nesting + 1 - log_prob.dim()) + log_prob.shape)
            log_w = log_w + sign * log_prob.reshape(log_prob.shape[0], -1).sum(1).to(x.dtype)
    return log_w


def log_mean_exp(log_w: torch.Tensor) -> tuple[float, float]:
    """``(log mean exp, delta-method standard error)`` of log weights ``(K,)``."""
    num = log_w.shape[0]
    log_mean = (torch.logsumexp(log_w, 0) - math.log(num)).item()
    w = (log_w - log_w.max()).exp()
    ess = (w.sum() ** 2 / (w**2).sum()).item()
    return log_mean, math.sqrt(max(1 / ess - 1 / num, 0.0))


def recording_states(guide: Callable, states: list) -> Callable:
    """The guide, noting torch's random state at each call: a step's draws start there, so replaying the last
    states into Pyro's ``SVI.step`` gives it the draws ``fit`` had (whatever ``fit`` drew before its steps)."""

    def recorded(*args, **kwargs):
        states.append(torch.get_rng_state())
        return guide(*args, **kwargs)

    return recorded
