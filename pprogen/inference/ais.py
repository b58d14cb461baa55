r"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for any Pyro program, per datum.

AIS (Neal 2001) moves C chains per data point through the intermediate densities

.. math::

    f_t(z) = q(z \mid x)^{1 - \beta_t}\, p(x, z)^{\beta_t}, \qquad 0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

from the guide :math:`q` (the prior when ``guide=None``) to the unnormalized posterior, one HMC transition
leaving :math:`f_t` invariant per step, and weighs each chain by

.. math::

    \log w = \sum_{t=1}^{T} (\beta_t - \beta_{t-1}) \bigl[\log p(x, z_{t-1}) - \log q(z_{t-1} \mid x)\bigr],

so that :math:`\mathbb{E}[w] = p(x)`: :math:`\log \frac{1}{C}\sum_c w_c` is a stochastic lower bound on
:math:`\log p(x)` whose gap shrinks as T grows. Run backwards from an exact posterior sample, the same
chain gives :math:`\mathbb{E}[w^{\mathrm{rev}}] = 1 / p(x)` and so a stochastic *upper* bound; BDMC
(Grosse, Ghahramani & Adams 2015) simulates data from the model, where the latents that made each data
point are an exact posterior sample, and reports both bounds: their gap bounds how far the forward chain
is from the truth on data like these.

The log-densities come from the Pyro program itself: the model is replayed at the chains' latents (the
guide's or the prior's sites), constrained latents move in unconstrained space through ``biject_to`` (the
Jacobian enters both densities and cancels in the weights), discrete latents marked
``infer={"enumerate": "parallel"}`` in the model and absent from the guide are summed out exactly at each
step, and chains and data points share one batch (the chains in a ``pyro.plate``). HMC uses an identity
mass matrix, ``leapfrog_steps`` steps, and one step size per data point, shared by its C chains, multiplied
by 1.02 after a transition whose mean acceptance probability over those chains exceeds ``target_accept``
and by 0.98 otherwise (Wu et al.'s scheme). A step size adapted on each chain's own last acceptance makes
the next transition depend on the state it starts from, which breaks its invariance: on a PPCA model with
T = 1000 that estimate came out 0.14 +- 0.03 nats *above* the exact log p(x), against -0.003 +- 0.025 with
the shared step size. A transition whose energy error is not finite or exceeds 1000 is a divergence: it is rejected and
counted. A latent outside the per-datum plate makes the estimate joint (one row, with a warning), as in
:func:`~pprogen.inference.log_marginal`.

References: Neal, Annealed Importance Sampling, 2001, arXiv:physics/9803008; Grosse, Ghahramani & Adams,
Sandwiching the marginal likelihood using bidirectional Monte Carlo, 2015, arXiv:1511.02543; Wu, Burda,
Salakhutdinov & Grosse, On the Quantitative Analysis of Decoder-Based Generative Models, 2017,
arXiv:1611.04273.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pyro
import torch
from torch.distributions import biject_to
from torch.distributions.transforms import IndependentTransform, identity_transform

from pprogen.inference.checks import check_condition
from pprogen.inference.marginal import (
    Evidence,
    _chunk,
    _contract,
    _enumerated,
    _per_particle,
    _Plan,
    _reduce,
    _streaming_stats,
    _structure,
)
from pprogen.inference.memory import PeakBytes
from pprogen.inference.tracing import (
    PARTICLES,
    SiteCollector,
    direct_call,
    fix_subsample,
    masked_log_prob,
    per_datum,
    sandbox,
)

SCHEDULES = ("linear", "geometric", "sigmoid")
DIVERGENCE = 1000.0  # an energy error above this (nats) is a divergence
ADAPT_UP, ADAPT_DOWN = 1.02, 0.98


def annealing_schedule(schedule: str | Sequence[float] | torch.Tensor, num_steps: int) -> torch.Tensor:
    r"""The T + 1 inverse temperatures :math:`\beta_0 = 0, \dots, \beta_T = 1` (float64).

    ``"linear"`` spaces them evenly; ``"geometric"`` spaces :math:`\beta_1 .. \beta_T` evenly in log from
    :math:`10^{-4}` to 1; ``"sigmoid"`` (Grosse et al. 2015) is :math:`\sigma(4 (2t/T - 1))` rescaled to run
    from 0 to 1. A sequence is taken as given: it must start at 0, end at 1 and never decrease."""
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer (T >= 1), got {num_steps!r}")
    if not isinstance(schedule, str):
        betas = torch.as_tensor(schedule, dtype=torch.float64).flatten()
        if betas.numel() != num_steps + 1:
            raise ValueError(f"the schedule has {betas.numel()} values but num_steps={num_steps} needs "
                             f"{num_steps + 1} (beta_0 = 0 .. beta_T = 1); pass num_steps={betas.numel() - 1}")
        if betas[0] != 0 or betas[-1] != 1 or bool((betas.diff() < 0).any()) or not bool(betas.isfinite().all()):
            raise ValueError("an annealing schedule must start at 0, end at 1 and never decrease; got "
                             f"{betas[0].item():g} .. {betas[-1].item():g}")
        return betas
    if schedule == "linear":
        return torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    if schedule == "geometric":
        return torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-4, 0, num_steps, dtype=torch.float64)]) \
            if num_steps > 1 else torch.tensor([0.0, 1.0], dtype=torch.float64)
    if schedule == "sigmoid":
        s = torch.sigmoid(4 * (2 * torch.arange(num_steps + 1, dtype=torch.float64) / num_steps - 1))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"unknown annealing schedule {schedule!r}; choose {', '.join(SCHEDULES)} or pass the betas")


