"""``evaluate``: one entry point that scores a model (and guide) on data, for Python and the command line.

The route follows what the model declares (:mod:`pprogen.capabilities`): its exact ``log_prob`` when it has
one; the posterior predictive ``predictive_log_prob`` for models whose latents are all global; otherwise
importance sampling with the guide as proposal (:func:`~pprogen.inference.log_marginal`). ``method="ais"``
and ``method="bdmc"`` anneal instead (:func:`~pprogen.inference.ais`, :func:`~pprogen.inference.bdmc`). Both
refuse a point-mass guide (``AutoDelta``: :mod:`pprogen.inference.pointmass`), and the description says when the
particles ran one at a time (:mod:`pprogen.inference.unvectorized`).
Under ``torchrun`` every rank scores its share of the rows and every rank gets all of them back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

import torch

from pprogen.capabilities import capabilities
from pprogen.distributed import World, current, gather_shards, my_rows
from pprogen.inference.unvectorized import NOTE

if TYPE_CHECKING:
    from arviz import InferenceData

METHODS = ("auto", "is", "ais", "bdmc")
LN2 = math.log(2)


@dataclass
class Evaluation:
    """A model's score on data. ``method`` is ``exact``, ``predictive``, ``is``, ``ais`` or ``bdmc`` and
    ``description`` says it in words; ``log_prob`` holds the per-datum estimates (BDMC: the lower bounds on
    the simulated data); ``summary`` is what ``pprogen evaluate`` prints and writes to ``summary.json``;
    ``result`` keeps the estimator's own object (:class:`~pprogen.inference.Evidence`,
    :class:`~pprogen.inference.AnnealedEvidence`, :class:`~pprogen.inference.Sandwich`) with its diagnostics."""

    method: str  # exact, predictive, is, ais, bdmc, or reconstruction (an autoencoder: log_prob is NaN)
    description: str
    log_prob: torch.Tensor
    summary: dict[str, Any]
    result: Any = None

    def to_inference_data(self) -> InferenceData:
        """ArviZ ``InferenceData`` of the per-datum results (and their diagnostics when the method has any)."""
        if self.result is not None:
            return self.result.to_inference_data()
        import arviz as az

        return az.from_dict(log_likelihood={"x": self.log_prob.detach().cpu().numpy()[None, None]})


def evaluate(
    model: Callable,
    guide: Callable | None,
    data: torch.Tensor,
    method: str = "auto",
    num_samples: int = 1000,
    condition: dict[str, torch.Tensor] | None = None,
    plate_name: str | None = None,
    dim: int | None = None,
    world: World | None = None,
    refine: int = 0,
    **annealing: Any,
) -> Evaluation:
    """Score ``model`` on ``data`` (rows along the first dimension).

    ``method="auto"`` takes the model's own route (exact, posterior predictive with ``num_samples`` guide
    draws of the globals, or importance sampling with ``num_samples`` particles); ``"is"`` asks for
    importance sampling, ``"ais"`` / ``"bdmc"`` for annealing, with ``annealing`` passed on to
    :func:`~pprogen.inference.ais` (``num_steps``, ``num_chains``, ``leapfrog_steps``, ``schedule``, ...).
    ``dim`` (values per datum) adds bits/dim to the summary; models that declare ``reports_bits_per_dim``
    report it anyway. ``condition`` holds per-datum keyword arguments (a conditional model's labels ``y``).
    ``refine`` (Adam steps) refines importance sampling's proposal per datum first
    (:func:`~pprogen.inference.log_marginal`'s ``refine``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown evaluation method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(data, torch.Tensor) or data.dim() == 0 or data.shape[0] == 0:
        raise ValueError("data must be a non-empty tensor (N, ...): nothing to evaluate")
    caps = capabilities(model)
    name = type(model).__name__.lower()
    if caps.adversarial and not caps.stated_likelihood:
        raise ValueError(f"{name} is a GAN: it has no likelihood to evaluate; score its samples with "
                         "pprogen.inference.metrics.evaluate_samples(model, dataset, split)")
    world = current() if world is None else world
    condition = condition or {}
    if caps.reconstruction:
        if method != "auto":
            raise ValueError(f"{name} has no likelihood (an autoencoder): it is scored by reconstruction error, not "
                             f"by {method}; use method='auto' (the command line's default)")
        return _reconstruction(model, guide, data, world, condition)
    given = ", log p(x | y) given the labels" if caps.conditional else ""
    if refine and (method in ("ais", "bdmc") or caps.scoring in ("exact", "predictive") or caps.reconstruction):
        route = (f"method {method!r} anneals from the guide" if method in ("ais", "bdmc") else
                 f"{name} is not scored by importance sampling over per-datum latents")
        raise ValueError(f"refine refines importance sampling's proposal, and {route}; evaluate with refine=0")
    if method == "auto" and caps.scoring in ("exact", "predictive"):
        return _direct(model, guide, data, caps, num_samples, dim, world, condition)
    if caps.scoring in ("exact", "predictive"):
        route = "computes log p(x) exactly" if caps.scoring == "exact" else "has only global latents"
        raise ValueError(f"{name} {route}: it is scored by its own route, not by {method}; use method='auto' "
                         "(the command line's default)")
    if method in ("ais", "bdmc"):
        return _annealed(model, guide, data, method, condition, plate_name, dim, world, given, annealing)
    if annealing:
        raise ValueError(f"{', '.join(sorted(annealing))} set annealed chains; they apply to method='ais' or 'bdmc'")
    evidence = sharded_log_marginal(model, guide, data, world, condition, num_samples=num_samples,
                                     plate_name=plate_name, dim=dim, refine=refine)
    proposal = f"guide refined per example by {refine} Adam steps" if refine else "guide"
    text = f"importance sampling ({proposal} as proposal){given}{_looped(evidence)}"
    return Evaluation("is", text, evidence.log_prob, {**evidence.summary(), "method": text}, evidence)


def _direct(model, guide, data, caps, num_samples, dim, world, condition=None) -> Evaluation:
    """Exact log p(x) (log p(x | y) for a conditional model, given ``condition``), or the posterior predictive for
    global-latent models; rows in chunks of 1000."""
    if caps.scoring == "exact":
        score, kind, text = model.log_prob, "exact", caps.log_prob_method
        if caps.conditional:
            text += ", log p(x | y) given the labels"
    else:
        score = lambda rows, **_: model.predictive_log_prob(rows, guide, num_samples)  # noqa: E731
        kind, text = "predictive", f"posterior predictive ({num_samples} guide draws of the globals)"
    with torch.no_grad():
        rows = my_rows(data.shape[0], world)
        mine = data[rows]
        given = {k: v[rows] for k, v in (condition or {}).items()}
        log_prob = torch.cat([score(mine[i: i + 1000], **{k: v[i: i + 1000] for k, v in given.items()})
                              for i in range(0, mine.shape[0], 1000)])
        log_prob = gather_shards(log_prob, data.shape[0], world)
    nll = -log_prob.double()
    summary = {"nll": nll.mean().item(), "nll_stderr": (nll.std() / nll.numel() ** 0.5).item(),
               "num_data": nll.numel(), "method": text}
    dim = dim or (data[0].numel() if caps.bits_per_dim else None)
    if dim:
        summary["bits_per_dim"] = summary["nll"] / (dim * LN2)
    return Evaluation(kind, text, log_prob, summary)


def _reconstruction(model, guide, data, world, condition) -> Evaluation:
    """An autoencoder's reconstruction error per row (it has no log p(x)): the mean squared error per value and
    its training loss (Bernoulli cross-entropy, or half the squared error plus the Gaussian constant), in chunks
    of 1000 rows. ``log_prob`` holds NaN: there is no likelihood to report."""
    with torch.no_grad():
        rows = my_rows(data.shape[0], world)
        mine = data[rows]
        given = {k: v[rows] for k, v in condition.items()}
        parts = [model.reconstruction_error(mine[i: i + 1000], guide, **{k: v[i: i + 1000] for k, v in given.items()})
                 for i in range(0, mine.shape[0], 1000)]
        if not parts:  # a rank with no rows (more ranks than rows): empty results of the right kinds
            parts = [{k: v[:0] for k, v in model.reconstruction_error(data[:1], guide).items()}]
        errors = {k: gather_shards(torch.cat([p[k] for p in parts]), data.shape[0], world).double() for k in parts[0]}
    per_value, loss = errors["squared_error"] / data[0].numel(), errors["loss"]
    text = "reconstruction error (an autoencoder: no likelihood)"
    summary = {"mse": per_value.mean().item(), "mse_stderr": (per_value.std() / per_value.numel() ** 0.5).item(),
               "reconstruction_loss": loss.mean().item(),
               "reconstruction_loss_stderr": (loss.std() / loss.numel() ** 0.5).item(),
               "num_data": per_value.numel(), "method": text}
    return Evaluation("reconstruction", text, torch.full((data.shape[0],), math.nan), summary)


def _annealed(model, guide, data, method, condition, plate_name, dim, world, given, annealing) -> Evaluation:
    from pprogen.inference.ais import ais, bdmc

    if world.active:
        raise ValueError(f"method {method!r} runs in one process; run it without torchrun")
    if method == "ais":
        evidence = ais(model, guide, data, condition=condition, plate_name=plate_name, dim=dim, **annealing)
        text = f"annealed importance sampling (guide to posterior){given}{_looped(evidence)}"
        return Evaluation("ais", text, evidence.log_prob, {**evidence.summary(), "method": text}, evidence)
    sandwich = bdmc(model, guide, data, condition=condition, plate_name=plate_name, **annealing)
    text = f"bidirectional Monte Carlo{given}, on {data.shape[0]} rows simulated from the model{_looped(sandwich.lower)}"
    return Evaluation("bdmc", text, sandwich.lower.log_prob, {**sandwich.summary(), "method": text}, sandwich)


def _looped(evidence) -> str:
    """The description's note when the particles (or chains) ran one at a time."""
    return "" if evidence.vectorized else f"; {NOTE}"


def sharded_log_marginal(model, guide, data: torch.Tensor, world: World,
                          condition: dict[str, torch.Tensor] | None = None, **kw: Any):
    """:func:`pprogen.inference.log_marginal` with each rank estimating its share of the rows; every rank
    gets the whole :class:`~pprogen.inference.marginal.Evidence` back, per-datum results in data order.
    A model with global latents (one joint estimate for the whole data set) is not split."""
    from pprogen.inference.marginal import log_marginal, splits_per_datum

    if not world.active or not splits_per_datum(model, guide, data, condition, kw.get("plate_name"), kw.get("batch_size", 100)):
        return log_marginal(model, guide, data, condition=condition, **kw)
    rows = my_rows(data.shape[0], world)
    local = log_marginal(model, guide, data[rows], condition={k: v[rows] for k, v in (condition or {}).items()}, **kw)
    per_datum = ("log_prob", "stderr", "ess", "khat", "log_weights")
    return replace(local, **{k: gather_shards(getattr(local, k), data.shape[0], world) for k in per_datum})
