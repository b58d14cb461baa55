"""NUTS for small models, summarised through ArviZ: ``run_nuts(model, *args) -> InferenceData``.

Reference: Hoffman & Gelman, The No-U-Turn Sampler, JMLR 2014; ArviZ, Kumar et al., JOSS 2019.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from pyro.infer import MCMC, NUTS

if TYPE_CHECKING:
    from arviz import InferenceData


def run_nuts(
    model: Callable[..., Any],
    *args: Any,
    num_samples: int = 500,
    warmup_steps: int = 300,
    num_chains: int = 1,
    seed: int | None = 0,
    progress: bool = False,
    log_likelihood: bool = True,
    **kwargs: Any,
) -> tuple[InferenceData, MCMC]:
    """Sample the posterior of ``model(*args, **kwargs)`` with NUTS.

    Returns ``(InferenceData, MCMC)``: ``az.summary``, ``az.plot_trace`` and ``az.plot_posterior``
    work on the first; the second keeps Pyro's sampler (``get_samples``, diagnostics). Pass
    ``log_likelihood=False`` when the model cannot be vectorized over draws (enumerated sites).
    """
    import arviz as az

    if num_samples < 1 or warmup_steps < 0 or num_chains < 1:
        raise ValueError(
            f"num_samples and num_chains must be positive and warmup_steps non-negative, got "
            f"{num_samples}, {num_chains}, {warmup_steps}"
        )
    if seed is not None:
        torch.manual_seed(seed)
    mcmc = MCMC(NUTS(model), num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains,
                disable_progbar=not progress, mp_context="spawn" if num_chains > 1 else None)
    mcmc.run(*args, **kwargs)
    return az.from_pyro(mcmc, log_likelihood=log_likelihood), mcmc