@dataclass
class AnnealedEvidence(Evidence):
    """:class:`~pprogen.inference.Evidence` from annealed chains (``num_samples`` is the number of chains),
    with the chains' HMC diagnostics per datum: mean acceptance probability, divergences, final step size.

    ``method`` is ``"ais"`` (a stochastic lower bound on log p(x)) or ``"reverse ais"`` (an upper bound,
    from chains started at exact posterior samples)."""

    method: str = "ais"
    num_steps: int = 0
    schedule: str = "sigmoid"
    leapfrog_steps: int = 0
    accept_rate: torch.Tensor | None = field(default=None, repr=False)
    divergences: torch.Tensor | None = field(default=None, repr=False)
    step_size: torch.Tensor | None = field(default=None, repr=False)

    def summary(self) -> dict:
        out = super().summary()
        out.update({
            "method": self.method,
            "num_chains": self.num_samples,
            "num_steps": self.num_steps,
            "schedule": self.schedule,
            "leapfrog_steps": self.leapfrog_steps,
            "mean_accept_rate": self.accept_rate.double().mean().item(),
            "divergences": int(self.divergences.sum()),
            "mean_step_size": self.step_size.double().mean().item(),
        })
        return out

    def to_inference_data(self):
        data = super().to_inference_data()
        stats = data.sample_stats
        for name in ("accept_rate", "divergences", "step_size"):
            stats[name] = (stats["stderr"].dims, getattr(self, name).numpy()[None, None])
        return data


@dataclass
class Sandwich:
    """BDMC's result on simulated data: ``lower`` (forward AIS) and ``upper`` (reverse AIS) bound each
    simulated datum's log p(x); ``gap`` is their difference, the forward chain's error bound there."""

    data: torch.Tensor
    lower: AnnealedEvidence
    upper: AnnealedEvidence
    condition: dict = field(default_factory=dict, repr=False)

    @property
    def gap(self) -> torch.Tensor:
        return self.upper.log_prob - self.lower.log_prob

    def summary(self) -> dict:
        gap = self.gap.double()
        n = gap.numel()
        return {
            "method": "bdmc",
            "num_data": n,
            "num_chains": self.lower.num_samples,
            "num_steps": self.lower.num_steps,
            "schedule": self.lower.schedule,
            "leapfrog_steps": self.lower.leapfrog_steps,
            "lower_log_prob": self.lower.log_prob.double().mean().item(),
            "upper_log_prob": self.upper.log_prob.double().mean().item(),
            "gap": gap.mean().item(),
            "gap_stderr": gap.std().item() / math.sqrt(n) if n > 1 else float("nan"),
            "gap_max": gap.max().item(),
            "joint": self.lower.joint,
            "divergences": int(self.lower.divergences.sum() + self.upper.divergences.sum()),
            "mean_accept_rate": 0.5 * (self.lower.accept_rate.double().mean() + self.upper.accept_rate.double().mean()).item(),
        }

    def to_inference_data(self):
        """ArviZ ``InferenceData``: the lower bounds as ``log_likelihood``, both bounds and the gap as
        ``sample_stats``."""
        data = self.lower.to_inference_data()
        dims = data.sample_stats["stderr"].dims
        for name, value in (("lower", self.lower.log_prob), ("upper", self.upper.log_prob), ("gap", self.gap)):
            data.sample_stats[name] = (dims, value.numpy()[None, None])
        return data


