r"""Per-datum log-densities and log importance weights of a Pyro program, shared by the evidence estimators.

:func:`~pprogen.inference.log_marginal` (importance sampling) and :func:`~pprogen.inference.ais` (annealed
chains) both evaluate a program the same way, and this module holds that machinery:

- :func:`make_plan` probes the program (in a sandbox) and returns its :class:`Plan`: the per-datum plate,
  whether the program subsamples that plate itself, its plate nesting, the latents outside the plate (which
  make the estimate joint: one row for the whole data set) and the rows per chunk; :func:`take_rows` hands
  out one chunk of rows as a :class:`Rows`.
- :func:`vectorizes` probes whether the program runs with its particles in a plate (``plan.vectorized``).
- :func:`contract_sites` sums the model's site log-densities to one figure per (particle, datum), each site
  reduced on its own so that a site outside the plate counts once, and sums out the discrete latents marked
  ``infer={"enumerate": "parallel"}`` (by variable elimination, ``pyro.markov`` chains and plates nested in the
  data plate included: :mod:`pprogen.inference.enumeration`), in the model or in the guide (a label the guide
  enumerates); :func:`reduce_log_prob` and :func:`per_particle` are its reductions of one site. A discrete latent
  enumerated outside the data plate makes the estimate joint, as a global latent does.
- :func:`log_weights` draws K particles from the guide (the prior when ``guide=None``), in a plate or, for a
  program that breaks in one, one at a time, and returns

  .. math::

      \log w_{nk} = \log p(x_n, z_{nk}) - \log q(z_{nk} \mid x_n), \qquad z_{nk} \sim q(z \mid x_n);

- :func:`streaming_stats` combines chunks of log weights into :math:`\log \frac{1}{K} \sum_k w_{nk}`, its
  delta-method standard error :math:`\sqrt{1/\mathrm{ESS} - 1/K}` and the effective sample size, one chunk
  at a time.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger

from pprogen.inference.enumeration import sum_enumerated
from pprogen.inference.tracing import (
    PARTICLES,
    FunsorBackendError,
    SiteCollector,
    check_param_shapes,
    direct_call,
    find_data_plate,
    fix_subsample,
    in_plate,
    masked_log_prob,
    per_datum,
    plate_nesting,
    probe_pair,
    probe_sites,
    sandbox,
)


@dataclass
class Plan:
    """How the estimators visit a program: its per-datum plate, whether it subsamples that plate itself, its
    plate nesting, the sites that make the estimate joint and the rows per chunk."""

    plate_name: str
    subsampled: bool
    nesting: int
    global_sites: list[str]
    batch_size: int
    fixed_rows: bool = False  # every chunk exactly ``batch_size`` rows: all of them, or a subsample's size
    vectorized: bool = True  # False: the program breaks in a particle plate (locs[assignment]), particles loop

    @property
    def joint(self) -> bool:
        return bool(self.global_sites)


class Rows(NamedTuple):
    """One chunk of rows as the program is handed them: the data, the per-datum condition and, for a program
    that picks its own rows, the indices it is made to pick (None otherwise)."""

    x: torch.Tensor
    condition: dict
    indices: torch.Tensor | None


def take_rows(data: torch.Tensor, condition: dict, plan: Plan, start: int, stop: int) -> Rows:
    """The :class:`Rows` for rows ``start:stop``. A program that picks its own rows is handed all of them and
    made to pick these: exactly its subsample size of them, the last chunk padded by wrapping round (the
    padding's estimates are dropped)."""
    if plan.subsampled:
        indices = torch.arange(start, start + plan.batch_size, device=data.device) % data.shape[0]
        return Rows(data, condition, indices)
    return Rows(data[start:stop], {k: v[start:stop] for k, v in condition.items()}, None)


def make_plan(model: Callable, guide: Callable | None, data: torch.Tensor, condition: dict,
              plate_name: str | None, batch_size: int) -> Plan:
    """The :class:`Plan`, from sandboxed runs on the first chunk of rows (all rows when the program only
    runs on all of them). Refuses a program with no plate, an improper prior, or a latent outside a plate
    that subsamples itself."""
    n = data.shape[0]
    rows = min(n, max(2, batch_size))
    guide_sites, model_sites, fixed = _probe(model, guide, data, condition, rows)
    if fixed:
        rows = batch_size = n
    _refuse_improper(model_sites)
    sites = guide_sites + model_sites
    frame = find_data_plate(sites, rows, plate_name)
    if frame is None:
        raise ValueError(
            "the model has no plate, so log p(x) has no per-datum split; put the per-datum sites inside "
            "pyro.plate('data', len(x))"
        )
    subsampled = frame.full_size is not None and frame.full_size == rows and frame.size < frame.full_size
    if rows not in (frame.size, frame.full_size):
        raise ValueError(
            f"plate {frame.name!r} has {frame.size} entries whatever the rows handed to the program ({rows} here): a "
            f"constant-size plate scores exactly {frame.size} rows; hand it {frame.size} rows, or size the plate by the "
            f"data (pyro.plate({frame.name!r}, len(x)), per-row constants passed as condition)"
        )
    if subsampled and rows < n:  # it subsamples whatever it is handed: hand it everything
        guide_sites, model_sites = probe_sites(model, guide, (data,), condition)
        sites = guide_sites + model_sites
        frame = find_data_plate(sites, n, frame.name)
    proposal_sites = guide_sites if guide is not None else model_sites
    outside = [s["name"] for s in proposal_sites if not s["is_observed"] and not in_plate(s, frame.name)]
    outside += [s["name"] for s in model_sites if (s["is_observed"] or is_enumerated(s) and guide is not None)
                and not in_plate(s, frame.name)]  # a discrete latent summed out of every row at once: joint too
    if outside and subsampled:
        raise ValueError(
            f"site {outside[0]!r} sits outside plate {frame.name!r}, which subsamples itself: the joint evidence "
            "needs every row in one draw, and Pyro's plate takes only its subsample size of them; evaluate the "
            f"program with pyro.plate({frame.name!r}, len(x)) (no subsample_size)"
        )
    if outside:
        batch_size, fixed = n, True  # a particle is a draw of everything: all rows at once
    if subsampled:
        batch_size, fixed = frame.size, True  # Pyro insists on the program's own subsample size
    return Plan(frame.name, subsampled, max(1, plate_nesting(sites)), outside, min(batch_size, n), fixed)


def vectorizes(model: Callable, guide: Callable | None, data: torch.Tensor, condition: dict, plan: Plan) -> bool:
    """Whether the program runs with its particles in a plate (two, then three of them, on a few rows, in a
    sandbox: two counts, so that a plate's size seldom matches a tensor's by chance): what ``plan.vectorized`` is
    set to before the estimators run. A program that indexes a batched tensor by a latent (``locs[assignment]``)
    breaks there; if it runs one particle at a time, the particles loop (:mod:`pprogen.inference.unvectorized`);
    if not, the error is its own and is raised."""
    x, kw, indices = take_rows(data, condition, plan, 0, plan.batch_size if plan.fixed_rows else min(4, plan.batch_size))
    with sandbox(model, guide) as (model_copy, guide_copy):
        try:
            for particles in (2, 3):
                log_weights(model_copy, guide_copy, x, particles, plan, kw, indices)
            return True
        except Exception as err:  # noqa: BLE001  (any failure: is it the plate's?)
            first = err
        try:
            log_weights(model_copy, guide_copy, x, 2, replace(plan, vectorized=False), kw, indices)
        except Exception:  # noqa: BLE001
            raise first from None
    return False


def _probe(model: Callable, guide: Callable | None, data: torch.Tensor, condition: dict,
           rows: int) -> tuple[list[dict], list[dict], bool]:
    """``(guide sites, model sites, fixed)`` from runs on the first ``rows`` rows and on one row fewer, in a
    sandbox; ``fixed`` when the program runs on all rows only (a guide sized by the rows it was fitted to), and
    then the sites are those of a run on all of them."""
    fixed = False
    with sandbox(model, guide) as (model_copy, guide_copy):
        try:
            guide_sites, model_sites = probe_pair(model_copy, guide_copy, (data[:rows],),
                                                  {k: v[:rows] for k, v in condition.items()})
        except FunsorBackendError:
            raise
        except Exception:
            if rows == data.shape[0]:
                raise
            fixed = True  # it may run on all rows only: a guide sized by the rows it was fitted to
        if not fixed and rows > 1:  # one row fewer: does the guide follow the rows it is handed?
            try:
                probe_pair(model_copy, guide_copy, (data[: rows - 1],), {k: v[: rows - 1] for k, v in condition.items()})
            except FunsorBackendError:
                raise
            except Exception:
                fixed = True
    if fixed:
        guide_sites, model_sites = probe_sites(model, guide, (data,), condition)
    return guide_sites, model_sites, fixed


class ImproperPriorError(ValueError):
    """A latent site with an improper prior: log p(x) is not defined."""


def _refuse_improper(model_sites: list[dict]) -> None:
    improper = [s["name"] for s in model_sites if not s["is_observed"] and _is_improper(s["fn"])]
    if improper:
        raise ImproperPriorError(
            f"site {improper[0]!r} has an improper prior (ImproperUniform: no normalized density), so log p(x) is "
            "not defined and importance sampling would return the reconstruction term alone; give it a proper "
            "prior (an autoencoder is scored by its reconstruction error instead)"
        )


def _is_improper(fn) -> bool:
    """Whether a site's distribution is (a wrapper of) Pyro's ``ImproperUniform``."""
    while fn is not None:
        if isinstance(fn, dist.ImproperUniform):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def is_enumerated(site: dict) -> bool:
    """Whether a model site is a discrete latent to be summed out (``infer={"enumerate": "parallel"}``)."""
    return site["infer"].get("enumerate") == "parallel"


def per_particle(log_prob: torch.Tensor, particle_dim: int, nesting: int) -> torch.Tensor:
    """Sum over every dim but the particle dim -> ``(K|1, 1)`` (the joint over all data points)."""
    padded = log_prob.reshape((1,) * max(0, nesting + 1 - log_prob.dim()) + log_prob.shape)
    axis = padded.dim() + particle_dim
    return padded.movedim(axis, 0).reshape(padded.shape[axis], -1).sum(1, keepdim=True)


def reduce_log_prob(log_prob: torch.Tensor, site: dict, particle_dim: int, nesting: int, plate_name: str,
                    joint: bool) -> torch.Tensor:
    """One site's log-density summed to ``(K, B)`` along its ``plate_name`` frame (``(K, 1)`` for the joint)."""
    if joint:
        return per_particle(log_prob, particle_dim, nesting)
    frame = next(f for f in site["cond_indep_stack"] if f.name == plate_name)
    return per_datum(log_prob, particle_dim, frame.dim, nesting + 1)


def contract_sites(sites: list[dict], particle_dim: int, nesting: int, plate_name: str, joint: bool,
                   guide_sites: list[dict] = ()) -> torch.Tensor:
    r"""Sum the model's site log-densities, each reduced on its own (a site outside a plate counts once, not
    once per entry of the plate), except the sites that carry enumerated dims (left of the plates): those
    are multiplied together and their enumerated variables summed out (:mod:`pprogen.inference.enumeration`),
    per data point (a site in a plate nested inside the data plate, LDA's word topics, summed within each entry
    of its plate) or, for the joint, once for all of them.

    ``guide_sites`` have their log-densities subtracted: the log importance weight. A label the guide enumerates
    (``config_enumerate`` on the guide) is summed out with the model's enumerated variables, each of its values
    with its own draw of the sites downstream of it; its own q(y | x) is left out, since it weights each value's
    term and divides it: :math:`\log \sum_y p(x, y, z_y) / q(z_y \mid x, y)`."""
    total = 0.0
    enumerated, divided = [], []
    args = (particle_dim, nesting, plate_name, joint)
    for site in sites:
        inside = in_plate(site, plate_name)
        if is_enumerated(site) and not inside and not joint:
            raise ValueError(
                f"enumerated site {site['name']!r} sits outside the {plate_name!r} plate, so the evidence does not "
                "split per data point; sum it in the joint estimate (evaluate the whole data set, no plate_name "
                "or subsampling), or sample it in the guide"
            )
        log_prob = masked_log_prob(site)
        if log_prob.dim() > nesting + 1:
            enumerated.append(site)
        elif joint or not inside:
            total = total + per_particle(log_prob, particle_dim, nesting)
        else:
            total = total + reduce_log_prob(log_prob, site, *args)
    for site in guide_sites:
        if site["infer"].get("_enumerate_dim") is not None:
            continue  # q(y | x) of an enumerated label cancels
        log_prob = masked_log_prob(site)
        if log_prob.dim() > nesting + 1:  # drawn once per value of an enumerated label
            divided.append(site)
        else:  # auxiliary sites too: an autoguide's log q is its auxiliary density plus its Deltas'
            total = total - reduce_log_prob(log_prob, site, *args)
    if enumerated or divided:
        total = total + sum_enumerated(enumerated, plate_name, joint, divided)
    if not torch.is_tensor(total):
        raise ValueError("the model has no sample site to evaluate")
    return total


def log_weights(model: Callable, guide: Callable | None, x, num_particles: int, plan: Plan,
                condition: dict | None = None, indices: torch.Tensor | None = None) -> torch.Tensor:
    """Log importance weights ``(K, B)`` (``(K, 1)`` for the joint), enumerated sites summed out.

    ``indices``: the rows a subsampling program is made to visit (it is handed the whole data set). A program
    that does not vectorize over particles (``plan.vectorized`` false) runs once per particle, with no particle
    plate: the same weights, K times the Python overhead."""
    if not plan.vectorized:
        return torch.cat([_log_weights(model, guide, x, None, plan, condition, indices) for _ in range(num_particles)])
    return _log_weights(model, guide, x, num_particles, plan, condition, indices)


def _log_weights(model, guide, x, num_particles: int | None, plan: Plan, condition, indices) -> torch.Tensor:
    """:func:`log_weights` with the particles in a plate of ``num_particles``, or one particle and no plate (None)."""
    particle_dim = -1 - plan.nesting
    kw = condition or {}
    with contextlib.ExitStack() as stack:
        if num_particles is not None:
            stack.enter_context(pyro.plate(PARTICLES, num_particles, dim=particle_dim))
        stack.enter_context(check_param_shapes())
        if indices is not None:
            stack.enter_context(fix_subsample(plan.plate_name, indices))
        replay, guide_sites = None, []
        if guide is not None:  # as in Pyro's TraceEnum_ELBO, the guide enumerates the labels it marks for it
            with SiteCollector() as guide_run, pyro.poutine.enum(first_available_dim=particle_dim - 1):
                direct_call(guide)(x, **kw)
            guide_sites = guide_run.sites
            replay = guide_run.values()
        # the model's enumerated dims go on to the left of any the guide took (None: where its run left off); the
        # enumeration handler sees each site before the replay does, as in Pyro's TraceEnum_ELBO: pyro.markov's
        # bookkeeping needs every site, replayed or not
        model_enum = pyro.poutine.enum(first_available_dim=None if guide is not None else particle_dim - 1)
        with SiteCollector(replay) as model_run, model_enum, _skip_enumeration(replay):
            direct_call(model)(x, **kw)
    model_sites = model_run.sites if guide is not None else [s for s in model_run.sites
                                                             if s["is_observed"] or is_enumerated(s)]
    log_w = contract_sites(model_sites, particle_dim, plan.nesting, plan.plate_name, plan.joint, guide_sites)
    return log_w.expand(num_particles or 1, -1)


class _skip_enumeration(Messenger):
    """Unmarks the enumeration of the sites the guide sampled, before ``poutine.enum`` sees them: their values are
    replayed, not enumerated."""

    def __init__(self, replay: dict | None) -> None:
        super().__init__()
        self.replay = replay or {}

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] in self.replay and msg["infer"].get("enumerate"):
            msg["infer"] = {k: v for k, v in msg["infer"].items() if k != "enumerate"}


