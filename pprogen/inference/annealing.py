r"""The annealed chains of :func:`~pprogen.inference.ais`: the schedules of inverse temperatures, the run's
settings, and the HMC transition that moves C chains per data point through the intermediate densities

.. math::

    f_t(z) = q(z \mid x)^{1 - \beta_t}\, p(x, z)^{\beta_t}, \qquad 0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

from the guide :math:`q` (the prior when ``guide=None``) to the unnormalized posterior, one transition
leaving :math:`f_t` invariant per step, while the chains' log weights add up
:math:`(\beta_t - \beta_{t-1}) [\log p(x, z_{t-1}) - \log q(z_{t-1} \mid x)]`.

The log-densities come from the Pyro program itself (:mod:`pprogen.inference.weighting`): the model is
replayed at the chains' latents (the guide's or the prior's sites), constrained latents move in unconstrained
space through ``biject_to`` (the Jacobian enters both densities and cancels in the weights), discrete latents
marked ``infer={"enumerate": "parallel"}`` in the model and absent from the guide are summed out exactly at
each step, and chains and data points share one batch (the chains in a ``pyro.plate``; a chain run alone, with no
plate, for a program that breaks in one). An autoguide's density is read through its auxiliary sites, in
unconstrained space (:mod:`pprogen.inference.auxiliary`). HMC uses an identity
mass matrix, ``leapfrog_steps`` steps, and one step size per data point, shared by its C chains, multiplied
by 1.02 after a transition whose mean acceptance probability over those chains exceeds ``target_accept``
and by 0.98 otherwise (Wu et al.'s scheme). A step size adapted on each chain's own last acceptance makes
the next transition depend on the state it starts from, which breaks its invariance: on a PPCA model with
T = 1000 that estimate came out 0.14 +- 0.03 nats *above* the exact log p(x), against -0.003 +- 0.025 with
the shared step size. A transition whose energy error is not finite or exceeds 1000 is a divergence: it is
rejected and counted.

References: Grosse, Ghahramani & Adams, Sandwiching the marginal likelihood using bidirectional Monte Carlo,
2015, arXiv:1511.02543 (the sigmoid schedule); Wu, Burda, Salakhutdinov & Grosse, On the Quantitative Analysis
of Decoder-Based Generative Models, 2017, arXiv:1611.04273 (the step-size adaptation).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Sequence

import pyro
import torch
from torch.distributions import biject_to
from torch.distributions.transforms import IndependentTransform, identity_transform

from pprogen.inference.auxiliary import AUXILIARY_HINT, AuxiliaryMap
from pprogen.inference.tracing import (
    PARTICLES,
    SiteCollector,
    direct_call,
    fix_subsample,
    in_plate,
    masked_log_prob,
    per_datum,
)
from pprogen.inference.weighting import Plan, Rows, contract_sites, is_enumerated, per_particle, reduce_log_prob

SCHEDULES = ("linear", "geometric", "sigmoid")
DIVERGENCE = 1000.0  # an energy error above this (nats) is a divergence
ADAPT_UP, ADAPT_DOWN = 1.02, 0.98
NO_GRADIENT = torch.zeros(())  # the gradient of a density in a latent it does not depend on


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


@dataclass(frozen=True, eq=False)
class Annealing:
    """One run's settings: the T + 1 inverse temperatures ``betas`` (float64) on the schedule named ``schedule``
    (``"custom"`` for given betas), ``num_chains`` (C) chains per data point, ``leapfrog_steps`` per HMC
    transition from ``step_size``, adapted towards ``target_accept`` when ``adapt_step_size``, and the bytes
    one chunk of rows may take (``max_memory``)."""

    betas: torch.Tensor
    schedule: str
    num_chains: int
    leapfrog_steps: int
    step_size: float
    target_accept: float
    adapt_step_size: bool
    max_memory: int

    @classmethod
    def checked(cls, *, num_steps: int, num_chains: int, schedule: str | Sequence[float] | torch.Tensor,
                leapfrog_steps: int, step_size: float, target_accept: float, adapt_step_size: bool,
                max_memory: int) -> "Annealing":
        """The settings, each refused in one line when it is out of range (``max_memory`` is checked where the
        chunks are sized)."""
        _check_settings(num_chains, leapfrog_steps, step_size, target_accept)
        betas = annealing_schedule(schedule, num_steps)
        name = schedule if isinstance(schedule, str) else "custom"
        return cls(betas=betas, schedule=name, num_chains=num_chains, leapfrog_steps=leapfrog_steps,
                   step_size=step_size, target_accept=target_accept, adapt_step_size=adapt_step_size,
                   max_memory=max_memory)


def _check_settings(num_chains, leapfrog_steps, step_size, target_accept) -> None:
    if not isinstance(num_chains, int) or isinstance(num_chains, bool) or num_chains < 1:
        raise ValueError(f"num_chains must be a positive integer (C >= 1), got {num_chains!r}")
    if not isinstance(leapfrog_steps, int) or leapfrog_steps < 1:
        raise ValueError(f"leapfrog_steps must be a positive integer, got {leapfrog_steps!r}")
    if not (isinstance(step_size, (int, float)) and step_size > 0 and math.isfinite(step_size)):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept!r}")


def _is_identity(transform) -> bool:
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return transform == identity_transform


class LatentLayout:
    """One annealed site's layout: how to move it to unconstrained space, and how to fold a per-element
    tensor of its shape to ``(chains, rows)`` and back."""

    def __init__(self, site: dict, plan: Plan, unconstrained: torch.Tensor, transform) -> None:
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
            return per_particle(t, self.particle_dim, self.nesting)
        return per_datum(t, self.particle_dim, self.data_dim, self.nesting + 1)

    def expand(self, e: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A ``(C, B)`` (or ``(C, 1)``) tensor laid out to broadcast against ``like``."""
        shape = [1] * like.dim()
        for axis, size in ((self.particle_dim, e.shape[0]), (self.data_dim, e.shape[1])):
            if axis is not None and 0 <= self.batch_dims + axis:  # a chain run alone has no particle axis
                shape[self.batch_dims + axis] = size
        return e.reshape(shape)


