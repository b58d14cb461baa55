r"""Per-datum importance-sampled evidence, vectorized over particles and data points.

.. math::

    \log \hat p(x_n) = \log \frac{1}{K} \sum_{k=1}^{K} \frac{p(x_n, z_{nk})}{q(z_{nk} \mid x_n)},
    \qquad z_{nk} \sim q(z \mid x_n),

with the guide as proposal (the prior when ``guide=None``). Discrete latents marked
``infer={"enumerate": "parallel"}`` and left out of the guide are summed out exactly: per data point, within
each entry of a plate nested in the data plate (LDA's word topics), and, for a site outside the data plate (a
discrete global), in the joint estimate below. A label the guide enumerates (``config_enumerate`` on the guide,
Pyro's semi-supervised VAE) is summed exactly too, each of its values with its own draw of the latents after it:
:math:`w_{nk} = \sum_y p(x_n, y, z_{nky}) / q(z_{nky} \mid x_n, y)`. Particles are
drawn in chunks inside a ``pyro.plate`` and combined with a streaming log-sum-exp, so memory stays
bounded for large K. Each estimate's standard error follows from the effective sample size of its
weights, :math:`\mathrm{se} = \sqrt{1/\mathrm{ESS} - 1/K}` (delta method), and its Pareto k-hat from
ArviZ's PSIS (Vehtari et al.: k < 0.5 good, < 0.7 ok, < 1 bad, else very bad).

A latent outside the per-datum plate (a global latent :math:`\theta`) couples the data points; the evidence
then no longer splits per datum, and ``log_marginal`` warns and returns the joint estimate

.. math::

    \log \hat p(x_{1:N}) = \log \frac{1}{K} \sum_{k=1}^{K} \frac{p(\theta_k) \prod_n p(x_n, z_{nk} \mid \theta_k)}
        {q(\theta_k) \prod_n q(z_{nk} \mid x_n, \theta_k)}

as one row (``Evidence.joint``), each particle a draw of everything, each global term counted once.

A guide with a point-mass site (``AutoDelta``, ``dist.Delta``, any MAP guide) has no density, and its weights
would be :math:`\log p(x, \hat z)`, not a bound on :math:`\log p(x)`: it is refused in one line
(:mod:`pprogen.inference.pointmass`). With one particle (``num_samples=1``) the estimate is that particle's log
weight, with no k-hat and a NaN standard error. A program that breaks with its particles in a plate (Pyro's GMM
tutorial indexes ``locs[assignment]``) has them drawn one at a time, with the same statistics, and the result says
so (``Evidence.vectorized``; :mod:`pprogen.inference.unvectorized`). ``pyro.markov`` loops are served, enumerated
states inside them summed by variable elimination (:mod:`pprogen.inference.enumeration`).

This file holds :class:`Evidence`, :func:`log_marginal` (its checks, its chunks of rows and particles sized to a
memory budget, the per-datum refinement of the proposal) and :func:`splits_per_datum`; the program's plan, its
log weights and their streaming statistics come from :mod:`pprogen.inference.weighting`, which
:func:`~pprogen.inference.ais` shares.

References: Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, 2016, arXiv:1509.00519;
Vehtari, Simpson, Gelman, Yao & Gabry, Pareto Smoothed Importance Sampling, 2024, arXiv:1507.02646.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import pyro
import torch

if TYPE_CHECKING:
    import arviz

from pprogen.inference.checks import check_condition
from pprogen.inference.memory import PeakBytes
from pprogen.inference.pointmass import refuse_point_masses
from pprogen.inference.refine import Refiner
from pprogen.inference.refine import refine as fit_refiner
from pprogen.inference.tracing import direct_call, user_stacklevel
from pprogen.inference.weighting import (ImproperPriorError, Plan, log_weights, make_plan, streaming_stats, take_rows,
                                         vectorizes)

MIN_ESS = 10  # below this, the weights say little about their own spread: the standard error is flagged
KHAT_BANDS = (("good", -math.inf, 0.5), ("ok", 0.5, 0.7), ("bad", 0.7, 1.0), ("very bad", 1.0, math.inf))


@dataclass
class Evidence:
    """Per-datum ``log_prob``, ``stderr``, ``ess`` and ``khat``; ``summary()`` gives the data-set figures.

    ``joint`` is true when a global latent made the estimate one number for the whole data set; ``vectorized`` is
    false when the program could not run its particles in a plate and they ran one at a time. With one sample per
    datum there is no tail to fit and no spread to measure: ``khat`` is None and ``stderr`` NaN.
    """

    log_prob: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor | None
    num_samples: int
    dim: int | None = None
    joint: bool = False
    log_weights: torch.Tensor | None = field(default=None, repr=False)
    refine: int = 0  # Adam steps of the per-datum refinement of the proposal (0: the guide's own)
    vectorized: bool = True  # False: the particles ran one at a time (the program breaks in a particle plate)

    def khat_bands(self) -> dict[str, int]:
        """Data points per k-hat band; an undefined k-hat (too few samples for a tail fit) is very bad."""
        if self.khat is None:
            return {}
        khat = torch.nan_to_num(self.khat, nan=math.inf)
        return {name: int(((khat >= lo) & ((khat < hi) | (hi == math.inf))).sum()) for name, lo, hi in KHAT_BANDS}

    def summary(self) -> dict:
        n = self.log_prob.shape[0]
        nll = -self.log_prob.double()
        out = {
            "nll": nll.mean().item(),
            "nll_stderr": (nll.std().item() / math.sqrt(n)) if n > 1 else self.stderr.double().item(),
            "mean_is_stderr": self.stderr.double().mean().item(),
            "mean_ess": self.ess.double().mean().item(),
            "num_data": n,
            "num_samples": self.num_samples,
            "joint": self.joint,
        }
        if self.refine:
            out["refine_steps"] = self.refine
        if self.khat is not None:
            out["khat_bands"] = self.khat_bands()
        elif self.num_samples == 1:
            out["khat_bands"] = "none: one sample per datum has no tail to fit (and no standard error)"
        low = int((self.ess.double() < MIN_ESS).sum())
        if low and self.num_samples > 1:
            out["stderr_note"] = (f"unreliable for {low} of {n} estimate(s): an effective sample size below {MIN_ESS} "
                                  "says little about the weights' spread, and the estimate is likely low; use more "
                                  "particles (chains for ais) or a better proposal")
        if not self.vectorized:
            out["particles"] = ("run one at a time, as the program breaks with them in a plate: one pass of the program "
                                "per particle (57-99x the vectorized time at K = 1000 on two small programs)")
        if self.dim and not self.joint:
            out["bits_per_dim"] = out["nll"] / (self.dim * math.log(2))
        return out

    def to_inference_data(self) -> "arviz.InferenceData":
        """ArviZ ``InferenceData``: per-datum estimates as ``log_likelihood``, diagnostics as ``sample_stats``."""
        import arviz as az

        sample_stats = {"stderr": self.stderr.numpy()[None, None], "ess": self.ess.numpy()[None, None]}
        if self.khat is not None:
            sample_stats["khat"] = self.khat.numpy()[None, None]
        data = az.from_dict(log_likelihood={"x": self.log_prob.numpy()[None, None]}, sample_stats=sample_stats)
        if self.log_weights is not None:
            data.add_groups({"log_weights": {"log_w": self.log_weights.numpy()[None]}})
        return data


def _khat(log_weights: np.ndarray) -> np.ndarray:
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about k-hat > 0.7 itself; the bands report it
        _, khat = az.psislw(log_weights)
    return np.asarray(khat, dtype=np.float32)


@torch.no_grad()
def log_marginal(
    model: Callable,
    guide: Callable | None,
    data: torch.Tensor,
    num_samples: int = 1000,
    batch_size: int = 100,
    max_memory: int = 2**30,
    max_elements: int | None = None,
    plate_name: str | None = None,
    dim: int | None = None,
    khat: bool = True,
    keep_weights: bool = False,
    condition: dict[str, torch.Tensor] | None = None,
    refine: int = 0,
    refine_particles: int = 16,
    refine_lr: float = 0.01,
) -> Evidence:
    """Importance-sampled log p(x) for each row of ``data``; see the module docstring.

    Particles and rows are taken in chunks sized so that one chunk's tensors stay under ``max_memory`` bytes
    (1 GiB): the bytes per (particle, row) pair are measured on a small probe chunk, so the bound holds
    whatever K, the data's dimension and the model's width (on a CPU, chunks are kept cache-sized, 16 MiB,
    which is faster); ``max_elements`` caps particles x rows per chunk further, and ``batch_size`` the rows
    per chunk. Pyro's argument validation is off while the chunks run, as in ``fit``'s training loop.
    ``dim`` (the data dimension) turns on bits/dim in the summary; ``khat`` keeps each datum's K log weights on the CPU (4 K bytes per
    datum) for Pareto k-hat; ``keep_weights`` returns them too. ``condition`` maps keyword names to
    per-datum tensors passed to model and guide with each chunk (labels: log p(x_n | y_n)).

    ``plate_name`` names the per-datum plate; by default it is the plate whose size (full size, when
    subsampled) is the number of rows handed to the program. A program that subsamples that plate itself
    (``pyro.plate(name, len(x), subsample_size=B)``, per-datum guide tables indexed by it) is handed the
    whole data set and made to visit each chunk's rows; a guide whose parameters are sized by the rows it
    is handed (a per-datum table, an autoguide over local latents) is evaluated on all rows at once.

    ``refine`` > 0 fits, for each chunk of ``batch_size`` rows, a per-datum affine map of the guide's
    real-valued sites by ``refine`` Adam steps (learning rate ``refine_lr``; the ELBO, then the importance-weighted
    bound, with ``refine_particles`` draws), and proposes from the moved guide (:mod:`pprogen.inference.refine`): the
    estimate stays a stochastic lower bound on log p(x), tighter where the guide proposes poorly on these
    data. The refinement's own tensors are not counted in ``max_memory``.
    """
    _check_request(num_samples, data)
    condition = check_condition(condition, data, "data")
    _check_refine(refine, refine_particles, refine_lr, guide)
    plan = _plan(model, guide, data, condition, plate_name, batch_size, refine)
    validation_off = pyro.validation_enabled(False)  # argument checks cost time in the hot loop, as in fit
    with validation_off:
        rows = _estimate(model, guide, data, condition, plan, num_samples, max_memory, max_elements,
                         keep=khat or keep_weights, refine=(refine, refine_particles, refine_lr))
    log_prob, stderr, ess, weights = (torch.cat(t) if t[0] is not None else None for t in zip(*rows))
    k_hat = torch.from_numpy(_khat(weights.numpy())) if khat and num_samples > 1 else None
    return Evidence(log_prob.float(), stderr.float(), ess.float(), k_hat, num_samples, dim, plan.joint,
                    weights.float() if keep_weights else None, refine, plan.vectorized)


def _check_request(num_samples, data) -> None:
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not isinstance(data, torch.Tensor) or data.dim() == 0 or data.shape[0] == 0:
        raise ValueError("data must be a non-empty tensor (N, ...): nothing to evaluate")


def _check_refine(refine, refine_particles, refine_lr, guide) -> None:
    if not isinstance(refine, int) or isinstance(refine, bool) or refine < 0:
        raise ValueError(f"refine is a number of Adam steps (0 to propose from the guide itself), got {refine!r}")
    if refine and (not isinstance(refine_particles, int) or refine_particles < 1 or not refine_lr > 0):
        raise ValueError(f"refine_particles must be a positive integer and refine_lr positive, got "
                         f"{refine_particles!r} and {refine_lr!r}")
    if refine and guide is None:
        raise ValueError("refine moves the guide's proposal, and there is no guide (the prior proposes); pass a "
                         "guide or evaluate with refine=0")


def _plan(model, guide, data, condition, plate_name, batch_size, refine: int) -> Plan:
    """:func:`~pprogen.inference.weighting.make_plan` for :func:`log_marginal`: a draw from a distribution with
    no sampler (an improper prior) refused in one line, a joint estimate announced (a warning at the caller of
    ``log_marginal``) and refused when a refined proposal is asked for."""
    try:
        refuse_point_masses(model, guide, data, condition, batch_size, "importance sampling")
    except ValueError:
        try:  # an improper prior (an autoencoder's flat one) is the deeper cause: it is named first
            make_plan(model, guide, data, condition, plate_name, batch_size)
        except ImproperPriorError:
            raise
        except (ValueError, NotImplementedError):
            pass
        raise
    try:
        plan = make_plan(model, guide, data, condition, plate_name, batch_size)
    except NotImplementedError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        fix = ("with no guide the model's priors propose, so every latent needs a proper prior, or pass a guide"
               if guide is None else "an improper prior has no normalized density, so log p(x) is not defined (and "
               "an autoguide cannot start from it); give every latent a proper prior")
        raise ValueError(f"the program draws from a distribution that cannot be sampled ({reason}); {fix}") from err
    plan.vectorized = vectorizes(model, guide, data, condition, plan)
    if plan.joint:
        warnings.warn(
            f"site {plan.global_sites[0]!r} sits outside the {plan.plate_name!r} plate, so log p(x) does not "
            "split per data point; returning the joint estimate of log p(x_1..N) as one row",
            stacklevel=user_stacklevel(),
        )
    if refine and plan.joint:
        raise ValueError(f"refine fits a proposal per data point, and site {plan.global_sites[0]!r} outside the "
                         f"{plan.plate_name!r} plate makes the estimate joint; evaluate with refine=0")
    return plan


def _estimate(model, guide, data, condition, plan: Plan, num_samples: int, max_memory: int,
              max_elements: int | None, keep: bool, refine: tuple[int, int, float] = (0, 0, 0.0)) -> list:
    """Each chunk of rows' streaming statistics, the particles drawn chunk by chunk; with ``refine`` steps, each
    chunk is ``plan.batch_size`` rows and proposes from its own refined guide."""
    steps, particles, lr = refine
    chunk_rows, chunk_particles = _chunks(model, guide, data, condition, plan, num_samples, max_memory, max_elements,
                                          whole_batch=steps > 0)
    rows = []
    for start in range(0, data.shape[0], chunk_rows):
        stop = min(start + chunk_rows, data.shape[0])
        x, kw, indices = take_rows(data, condition, plan, start, stop)
        proposal = guide
        if steps:
            refiner = Refiner(plan.plate_name, -1 - plan.nesting, data)
            fit_refiner(lambda r, k: log_weights(model, _moved(guide, r), x, k, plan, kw, indices),
                        refiner, steps, particles, lr)
            proposal = _moved(guide, refiner)
        parts = []
        done = 0
        while done < num_samples:
            k = min(chunk_particles, num_samples - done)
            log_w = log_weights(model, proposal, x, k, plan, kw, indices)
            parts.append(log_w[:, : 1 if plan.joint else stop - start].double().T.cpu())
            done += k
        rows.append(streaming_stats(parts, num_samples, keep=keep))
    return rows


def _moved(guide: Callable, refiner: Refiner) -> Callable:
    """``guide`` run under ``refiner``: its real-valued per-datum sites moved by the refiner's maps."""

    def moved(*args, **kwargs):
        with refiner:
            return direct_call(guide)(*args, **kwargs)

    return moved