def streaming_stats(parts: list[torch.Tensor], num_samples: int, keep: bool):
    """``(log-mean-exp, delta-method stderr, ESS, weights)`` per row from chunks ``(B, k)`` of log weights
    combined one at a time (float64); ``weights`` is the chunks side by side (float32) when ``keep``, else None."""
    running_max = torch.full((parts[0].shape[0],), -math.inf, dtype=torch.float64)
    s1 = torch.zeros_like(running_max)
    s2 = torch.zeros_like(running_max)
    for log_w in parts:
        new_max = torch.maximum(running_max, log_w.max(1).values)
        shift = torch.where(torch.isfinite(running_max), running_max - new_max, torch.zeros_like(new_max))
        s1 = s1 * shift.exp() + (log_w - new_max[:, None]).exp().sum(1)
        s2 = s2 * (2 * shift).exp() + (2 * (log_w - new_max[:, None])).exp().sum(1)
        running_max = new_max
    ess = s1**2 / s2
    log_prob = running_max + s1.log() - math.log(num_samples)
    stderr = (1.0 / ess - 1.0 / num_samples).clamp(min=0).sqrt()
    if num_samples == 1:  # one weight: no spread to measure
        stderr = torch.full_like(stderr, math.nan)
    weights = torch.cat(parts, 1).float() if keep else None
    return log_prob, stderr, ess, weights
