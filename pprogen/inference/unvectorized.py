"""Programs that break with their particles in a plate, run one particle at a time.

pprogen draws an estimator's particles (importance samples, annealed chains, ELBO particles) in one
``pyro.plate`` left of the program's own plates. A program that indexes a batched tensor by a latent, as Pyro's
GMM tutorial does with ``locs[assignment]`` and its LDA with ``topic_words[word_topics]``, breaks there: inside the
plate ``locs`` has a particle dimension first, and the index lands on it. Pyro's answer is
``vectorize_particles=False``; pprogen's estimators find out on a probe (two particles on a few rows, in a
sandbox: :func:`pprogen.inference.weighting.make_plan` for the evidence, :func:`unvectorized_loss` for ``fit``)
and then run the particles in a Python loop, with no plate: the same estimator, at about K times the Python
overhead. The results say so (``Evidence.vectorized``, the evaluation's description, ``History.fast_path``).
Measured against the vectorized path on programs where both run (2-core CPU, medians of 5 alternating runs):
log_marginal with K = 1000 took 57x (a 2-d Normal model) and 99x (a 5-step state-space model) the time, ais with
8 chains 7.6x, fit with ``trace`` and 8 particles 6.0x.

- :func:`~pprogen.inference.log_marginal`: :func:`~pprogen.inference.weighting.log_weights` loops over the
  particles of each chunk; the per-datum weights, standard errors and k-hat are computed as before.
- :func:`~pprogen.inference.ais`: :class:`LoopedChains` runs C chains of one, in lockstep, so that each step size
  is still adapted on the mean acceptance of all C chains of its row (one chain's own acceptance would make the
  transition depend on its state and bias the estimate).
- :func:`~pprogen.inference.fit` with ``num_particles > 1``: the estimator is rebuilt with
  ``vectorize_particles=False`` (``trace``, ``analytic``, ``stl`` and Pyro's ``meanfield``, ``graph``, ``enum``);
  the importance-weighted bounds (``iwae``, ``renyi``, ``iwae_dreg``) need their particles in one plate and are
  refused in one line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pprogen.inference.annealing import AnnealedChains, Annealing
from pprogen.inference.step import build_loss
from pprogen.inference.tracing import sandbox
from pprogen.inference.weighting import Plan, Rows

NOTE = ("particles run one at a time (the program breaks with them in a plate: it indexes a batched tensor by a latent), "
        "about K times one particle's run")


def make_chains(model, guide, rows: Rows, plan: Plan, annealing: Annealing) -> AnnealedChains:
    """The annealed chains of one chunk of rows: in one plate, or looped when the program does not vectorize."""
    if plan.vectorized:
        return AnnealedChains(model, guide, rows, plan, annealing)
    return LoopedChains(model, guide, rows, plan, annealing)


class LoopedChains(AnnealedChains):
    """C annealed chains of one chain each, run alone (no particle plate) and stepped in lockstep: the interface of
    :class:`~pprogen.inference.annealing.AnnealedChains` (states, points and diagnostics with the chains along the
    first axis), so that its ``run`` drives them unchanged."""

    def __init__(self, model, guide, rows: Rows, plan: Plan, annealing: Annealing) -> None:
        super().__init__(model, guide, rows, plan, annealing)
        one = dataclasses.replace(annealing, num_chains=1)
        self.chains = [AnnealedChains(model, guide, rows, plan, one) for _ in range(annealing.num_chains)]

    def initial(self, start: dict[str, torch.Tensor] | None) -> list[dict[str, torch.Tensor]]:
        states = [chain.initial(None if start is None else {n: v[c] for n, v in start.items()})
                  for c, chain in enumerate(self.chains)]
        self.latents = self.chains[0].latents
        return states

    def evaluate(self, states: list[dict[str, torch.Tensor]]):
        points = [chain.evaluate(state) for chain, state in zip(self.chains, states)]
        return (torch.cat([p[0] for p in points]), torch.cat([p[1] for p in points]),
                [p[2] for p in points], [p[3] for p in points])

    def check_differentiable(self, point) -> None:
        log_q, log_p, grad_q, grad_p = point
        for c, chain in enumerate(self.chains):
            chain.check_differentiable((log_q[c:c + 1], log_p[c:c + 1], grad_q[c], grad_p[c]))

    def transition(self, point, beta: float, step_size: torch.Tensor):
        states, log_q, log_p, grad_q, grad_p = point
        moved = [chain.transition((states[c], log_q[c:c + 1], log_p[c:c + 1], grad_q[c], grad_p[c]), beta,
                                  step_size[c:c + 1]) for c, chain in enumerate(self.chains)]
        chosen = ([m[0][0] for m in moved], torch.cat([m[0][1] for m in moved]), torch.cat([m[0][2] for m in moved]),
                  [m[0][3] for m in moved], [m[0][4] for m in moved])
        return chosen, torch.cat([m[1] for m in moved]), torch.cat([m[2] for m in moved])


IMPORTANCE_WEIGHTED = ("iwae", "renyi", "iwae_dreg")


def unvectorized_loss(loss_module, elbo: Any, num_particles: int, beta: float, probe, **elbo_kw):
    """``(loss module, note)``: ``fit``'s loss module as built, or, when the program breaks with its
    ``num_particles`` particles in a plate and runs with them looped (probes on ``probe = (rows, condition)`` in a
    sandbox: the estimator, then ``trace`` and ``enum``, each with and without the plate), one rebuilt with
    ``vectorize_particles=False`` and :data:`NOTE`. Only estimators named by a string are rebuilt; an
    importance-weighted bound is refused in one line."""
    if num_particles < 2 or not isinstance(elbo, str):
        return loss_module, None
    model, guide = loss_module.model, loss_module.guide
    with sandbox(model, guide) as (model_copy, guide_copy):
        def runs(name: str, vectorize: bool, **kw) -> str | None:
            """None when the estimator ``name`` runs on the probe, else the first line of its error."""
            try:
                fresh = build_loss(model_copy, guide_copy, name, num_particles, beta, **kw,
                                   **({} if vectorize else {"vectorize_particles": False}))
                fresh.elbo.loss(model_copy, guide_copy, probe[0], **probe[1])
            except Exception as err:  # noqa: BLE001  (any failure: is it the plate's?)
                return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return None

        first = runs(elbo, True, **elbo_kw)
        if first is None:
            return loss_module, None
        candidates = dict.fromkeys(([] if elbo in IMPORTANCE_WEIGHTED else [elbo]) + ["trace", "enum"])
        if not any(runs(name, False) is None and runs(name, True) is not None for name in candidates):
            return loss_module, None  # not the plate's fault: the training path raises the program's own error
    if elbo in IMPORTANCE_WEIGHTED:
        raise ValueError(
            f"the program breaks with its {num_particles} particles in a plate ({first}: it indexes a batched tensor "
            f"by a latent), and elbo {elbo!r} needs its particles in one plate; fit with elbo 'trace' or 'enum' (their "
            "particles then run one at a time), or num_particles=1"
        )
    rebuilt = build_loss(model, guide, elbo, num_particles, beta, vectorize_particles=False, **elbo_kw)
    return rebuilt, NOTE