def _is_identity(transform) -> bool:
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return transform == identity_transform


class _Latent:
    """One annealed site's layout: how to move it to unconstrained space, and how to fold a per-element
    tensor of its shape to ``(chains, rows)`` and back."""

    def __init__(self, site: dict, plan: _Plan, unconstrained: torch.Tensor, transform) -> None:
        self.name = site["name"]
        self.transform = transform
        self.identity = _is_identity(self.transform)
        self.batch_dims = site["value"].dim() - len(site["fn"].event_shape)
        self.particle_dim = -1 - plan.nesting
        frame = next((f for f in site["cond_indep_stack"] if f.name == plan.plate_name), None)
        self.data_dim = None if plan.joint or frame is None else frame.dim
        self.nesting = plan.nesting
        self.event_dims = unconstrained.dim() - self.batch_dims

    def reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor shaped like the unconstrained value (or its batch) to ``(C, B)`` (``(C, 1)`` joint)."""
        if t.dim() > self.batch_dims:
            t = t.flatten(self.batch_dims).sum(-1)
        if self.data_dim is None:
            return _per_particle(t, self.particle_dim, self.nesting)
        return per_datum(t, self.particle_dim, self.data_dim, self.nesting + 1)

    def expand(self, e: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A ``(C, B)`` (or ``(C, 1)``) tensor laid out to broadcast against ``like``."""
        shape = [1] * like.dim()
        shape[self.batch_dims + self.particle_dim] = e.shape[0]
        if self.data_dim is not None:
            shape[self.batch_dims + self.data_dim] = e.shape[1]
        return e.reshape(shape)