CPU_CHUNK_BYTES = 16 * 2**20  # a chunk's working set on a CPU: cache-sized chunks ran fastest (see _chunks)


def _chunks(model, guide, data, condition, plan: Plan, num_samples: int, max_memory: int,
            max_elements: int | None, whole_batch: bool = False) -> tuple[int, int]:
    """``(rows, particles)`` per chunk: as many (particle, row) pairs as fit in ``max_memory`` bytes at the
    footprint measured on a probe chunk, rows first up to the plan's batch, then particles. On a CPU the
    chunks are kept to ``CPU_CHUNK_BYTES`` as well: for a 784-200-200-50 VAE at K = 1000 on 100 images,
    16 MiB chunks took 1.04x the time of a hand-written estimator, 64 MiB ones 1.60x and 1 GiB ones 1.79x
    (medians of 7 alternating rounds on a 2-core CPU: the working set falls out of the caches); a GPU
    takes the whole budget (not measured on one). ``whole_batch`` keeps the plan's batch of rows per chunk
    (a refined proposal is fitted per chunk of rows), the particles cut to fit."""
    if not isinstance(max_memory, int) or max_memory < 1:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    rows = plan.batch_size if plan.fixed_rows else min(plan.batch_size, 8)
    probe_k = max(1, min(num_samples, 64, 512 // rows))  # a small probe, also when it must take every row
    x, kw, indices = take_rows(data, condition, plan, 0, rows)
    devices = [data.device.index or 0] if data.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), PeakBytes() as meter:
        log_weights(model, guide, x, probe_k, plan, kw, indices)
    per_pair = max(1.0, meter.peak / (probe_k * rows))
    budget = max_memory if data.device.type == "cuda" else min(max_memory, CPU_CHUNK_BYTES)
    pairs = max(1, int(budget / per_pair))
    if max_elements is not None:
        pairs = min(pairs, max_elements)
    if plan.fixed_rows or whole_batch:
        return plan.batch_size, max(1, min(num_samples, pairs // plan.batch_size))
    chunk_rows = max(1, min(plan.batch_size, pairs // num_samples))
    return chunk_rows, max(1, min(num_samples, pairs // chunk_rows))


def splits_per_datum(model: Callable, guide: Callable | None, data: torch.Tensor,
                     condition: dict[str, torch.Tensor] | None = None, plate_name: str | None = None,
                     batch_size: int = 100) -> bool:
    """Whether :func:`log_marginal` gives one estimate per row from chunks of rows (no latent outside the data
    plate, no program that picks its own rows, no guide sized by all rows), so the rows can be split among
    workers."""
    plan = make_plan(model, guide, data, check_condition(condition, data, "data"), plate_name, batch_size)
    return not plan.fixed_rows


_structure = make_plan  # the name tests/inference/test_marginal.py imports the planner by