def _grad(out, inputs: list[torch.Tensor], retain_graph: bool = False) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``out.sum()``; None for inputs it does not depend on (the caller refuses those)."""
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return (None,) * len(inputs)
    return torch.autograd.grad(out.sum(), inputs, retain_graph=retain_graph, allow_unused=True)


class AnnealedChains:
    """C annealed chains for one chunk of ``rows``: the log-densities of the program at given latents, with
    their gradients, and the HMC transition, on the ``annealing`` settings."""

    def __init__(self, model, guide, rows: Rows, plan: Plan, annealing: Annealing) -> None:
        self.model, self.guide = direct_call(model), (direct_call(guide) if guide is not None else None)
        self.x, self.kw, self.indices = rows
        self.plan = plan
        self.num_chains, self.leapfrog_steps = annealing.num_chains, annealing.leapfrog_steps
        self.step_size, self.target_accept = annealing.step_size, annealing.target_accept
        self.adapt = annealing.adapt_step_size
        self.particle_dim = -1 - plan.nesting
        self.latents: dict[str, LatentLayout] = {}
        self.cached_guide: list[dict] | None = None
        self.enumerates = False
        self.no_gradient: set[str] = set()  # latents the last evaluation's log p had no gradient in
        self.auxiliary: AuxiliaryMap | None = None  # an autoguide's auxiliary sites, read off the state

    @contextlib.contextmanager
    def _frame(self):
        with contextlib.ExitStack() as stack:
            if self.plan.vectorized:  # else one chain, run alone (pprogen.inference.unvectorized loops them)
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
        self.enumerates = any(is_enumerated(s) for s in model_sites)
        names = self._check_sites(proposal, model_sites)
        sites = {s["name"]: s for s in (proposal if proposal is not None else model_sites)}
        supports = {s["name"]: s["fn"].support for s in model_sites}  # the target's support, not the guide's
        state = {}
        for name in names:
            site = sites[name]
            value = site["value"] if start is None else start[name]
            if value.numel() == site["value"].numel():  # a chain run alone: the start's layout, the program's shape
                value = value.reshape(site["value"].shape)
            transform = biject_to(supports[name])
            unconstrained = transform.inv(value)
            self.latents[name] = LatentLayout(site, self.plan, unconstrained, transform)
            state[name] = unconstrained.detach()
        if self.guide is not None:
            self._cache_guide(state)
        return state

    def _check_sites(self, guide_sites: list[dict] | None, model_sites: list[dict]) -> list[str]:
        model_names = {s["name"] for s in model_sites}
        if guide_sites is None:
            moving = [s for s in model_sites if not s["is_observed"] and not is_enumerated(s)]
        else:
            auxiliary = [s for s in guide_sites if s["name"] not in model_names]
            for site in auxiliary:
                if not site["infer"].get("is_auxiliary"):
                    raise ValueError(f"guide site {site['name']!r} is not in the model; {AUXILIARY_HINT}")
            moving = [s for s in guide_sites if not s["is_observed"] and s["name"] in model_names]
            if auxiliary:  # an autoguide: its density is its auxiliary sites' (pprogen.inference.auxiliary)
                latent = [s for s in model_sites if not s["is_observed"] and not is_enumerated(s)]
                local = {s["name"] for s in latent if in_plate(s, self.plan.plate_name)}
                self.auxiliary = AuxiliaryMap.of(self.guide, auxiliary, {s["name"] for s in moving},
                                                 local if len(local) == len(latent) else set())
            guided = {s["name"] for s in moving}
            for site in model_sites:
                if not site["is_observed"] and not is_enumerated(site) and site["name"] not in guided:
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
        guide, an autoguide's auxiliary sites): log q(z | x) is then evaluated at new z without running the guide
        again."""
        if self.auxiliary is not None:
            with torch.no_grad(), self._frame(), SiteCollector() as run:
                self.guide(self.x, **self.kw)
            self.cached_guide = [s for s in run.sites if s["name"] in self.auxiliary.parts]
            return
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
            log_p = contract_sites(model_run.sites, *args) + log_det
            if self.guide is None:
                log_q = contract_sites([s for s in model_run.sites if not s["is_observed"]], *args) + log_det
            else:
                sites = self.cached_guide
                if sites is None:
                    with self._frame(), SiteCollector(values) as guide_run:
                        self.guide(self.x, **self.kw)
                    sites = guide_run.sites
                elif self.auxiliary is not None:  # the auxiliary density in unconstrained space: no Jacobian
                    sites = [{**s, "value": self.auxiliary.values(s, leaves)} for s in sites]
                else:
                    sites = [{**s, "value": values[s["name"]]} for s in sites]
                log_q = log_det if self.auxiliary is None else 0.0
                for site in sites:
                    log_q = log_q + reduce_log_prob(masked_log_prob(site), site, *args)
            inputs = list(leaves.values())
            grad_q = _grad(log_q, inputs, retain_graph=True)
            grad_p = _grad(log_p, inputs)
        self.no_gradient = {n for n, g in zip(leaves, grad_p) if g is None}
        grad_q = {n: g if g is not None else NO_GRADIENT for n, g in zip(leaves, grad_q)}
        grad_p = {n: g if g is not None else NO_GRADIENT for n, g in zip(leaves, grad_p)}
        return log_q.detach(), log_p.detach(), grad_q, grad_p

    def check_differentiable(self, point) -> None:
        _, log_p, _, grad_p = point
        for name in self.latents:
            g = grad_p[name]
            if name in self.no_gradient or not bool(torch.isfinite(g).any()):
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

        def pick(a, b):  # a 0-dim value is a scalar latent of a chain run alone, and moves like any other
            return {n: b[n] if a[n] is NO_GRADIENT else torch.where(self.latents[n].expand(accept, a[n]), a[n], b[n])
                    for n in state}

        chosen = (pick(position, state), torch.where(accept, new[0], log_q), torch.where(accept, new[1], log_p),
                  pick(new[2], grad_q), pick(new[3], grad_p))
        return chosen, accept_prob, divergent

    def run(self, start, betas: torch.Tensor, check: bool = True):
        """Anneal along ``betas`` (the settings' own, or reversed) from ``start`` (unconstrained states), the step
        size starting at the settings' ``step_size``; returns the log weights ``(C, B)`` (float64) and the
        diagnostics: mean acceptance probability, divergences and the final step size."""
        point = (start, *self.evaluate(start))
        if check:
            self.check_differentiable(point[1:])
        log_p = point[2]
        eps = torch.full(log_p.shape, float(self.step_size), dtype=log_p.dtype, device=log_p.device)
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
