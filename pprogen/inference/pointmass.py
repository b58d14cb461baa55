r"""Point-mass guide sites: why the evidence estimators refuse them, and how they are found.

A guide that draws a continuous latent as a point, :math:`q(z \mid x) = \delta(z - \hat z(x))` (Pyro's
``AutoDelta`` and ``AutoLaplaceApproximation`` before its Laplace step, LDA's ``dist.Delta(doc_topics)``, any MAP
guide), has no density with respect to Lebesgue measure. Its ``log_prob`` at its own draw is 0 (a ``Delta``'s
``log_density``), so an importance weight becomes

.. math::

    \log w = \log p(x, \hat z) - 0 = \log p(x) + \log p(\hat z \mid x),

every particle the same: the estimate is :math:`\log p(x, \hat z)` with standard error 0 and ESS = K, which is
not a bound on :math:`\log p(x)` and lies *above* it wherever the posterior density at :math:`\hat z` exceeds 1
(on a 2-d Normal model with the guide at the exact posterior mode, by :math:`-\log(2\pi\sigma^2_{post})` per
datum). AIS started from such a guide anneals from a point and gives the same figure.

The estimators therefore refuse a guide with a point-mass site, in one line that names the site and what to use
instead. A site counts as a point mass when its draw is continuous and the same in two independent runs of the
guide on the same rows (a draw with a density repeats with probability 0), or when it is a ``Delta`` with no
continuous random auxiliary site in the guide to carry its density: Pyro's ``AutoNormal``,
``AutoDiagonalNormal``, ``AutoMultivariateNormal`` and the other autoguides draw an auxiliary Normal (or flow) and
put a ``Delta`` at its transform, whose ``log_density`` is the Jacobian; they have a density and pass.
"""

from __future__ import annotations

from typing import Callable

import torch

from pprogen.inference.tracing import SiteCollector, direct_call, sandbox

ALTERNATIVES = ("use a guide with a density (AutoNormal, AutoMultivariateNormal, make_guide('amortized_normal', "
                "model)), guide=None to propose from the prior, or ais(model, None, data) to anneal from the prior")


def _base(fn):
    """The innermost distribution of ``fn`` (through ``Independent``, masks, expansions, transforms)."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _is_delta(fn) -> bool:
    return type(_base(fn)).__name__ == "Delta"


def _continuous(site: dict) -> bool:
    return not site["fn"].support.is_discrete and site["value"].is_floating_point()


def point_mass_sites(guide_runs: tuple[list[dict], list[dict]]) -> list[str]:
    """The guide's point-mass sites, from two independent runs of it on the same rows (see the module docstring)."""
    first, second = guide_runs
    again = {s["name"]: s["value"] for s in second}
    carriers = [s for s in first if s["infer"].get("is_auxiliary") and _continuous(s) and not _is_delta(s["fn"])
                and not _same(s["value"], again.get(s["name"]))]
    found = []
    for site in first:
        if not _continuous(site):
            continue
        if _same(site["value"], again.get(site["name"])) or (_is_delta(site["fn"]) and not carriers):
            found.append(site["name"])
    return found


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    return b is not None and a.shape == b.shape and bool(torch.equal(a, b))


def refuse_point_masses(model: Callable, guide: Callable | None, data: torch.Tensor, condition: dict, rows: int,
                        what: str) -> None:
    """Refuse, in one line naming the site, a guide with a point-mass site: ``what`` (the estimator) would report
    log p(x, z_hat), not log p(x). The guide runs twice on the first ``rows`` rows (on all of them when it runs on
    all only: a table sized by the data, a plate that subsamples itself); a guide that runs on neither is left to
    the estimator's own checks."""
    if guide is None:
        return
    runs = None
    with sandbox(model, guide) as (_, guide_copy):
        for count in dict.fromkeys((min(rows, data.shape[0]), data.shape[0])):
            try:
                runs = [_run(guide_copy, data[:count], {k: v[:count] for k, v in condition.items()}) for _ in range(2)]
                break
            except Exception:  # noqa: BLE001  (the estimator's checks name the fault)
                continue
    found = point_mass_sites(runs) if runs else []
    if found:
        kind = "a Delta" if any(s["name"] == found[0] and _is_delta(s["fn"]) for s in runs[0]) else "the same draw twice"
        raise ValueError(
            f"guide site {found[0]!r} is a point mass ({kind}: AutoDelta, dist.Delta, a MAP guide): q({found[0]} | x) "
            f"has no density, so {what} would report log p(x, {found[0]}_hat) in place of log p(x) (no bound: it can "
            f"lie above the truth, with a standard error of 0); {ALTERNATIVES}"
        )


def _run(guide: Callable, x: torch.Tensor, condition: dict) -> list[dict]:
    with SiteCollector() as run:
        direct_call(guide)(x, **condition)
    return [s for s in run.sites if not s["is_observed"]]