def _grad(out, inputs: list[torch.Tensor], retain_graph: bool = False) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``out.sum()``; None for inputs it does not depend on (the caller refuses those)."""
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return (None,) * len(inputs)
    return torch.autograd.grad(out.sum(), inputs, retain_graph=retain_graph, allow_unused=True)


class _Chains:
    """C annealed chains for one chunk of rows: the log-densities of the program at given latents, with
    their gradients, and the HMC transition."""

    def __init__(self, model, guide, x, kw, indices, plan: _Plan, num_chains: int, leapfrog_steps: int,
                 target_accept: float, adapt: bool) -> None:
        self.model, self.guide = direct_call(model), (direct_call(guide) if guide is not None else None)
        self.x, self.kw, self.indices, self.plan = x, kw, indices, plan
        self.num_chains, self.leapfrog_steps = num_chains, leapfrog_steps
        self.target_accept, self.adapt = target_accept, adapt
        self.particle_dim = -1 - plan.nesting
        self.latents: dict[str, _Latent] = {}
        self.cached_guide: list[dict] | None = None
        self.enumerates = False

    @contextlib.contextmanager
    def _frame(self):
        with contextlib.ExitStack() as stack:
            stack.enter_context(pyro.plate(PARTICLES, self.num_chains, dim=self.particle_dim))
            if self.indices is not None:
                stack.enter_context(fix_subsample(self.plan.plate_name, self.indices))
            yield

    # ---- set-up: the initial draw, which sites move, whether the guide can be cached ----

    def initial(self, start: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Unconstrained initial states: ``start`` (exact posterior draws) or draws from the guide / prior."""
        with torch.no_grad(), self._frame():
            if self.guide is not None:
                with SiteCollector() as guide_run:
                    self.guide(self.x, **self.kw)
                proposal = guide_run.sites
            else:
                proposal = None
            with SiteCollector() as model_run:
                self.model(self.x, **self.kw)
        model_sites = model_run.sites
        self.enumerates = any(_enumerated(s) for s in model_sites)
        names = self._check_sites(proposal, model_sites)
        sites = {s["name"]: s for s in (proposal if proposal is not None else model_sites)}
        supports = {s["name"]: s["fn"].support for s in model_sites}  # the target's support, not the guide's
        state = {}
        for name in names:
            site = sites[name]
            value = site["value"] if start is None else start[name]
            transform = biject_to(supports[name])
            unconstrained = transform.inv(value)
            self.latents[name] = _Latent(site, self.plan, unconstrained, transform)
            state[name] = unconstrained.detach()
        if self.guide is not None:
            self._cache_guide(state)
        return state

    def _check_sites(self, guide_sites: list[dict] | None, model_sites: list[dict]) -> list[str]:
        model_names = {s["name"] for s in model_sites}
        if guide_sites is None:
            moving = [s for s in model_sites if not s["is_observed"] and not _enumerated(s)]
        else:
            for site in guide_sites:
                if site["name"] not in model_names:
                    raise ValueError(
                        f"guide site {site['name']!r} is not in the model (an auxiliary site, as autoguides such as "
                        "AutoDiagonalNormal sample): AIS needs q(z | x) at any z; use a guide that samples the model's "
                        "latents directly (AutoNormal, amortized_normal) or guide=None (the prior)"
                    )
            moving = [s for s in guide_sites if not s["is_observed"]]
            guided = {s["name"] for s in moving}
            for site in model_sites:
                if not site["is_observed"] and not _enumerated(site) and site["name"] not in guided:
                    raise ValueError(
                        f"model latent site {site['name']!r} has no match in the guide: sample it in the guide, or "
                        "mark it infer={'enumerate': 'parallel'} in the model to sum it out"
                    )
        for site in moving:
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"latent site {site['name']!r} is discrete ({type(site['fn']).__name__}); AIS moves continuous "
                    "latents by HMC: mark it infer={'enumerate': 'parallel'} in the model and leave it out of the "
                    "guide, so that it is summed out exactly"
                )
        if not moving:
            raise ValueError(
                "the model has no continuous latent to anneal (it is fully observed, or every latent is enumerated): "
                "its log p(x) is exact; use log_marginal, or the model's log_prob"
            )
        return [s["name"] for s in moving]

    def _cache_guide(self, state: dict[str, torch.Tensor]) -> None:
        """Keep the guide's distributions when none depends on another site's value (a mean-field or amortized
        guide): log q(z | x) is then evaluated at new z without running the guide again."""
        with torch.enable_grad():
            leaves = {n: self._constrain(n, u.clone().requires_grad_(True))[0] for n, u in state.items()}
            with self._frame(), SiteCollector(leaves) as run:
                self.guide(self.x, **self.kw)
            inputs = [leaves[s["name"]] for s in run.sites]
            for site in run.sites:
                others = [v for v in inputs if v is not site["value"]]
                if not others:
                    continue
                log_q = site["fn"].log_prob(site["value"].detach()).sum()
                if not log_q.requires_grad:
                    continue
                grads = torch.autograd.grad(log_q, others, allow_unused=True, retain_graph=True)
                if any(g is not None for g in grads):
                    return  # q of one site depends on another's value: run the guide at each step
        with torch.no_grad(), self._frame(), SiteCollector({n: self._constrain(n, u)[0] for n, u in state.items()}) as run:
            self.guide(self.x, **self.kw)
        self.cached_guide = run.sites

    def _constrain(self, name: str, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        latent = self.latents[name]
        if latent.identity:
            return u, 0.0
        z = latent.transform(u)
        return z, latent.reduce(latent.transform.log_abs_det_jacobian(u, z))

    # ---- the densities and their gradients ----

    def evaluate(self, state: dict[str, torch.Tensor]):
        """``(log q, log p, grad log q, grad log p)`` at unconstrained ``state``: log q(z | x) and log p(x, z)
        per chain and row, each with the Jacobian of the map to unconstrained space, gradients by site."""
        plan = self.plan
        with torch.enable_grad():
            leaves = {n: u.detach().requires_grad_(True) for n, u in state.items()}
            values, log_det = {}, 0.0
            for name, u in leaves.items():
                values[name], jac = self._constrain(name, u)
                log_det = log_det + jac
            with self._frame(), SiteCollector(values) as model_run, (
                    pyro.poutine.enum(first_available_dim=self.particle_dim - 1) if self.enumerates
                    else contextlib.nullcontext()):
                self.model(self.x, **self.kw)
            args = (self.particle_dim, plan.nesting, plan.plate_name, plan.joint)
            log_p = _contract(model_run.sites, *args) + log_det
            if self.guide is None:
                log_q = _contract([s for s in model_run.sites if not s["is_observed"]], *args) + log_det
            else:
                sites = self.cached_guide
                if sites is None:
                    with self._frame(), SiteCollector(values) as guide_run:
                        self.guide(self.x, **self.kw)
                    sites = guide_run.sites
                else:
                    sites = [{**s, "value": values[s["name"]]} for s in sites]
                log_q = log_det
                for site in sites:
                    log_q = log_q + _reduce(masked_log_prob(site), site, *args)
            inputs = list(leaves.values())
            grad_q = _grad(log_q, inputs, retain_graph=True)
            grad_p = _grad(log_p, inputs)
        zero = torch.zeros(())
        grad_q = {n: g if g is not None else zero for n, g in zip(leaves, grad_q)}
        grad_p = {n: g if g is not None else zero for n, g in zip(leaves, grad_p)}
        return log_q.detach(), log_p.detach(), grad_q, grad_p

    def check_differentiable(self, point) -> None:
        _, log_p, _, grad_p = point
        for name in self.latents:
            g = grad_p[name]
            if g.dim() == 0 or not bool(torch.isfinite(g).any()):
                raise ValueError(
                    f"the model's log-density has no usable gradient in latent site {name!r} (it is not "
                    "differentiable in the site's value, or not finite at the initial draw); AIS moves latents by "
                    "HMC: write the model with differentiable operations of the latent"
                )

    def kinetic(self, momentum: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for name, p in momentum.items():
            total = total + self.latents[name].reduce(p * p)
        return 0.5 * total

    def transition(self, point, beta: float, step_size: torch.Tensor):
        """One HMC step leaving f_beta invariant; returns the new point, acceptance probabilities and
        divergences ``(C, B)``."""
        state, (log_q, log_p, grad_q, grad_p) = point[0], point[1:]

        def gradient(gq, gp):
            return {n: (1 - beta) * gq[n] + beta * gp[n] for n in state}

        eps = {n: self.latents[n].expand(step_size, u) for n, u in state.items()}
        momentum = {n: torch.randn_like(u) for n, u in state.items()}
        energy = -((1 - beta) * log_q + beta * log_p) + self.kinetic(momentum)
        grad = gradient(grad_q, grad_p)
        position = dict(state)
        p = {n: momentum[n] + 0.5 * eps[n] * grad[n] for n in state}
        for step in range(self.leapfrog_steps):
            position = {n: position[n] + eps[n] * p[n] for n in state}
            new = self.evaluate(position)
            grad = gradient(new[2], new[3])
            last = step == self.leapfrog_steps - 1
            p = {n: p[n] + (0.5 if last else 1.0) * eps[n] * grad[n] for n in state}
        new_energy = -((1 - beta) * new[0] + beta * new[1]) + self.kinetic(p)
        delta = new_energy - energy
        divergent = ~torch.isfinite(delta) | (delta > DIVERGENCE)
        accept_prob = torch.where(divergent, torch.zeros_like(delta), torch.exp(torch.clamp(-delta, max=0.0)))
        accept = torch.rand_like(accept_prob) < accept_prob

        def pick(a, b):
            return {n: torch.where(self.latents[n].expand(accept, a[n]), a[n], b[n]) if torch.is_tensor(a[n]) and a[n].dim()
                    else b[n] for n in state}

        chosen = (pick(position, state), torch.where(accept, new[0], log_q), torch.where(accept, new[1], log_p),
                  pick(new[2], grad_q), pick(new[3], grad_p))
        return chosen, accept_prob, divergent

    def run(self, start, betas: torch.Tensor, step_size: float, check: bool = True):
        """Anneal along ``betas`` from ``start`` (unconstrained states); returns the log weights ``(C, B)``
        (float64) and the diagnostics."""
        point = (start, *self.evaluate(start))
        if check:
            self.check_differentiable(point[1:])
        log_p = point[2]
        eps = torch.full(log_p.shape, float(step_size), dtype=log_p.dtype, device=log_p.device)
        log_w = torch.zeros(log_p.shape, dtype=torch.float64, device=log_p.device)
        accept_sum = torch.zeros_like(log_w)
        divergences = torch.zeros(log_p.shape, dtype=torch.long, device=log_p.device)
        steps = betas.shape[0] - 1
        for t in range(1, steps + 1):
            log_w += (betas[t] - betas[t - 1]).item() * (point[2].double() - point[1].double())
            if t == steps:
                break
            point, accept_prob, divergent = self.transition(point, betas[t].item(), eps)
            accept_sum += accept_prob
            divergences += divergent.long()
            if self.adapt:
                rate = accept_prob.mean(0, keepdim=True)  # one step size per row, from all its chains
                eps = eps * torch.where(rate > self.target_accept, ADAPT_UP, ADAPT_DOWN).to(eps.dtype)
        transitions = max(1, steps - 1)
        return log_w, accept_sum / transitions, divergences, eps


def _check_settings(num_chains, leapfrog_steps, step_size, target_accept) -> None:
    if not isinstance(num_chains, int) or isinstance(num_chains, bool) or num_chains < 1:
        raise ValueError(f"num_chains must be a positive integer (C >= 1), got {num_chains!r}")
    if not isinstance(leapfrog_steps, int) or leapfrog_steps < 1:
        raise ValueError(f"leapfrog_steps must be a positive integer, got {leapfrog_steps!r}")
    if not (isinstance(step_size, (int, float)) and step_size > 0 and math.isfinite(step_size)):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept!r}")


def _chunk_rows(model, guide, data, condition, plan: _Plan, num_chains, max_memory: int) -> int:
    """Rows per chunk so that one evaluation's tensors (measured on a probe of a few rows) stay under
    ``max_memory`` bytes; a program that must see fixed rows gets exactly those."""
    if not isinstance(max_memory, int) or max_memory < 1:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    if plan.fixed_rows:
        return plan.batch_size
    rows = min(plan.batch_size, 4)
    x, kw, indices = _chunk(data, condition, plan, 0, rows)
    chains = _Chains(model, guide, x, kw, indices, plan, num_chains, 1, 0.65, False)
    devices = [data.device.index or 0] if data.device.type == "cuda" else []
    with sandbox(model, guide) as (model_copy, guide_copy), torch.random.fork_rng(devices=devices):
        chains.model = direct_call(model_copy)
        chains.guide = direct_call(guide_copy) if guide_copy is not None else None
        start = chains.initial(None)
        with PeakBytes() as meter:
            chains.evaluate(start)
    per_row = 2 * max(1.0, meter.peak / rows)  # one evaluation's graph, plus the states, momenta and gradients
    return max(1, min(plan.batch_size, int(max_memory / per_row)))


def _anneal(model, guide, data, condition, plan: _Plan, betas, num_chains, leapfrog_steps, step_size,
            target_accept, adapt, max_memory, start: Callable | None, reverse: bool, keep_weights: bool,
            dim, schedule_name: str) -> AnnealedEvidence:
    rows_per_chunk = _chunk_rows(model, guide, data, condition, plan, num_chains, max_memory)
    if reverse:
        betas = betas.flip(0)
    n = data.shape[0]
    results, accept, divergences, step_sizes = [], [], [], []
    for begin in range(0, n, rows_per_chunk):
        stop = min(begin + rows_per_chunk, n)
        x, kw, indices = _chunk(data, condition, plan, begin, stop)
        chains = _Chains(model, guide, x, kw, indices, plan, num_chains, leapfrog_steps, target_accept, adapt)
        state = chains.initial(start(begin, stop, num_chains) if start is not None else None)  # checks the sites
        if plan.joint and not reverse and begin == 0:
            warnings.warn(
                f"site {plan.global_sites[0]!r} sits outside the {plan.plate_name!r} plate, so log p(x) does not "
                "split per data point; returning the joint estimate of log p(x_1..N) as one row",
                stacklevel=3,
            )
        log_w, accept_prob, divergent, eps = chains.run(state, betas, step_size, check=begin == 0)
        keep = 1 if plan.joint else stop - begin
        # forward chains: E[w] = p(x); reverse chains: E[w] = 1 / p(x), so log p = -log mean w
        stats = _streaming_stats([log_w[:, :keep].T.cpu()], num_chains, keep=keep_weights)
        log_prob = -stats[0] if reverse else stats[0]
        results.append((log_prob, stats[1], stats[2], stats[3]))
        accept.append(accept_prob[:, :keep].mean(0).cpu())
        divergences.append(divergent[:, :keep].sum(0).cpu())
        step_sizes.append(eps[:, :keep].double().mean(0).cpu())
    log_prob, stderr, ess, weights = (torch.cat(t) if t[0] is not None else None for t in zip(*results))
    return AnnealedEvidence(
        log_prob.float(), stderr.float(), ess.float(), None, num_chains, dim, plan.joint,
        weights.float() if keep_weights else None, method="reverse ais" if reverse else "ais",
        num_steps=betas.shape[0] - 1, schedule=schedule_name, leapfrog_steps=leapfrog_steps,
        accept_rate=torch.cat(accept).float(), divergences=torch.cat(divergences), step_size=torch.cat(step_sizes).float(),
    )


def _prepare(model, guide, data, condition, plate_name, batch_size, num_steps, num_chains, schedule,
             leapfrog_steps, step_size, target_accept):
    if not isinstance(data, torch.Tensor) or data.dim() == 0 or data.shape[0] == 0:
        raise ValueError("data must be a non-empty tensor (N, ...): nothing to evaluate")
    _check_settings(num_chains, leapfrog_steps, step_size, target_accept)
    betas = annealing_schedule(schedule, num_steps)
    condition = check_condition(condition, data, "data")
    plan = _structure(model, guide, data, condition, plate_name, batch_size)
    name = schedule if isinstance(schedule, str) else "custom"
    return betas, condition, plan, name


def ais(
    model: Callable,
    guide: Callable | None,
    data: torch.Tensor,
    num_steps: int = 1000,
    num_chains: int = 16,
    schedule: str | Sequence[float] = "sigmoid",
    leapfrog_steps: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    adapt_step_size: bool = True,
    batch_size: int = 100,
    max_memory: int = 2**30,
    plate_name: str | None = None,
    dim: int | None = None,
    keep_weights: bool = False,
    condition: dict[str, torch.Tensor] | None = None,
) -> AnnealedEvidence:
    """Annealed importance sampling estimate of log p(x) for each row of ``data``; see the module docstring.

    ``num_steps`` (T) intermediate distributions on the ``schedule`` (``"linear"``, ``"geometric"``,
    ``"sigmoid"`` or a sequence of T + 1 betas), ``num_chains`` (C) chains per row started from the guide
    (the prior when ``guide=None``), ``leapfrog_steps`` per HMC transition with a ``step_size`` per row,
    shared by its chains, adapted towards ``target_accept``. Rows are taken ``batch_size`` at a time (fewer when one evaluation's
    tensors for C chains would pass ``max_memory`` bytes). ``plate_name``, ``dim``, ``condition`` and
    ``keep_weights`` are as in :func:`~pprogen.inference.log_marginal`; ``stderr`` and ``ess`` come from the
    C chain weights. The estimate is a stochastic lower bound: its expectation lies below log p(x) unless
    the chains are long enough.
    """
    betas, condition, plan, name = _prepare(model, guide, data, condition, plate_name, batch_size, num_steps,
                                            num_chains, schedule, leapfrog_steps, step_size, target_accept)
    with pyro.validation_enabled(False):
        return _anneal(model, guide, data, condition, plan, betas, num_chains, leapfrog_steps, step_size,
                       target_accept, adapt_step_size, max_memory, None, False, keep_weights, dim, name)


def bdmc(
    model: Callable,
    guide: Callable | None,
    data: torch.Tensor,
    num_steps: int = 1000,
    num_chains: int = 16,
    schedule: str | Sequence[float] = "sigmoid",
    leapfrog_steps: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    adapt_step_size: bool = True,
    batch_size: int = 100,
    max_memory: int = 2**30,
    plate_name: str | None = None,
    dim: int | None = None,
    condition: dict[str, torch.Tensor] | None = None,
) -> Sandwich:
    """Bidirectional Monte Carlo: simulate one data set shaped like ``data`` from the model (its latents and
    its observed site sampled; ``condition`` kept as given), then bound each simulated row's log p(x) from
    below by forward AIS and from above by reverse AIS started at the latents that made it. The settings are
    those of :func:`ais`; the returned :class:`Sandwich` holds the simulated data and both bounds.

    The program must observe the data at one sample site whose value is the data it is handed (reshaped
    at most), and must not subsample its per-datum plate.
    """
    betas, condition, plan, name = _prepare(model, guide, data, condition, plate_name, batch_size, num_steps,
                                            num_chains, schedule, leapfrog_steps, step_size, target_accept)
    if plan.subsampled:
        raise ValueError(
            f"plate {plan.plate_name!r} subsamples itself, and BDMC simulates a whole data set in one draw; run "
            f"bdmc on the program with pyro.plate({plan.plate_name!r}, len(x)) (no subsample_size)"
        )
    simulated, latents = _simulate(model, data, condition, plan)
    start = _exact_start(latents, plan)
    with pyro.validation_enabled(False):
        lower = _anneal(model, guide, simulated, condition, plan, betas, num_chains, leapfrog_steps, step_size,
                        target_accept, adapt_step_size, max_memory, None, False, False, dim, name)
        upper = _anneal(model, guide, simulated, condition, plan, betas, num_chains, leapfrog_steps, step_size,
                        target_accept, adapt_step_size, max_memory, start, True, False, dim, name)
    return Sandwich(simulated, lower, upper, condition)


@torch.no_grad()
def _simulate(model, data, condition, plan: _Plan):
    """One draw of (latents, data) from the model, shaped like ``data``: its observed site sampled."""
    program = direct_call(model)
    with SiteCollector() as probe:
        program(data, **condition)
    observed = [s for s in probe.sites if s["is_observed"]]
    if len(observed) != 1:
        names = ", ".join(repr(s["name"]) for s in observed) or "none"
        raise ValueError(f"BDMC simulates data from a program that observes the data at one sample site; this one "
                         f"observes {names}: pass the other observations as condition=, or evaluate with ais")
    site = observed[0]
    if site["value"].numel() != data.numel() or not torch.equal(site["value"].reshape(data.shape).to(data.dtype), data):
        raise ValueError(f"the model observes something other than the data it is handed at site {site['name']!r}; "
                         "BDMC needs the observed value to be the data (reshaped at most) to simulate new data")
    with pyro.poutine.uncondition(), SiteCollector() as run:
        program(data, **condition)
    sampled = {s["name"]: s for s in run.sites}
    drawn = sampled[site["name"]]["value"]
    if drawn.numel() != data.numel():
        raise ValueError(f"site {site['name']!r} samples shape {tuple(drawn.shape)} but observes data of shape "
                         f"{tuple(data.shape)} (its distribution broadcasts against obs=); give the distribution the "
                         "data's full shape (e.g. .expand(...)) so BDMC can simulate data from it")
    simulated = drawn.reshape(data.shape).to(data.dtype)
    latents = {s["name"]: (s["value"], s) for s in run.sites if s["name"] != site["name"] and not _enumerated(s)}
    with SiteCollector({n: v for n, (v, _) in latents.items()}) as check:
        program(simulated, **condition)
    again = next(s for s in check.sites if s["name"] == site["name"])
    if not torch.equal(again["value"].reshape(data.shape).to(data.dtype), simulated):
        raise ValueError(f"the model's observed value at site {site['name']!r} is not the data it is handed; "
                         "BDMC cannot hand it the data it simulated")
    return simulated, latents


def _exact_start(latents: dict, plan: _Plan) -> Callable:
    """A function of (first row, last row, chains) giving the simulated latents of those rows for every
    chain, laid out under the chains' plate."""

    def start(begin: int, stop: int, chains: int) -> dict[str, torch.Tensor]:
        out = {}
        for name, (value, site) in latents.items():
            batch = value.dim() - len(site["fn"].event_shape)
            frame = next((f for f in site["cond_indep_stack"] if f.name == plan.plate_name), None)
            if frame is not None and not plan.joint:
                value = value.narrow(batch + frame.dim, begin, stop - begin)
            pad = plan.nesting - batch
            value = value.reshape((1,) * max(0, pad) + value.shape)
            out[name] = value.unsqueeze(0).expand((chains,) + value.shape)
        return out

    return start
