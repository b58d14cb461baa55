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

The start density may be any guide with a density: one that samples the model's latents, or one of Pyro's
autoguides with auxiliary sites (``AutoNormal``, and ``AutoDiagonalNormal`` / ``AutoMultivariateNormal`` where a
global latent makes the estimate joint anyway), read through those sites (:mod:`pprogen.inference.auxiliary`). A
point-mass guide is refused (:mod:`pprogen.inference.pointmass`); the chains of a program that breaks with them in
a plate run one at a time, in lockstep (:mod:`pprogen.inference.unvectorized`).

This file holds the drivers :func:`ais` and :func:`bdmc` (rows taken in chunks sized to a memory budget, BDMC's
simulated data and exact starting latents) and their results, :class:`AnnealedEvidence` and :class:`Sandwich`.
The chains themselves live in :mod:`pprogen.inference.annealing`: the schedules (:func:`annealing_schedule`),
the HMC transition in unconstrained space with its step size adapted per data point (Wu et al.'s scheme),
divergences, and discrete latents marked ``infer={"enumerate": "parallel"}`` summed out at each step. The
program's plan and its per-datum log-densities come from :mod:`pprogen.inference.weighting`, shared with
:func:`~pprogen.inference.log_marginal`; as there, a latent outside the per-datum plate makes the estimate joint
(one row, with a warning).

References: Neal, Annealed Importance Sampling, 2001, arXiv:physics/9803008; Grosse, Ghahramani & Adams,
Sandwiching the marginal likelihood using bidirectional Monte Carlo, 2015, arXiv:1511.02543; Wu, Burda,
Salakhutdinov & Grosse, On the Quantitative Analysis of Decoder-Based Generative Models, 2017,
arXiv:1611.04273.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import pyro
import torch

if TYPE_CHECKING:
    import arviz

from pprogen.inference.annealing import (
    ADAPT_DOWN,
    ADAPT_UP,
    DIVERGENCE,
    SCHEDULES,
    Annealing,
    annealing_schedule,
)
from pprogen.inference.checks import check_condition
from pprogen.inference.marginal import Evidence
from pprogen.inference.memory import PeakBytes
from pprogen.inference.pointmass import refuse_point_masses
from pprogen.inference.tracing import SiteCollector, direct_call, sandbox, user_stacklevel
from pprogen.inference.unvectorized import make_chains
from pprogen.inference.weighting import Plan, is_enumerated, make_plan, streaming_stats, take_rows, vectorizes

__all__ = [  # the schedule and the HMC constants are defined in annealing.py and kept importable from here
    "ADAPT_DOWN",
    "ADAPT_UP",
    "DIVERGENCE",
    "SCHEDULES",
    "AnnealedEvidence",
    "Sandwich",
    "ais",
    "annealing_schedule",
    "bdmc",
]


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

    def to_inference_data(self) -> "arviz.InferenceData":
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

    def to_inference_data(self) -> "arviz.InferenceData":
        """ArviZ ``InferenceData``: the lower bounds as ``log_likelihood``, both bounds and the gap as
        ``sample_stats``."""
        data = self.lower.to_inference_data()
        dims = data.sample_stats["stderr"].dims
        for name, value in (("lower", self.lower.log_prob), ("upper", self.upper.log_prob), ("gap", self.gap)):
            data.sample_stats[name] = (dims, value.numpy()[None, None])
        return data


def _chunk_rows(model, guide, data, condition, plan: Plan, annealing: Annealing) -> int:
    """Rows per chunk so that one evaluation's tensors (measured on a probe of a few rows) stay under
    ``max_memory`` bytes; a program that must see fixed rows gets exactly those."""
    max_memory = annealing.max_memory
    if not isinstance(max_memory, int) or max_memory < 1:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    if plan.fixed_rows:
        return plan.batch_size
    rows = min(plan.batch_size, 4)
    devices = [data.device.index or 0] if data.device.type == "cuda" else []
    with sandbox(model, guide) as (model_copy, guide_copy), torch.random.fork_rng(devices=devices):
        chains = make_chains(model_copy, guide_copy, take_rows(data, condition, plan, 0, rows), plan, annealing)
        start = chains.initial(None)
        with PeakBytes() as meter:
            chains.evaluate(start)
    per_row = 2 * max(1.0, meter.peak / rows)  # one evaluation's graph, plus the states, momenta and gradients
    return max(1, min(plan.batch_size, int(max_memory / per_row)))


def _anneal(model, guide, data, condition, plan: Plan, annealing: Annealing, *, start: Callable | None = None,
            reverse: bool = False, keep_weights: bool = False, dim: int | None = None) -> AnnealedEvidence:
    """Anneal every row of ``data``, chunk by chunk: forward from the guide, or with ``reverse`` backwards from
    ``start(first row, last row, chains)`` (exact posterior draws)."""
    rows_per_chunk = _chunk_rows(model, guide, data, condition, plan, annealing)
    betas = annealing.betas.flip(0) if reverse else annealing.betas
    num_chains = annealing.num_chains
    n = data.shape[0]
    results, accept, divergences, step_sizes = [], [], [], []
    for begin in range(0, n, rows_per_chunk):
        stop = min(begin + rows_per_chunk, n)
        chains = make_chains(model, guide, take_rows(data, condition, plan, begin, stop), plan, annealing)
        state = chains.initial(start(begin, stop, num_chains) if start is not None else None)  # checks the sites
        if plan.joint and not reverse and begin == 0:
            warnings.warn(
                f"site {plan.global_sites[0]!r} sits outside the {plan.plate_name!r} plate, so log p(x) does not "
                "split per data point; returning the joint estimate of log p(x_1..N) as one row",
                stacklevel=user_stacklevel(),
            )
        log_w, accept_prob, divergent, eps = chains.run(state, betas, check=begin == 0)
        keep = 1 if plan.joint else stop - begin
        # forward chains: E[w] = p(x); reverse chains: E[w] = 1 / p(x), so log p = -log mean w
        stats = streaming_stats([log_w[:, :keep].T.cpu()], num_chains, keep=keep_weights)
        log_prob = -stats[0] if reverse else stats[0]
        results.append((log_prob, stats[1], stats[2], stats[3]))
        accept.append(accept_prob[:, :keep].mean(0).cpu())
        divergences.append(divergent[:, :keep].sum(0).cpu())
        step_sizes.append(eps[:, :keep].double().mean(0).cpu())
    log_prob, stderr, ess, weights = (torch.cat(t) if t[0] is not None else None for t in zip(*results))
    return AnnealedEvidence(
        log_prob.float(), stderr.float(), ess.float(), None, num_chains, dim, plan.joint,
        weights.float() if keep_weights else None, vectorized=plan.vectorized, method="reverse ais" if reverse else "ais",
        num_steps=betas.shape[0] - 1, schedule=annealing.schedule, leapfrog_steps=annealing.leapfrog_steps,
        accept_rate=torch.cat(accept).float(), divergences=torch.cat(divergences), step_size=torch.cat(step_sizes).float(),
    )


def _prepare(model, guide, data, condition, plate_name, batch_size, **settings) -> tuple[Annealing, dict, Plan]:
    """The checked settings (keyword arguments of :meth:`Annealing.checked`), condition and plan of a run."""
    if not isinstance(data, torch.Tensor) or data.dim() == 0 or data.shape[0] == 0:
        raise ValueError("data must be a non-empty tensor (N, ...): nothing to evaluate")
    annealing = Annealing.checked(**settings)
    condition = check_condition(condition, data, "data")
    refuse_point_masses(model, guide, data, condition, batch_size, "annealing from the guide")
    plan = make_plan(model, guide, data, condition, plate_name, batch_size)
    plan.vectorized = vectorizes(model, guide, data, condition, plan)
    return annealing, condition, plan


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
    annealing, condition, plan = _prepare(
        model, guide, data, condition, plate_name, batch_size, num_steps=num_steps, num_chains=num_chains,
        schedule=schedule, leapfrog_steps=leapfrog_steps, step_size=step_size, target_accept=target_accept,
        adapt_step_size=adapt_step_size, max_memory=max_memory)
    with pyro.validation_enabled(False):
        return _anneal(model, guide, data, condition, plan, annealing, keep_weights=keep_weights, dim=dim)


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
    annealing, condition, plan = _prepare(
        model, guide, data, condition, plate_name, batch_size, num_steps=num_steps, num_chains=num_chains,
        schedule=schedule, leapfrog_steps=leapfrog_steps, step_size=step_size, target_accept=target_accept,
        adapt_step_size=adapt_step_size, max_memory=max_memory)
    if plan.subsampled:
        raise ValueError(
            f"plate {plan.plate_name!r} subsamples itself, and BDMC simulates a whole data set in one draw; run "
            f"bdmc on the program with pyro.plate({plan.plate_name!r}, len(x)) (no subsample_size)"
        )
    simulated, latents = _simulate(model, data, condition, plan)
    start = _exact_start(latents, plan)
    with pyro.validation_enabled(False):
        lower = _anneal(model, guide, simulated, condition, plan, annealing, dim=dim)
        upper = _anneal(model, guide, simulated, condition, plan, annealing, start=start, reverse=True, dim=dim)
    return Sandwich(simulated, lower, upper, condition)


@torch.no_grad()
def _simulate(model, data, condition, plan: Plan):
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
    latents = {s["name"]: (s["value"], s) for s in run.sites if s["name"] != site["name"] and not is_enumerated(s)}
    with SiteCollector({n: v for n, (v, _) in latents.items()}) as check:
        program(simulated, **condition)
    again = next(s for s in check.sites if s["name"] == site["name"])
    if not torch.equal(again["value"].reshape(data.shape).to(data.dtype), simulated):
        raise ValueError(f"the model's observed value at site {site['name']!r} is not the data it is handed; "
                         "BDMC cannot hand it the data it simulated")
    return simulated, latents


def _exact_start(latents: dict, plan: Plan) -> Callable:
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
