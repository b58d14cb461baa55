"""Out-of-distribution scores from a model's log-likelihoods: by the likelihood itself and by a typicality test.

A model of p(x) flags an input as out of distribution when it is improbable; but a high likelihood is not the same
as being typical of the data (Nalisnick et al. 2019, "Do deep generative models know what they don't know?"):
models trained on one image set often give a simpler set higher likelihood than their own test data. The
typicality test (Nalisnick, Matsukawa, Teh and Lakshminarayanan 2019, arXiv:1906.02994) asks instead how far a
batch's mean negative log-likelihood lies from the model's entropy, estimated on held-out in-distribution data:
``|mean(-log p(x_1..M)) - H|``; M = 1 scores single inputs.

Both scores are reported as AUROC (the probability that an in-distribution input scores as more in-distribution
than an out-of-distribution one, ties counted half) and as the false positive rate at 95% true positive rate (the
share of out-of-distribution inputs accepted by the threshold that accepts 95% of the in-distribution test data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """P(in > out) + P(in = out) / 2 over all pairs, for scores that are higher for in-distribution inputs
    (the Mann-Whitney statistic, from average ranks)."""
    from scipy.stats import rankdata

    a, b = _vector(in_scores, "in_scores"), _vector(out_scores, "out_scores")
    ranks = rankdata(torch.cat([a, b]).numpy())
    n, m = a.numel(), b.numel()
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


def fpr_at_tpr(in_scores: torch.Tensor, out_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """The share of out-of-distribution inputs that score at or above the highest threshold that still accepts
    at least ``tpr`` of the in-distribution inputs (scores higher for in-distribution inputs)."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    a, b = _vector(in_scores, "in_scores"), _vector(out_scores, "out_scores")
    ordered = torch.sort(a).values
    rejected = math.floor((1 - tpr) * a.numel() + 1e-9)  # at most this many in-distribution inputs below it
    threshold = ordered[rejected]
    return float((b >= threshold).double().mean())


def _vector(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().double().cpu().reshape(-1)
    if x.numel() == 0:
        raise ValueError(f"{name} is empty: nothing to compare")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds {int((~torch.isfinite(x)).sum())} non-finite log-likelihoods; a model that "
                         "gives -inf cannot be compared by rank (check the data's range against the model's support)")
    return x


def batch_means(log_prob: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean log-likelihood of consecutive batches of ``batch`` rows (a last, incomplete batch is dropped)."""
    if batch < 1:
        raise ValueError(f"the typicality batch must be at least 1 input, got {batch}")
    n = log_prob.numel() // batch
    if n == 0:
        raise ValueError(f"{log_prob.numel()} inputs make no batch of {batch}; use a smaller batch or more data")
    return log_prob.reshape(-1)[: n * batch].reshape(n, batch).double().mean(1)


@dataclass
class OODReport:
    """Per-input log-likelihoods of in-distribution test data (``log_prob_in``), the other set (``log_prob_out``)
    and held-out in-distribution data that estimates the entropy (``log_prob_reference``), with the scores."""

    log_prob_in: torch.Tensor
    log_prob_out: torch.Tensor
    log_prob_reference: torch.Tensor
    batch: int = 1

    @property
    def entropy(self) -> float:
        """The model's entropy estimated on the reference data: mean -log p (nats)."""
        return float(-self.log_prob_reference.double().mean())

    def scores(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(in, out) scores, higher for in-distribution: ``likelihood`` (log p, per input) or ``typicality``
        (minus the distance of a batch's mean -log p from the entropy)."""
        if kind == "likelihood":
            return self.log_prob_in.double(), self.log_prob_out.double()
        if kind == "typicality":
            h = self.entropy
            return tuple(-(-batch_means(lp, self.batch) - h).abs() for lp in (self.log_prob_in, self.log_prob_out))
        raise ValueError(f"unknown OOD score {kind!r}; choose likelihood or typicality")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "nll_in": float(-self.log_prob_in.double().mean()), "nll_out": float(-self.log_prob_out.double().mean()),
            "entropy": self.entropy, "num_in": self.log_prob_in.numel(), "num_out": self.log_prob_out.numel(),
            "num_reference": self.log_prob_reference.numel(), "typicality_batch": self.batch,
            # the known failure of raw likelihood: the other set is *more* probable than the model's own test data
            "out_more_likely": bool(self.log_prob_out.double().mean() > self.log_prob_in.double().mean()),
        }
        for kind in ("likelihood", "typicality"):
            a, b = self.scores(kind)
            out[kind] = {"auroc": auroc(a, b), "fpr_at_95_tpr": fpr_at_tpr(a, b)}
        return out


def ood_report(log_prob_in: torch.Tensor, log_prob_out: torch.Tensor, log_prob_reference: torch.Tensor,
               batch: int = 1) -> OODReport:
    """An :class:`OODReport` from per-input log-likelihoods (checked finite and non-empty)."""
    parts = [_vector(t, n) for t, n in ((log_prob_in, "log_prob_in"), (log_prob_out, "log_prob_out"),
                                        (log_prob_reference, "log_prob_reference"))]
    report = OODReport(*parts, batch=batch)
    for lp in parts[:2]:
        batch_means(lp, batch)  # enough inputs for one batch on each side
    return report


def detect_ood(model: Callable[..., Any], guide: Callable[..., Any] | None, data_in: torch.Tensor,
               data_out: torch.Tensor, data_reference: torch.Tensor, num_samples: int = 1000, batch: int = 1,
               plate_name: str | None = None) -> OODReport:
    """Score in-distribution test rows ``data_in`` against ``data_out`` with ``model``'s log-likelihood (exact
    where the model has one, else importance sampling with ``guide`` and ``num_samples`` particles, as
    :func:`pprogen.inference.evaluate`); ``data_reference`` (held-out in-distribution rows) estimates the entropy
    for the typicality test of batches of ``batch`` inputs. ``report.summary()`` gives AUROC and FPR at 95% TPR."""
    from pprogen.capabilities import capabilities
    from pprogen.inference.evaluate import evaluate

    if capabilities(model).reconstruction:
        raise ValueError(f"{type(model).__name__.lower()} is an autoencoder: it has no likelihood to score inputs as "
                         "in or out of distribution")
    log_probs = [evaluate(model, guide, d, num_samples=num_samples, plate_name=plate_name).log_prob
                 for d in (data_in, data_out, data_reference)]
    return ood_report(*log_probs, batch=batch)
