"""Learning a discrete Bayesian network's tables in closed form, and the Dirichlet-CPT guide for SVI.

With complete data each CPT row's counts are sufficient: the Dirichlet(alpha) prior gives the posterior
Dirichlet(alpha + counts) and the evidence log B(alpha + n) - log B(alpha) per row (the Bayesian-Dirichlet
score). :class:`CPTLearning` adds these to :class:`~pprogen.models.bayesnet.BayesianNetwork`;
:class:`DirichletCPTGuide` is the mean-field posterior SVI fits for ``cpt="dirichlet"``.

Reference: Heckerman, Geiger & Chickering, Learning Bayesian Networks: The Combination of Knowledge and
Statistical Data, Machine Learning 1995.
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn


class CPTLearning:
    """Closed-form learning from complete data; mixed into ``BayesianNetwork``."""

    def counts(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per node, how often each (parent configuration, state) occurs in complete data."""
        x = self.check_data(x)
        if torch.isnan(x).any():
            raise ValueError("counting needs complete data; fit data with missing values by SVI (--elbo enum) instead")
        states = x.long()
        out = []
        for i, node in enumerate(self.nodes):
            table = torch.zeros(self.table_shape(i), device=x.device)
            index = tuple(states[:, p] for p in node.parents) + (states[:, i],)
            out.append(table.index_put_(index, torch.ones(len(x), device=x.device), accumulate=True))
        return out

    @torch.no_grad()
    def fit_counts(self, x: torch.Tensor, prior: float = 1.0) -> "CPTLearning":
        """Closed form: each CPT becomes its posterior mean (counts + prior) / (row total + K * prior)."""
        if self.cpd != "table" or self.cpt_mode != "learned":
            raise ValueError("fit_counts sets learned tables; build the network with cpd='table', cpt='learned'")
        if prior < 0:
            raise ValueError(f"prior must be non-negative, got {prior}")
        for i, table in enumerate(self.counts(x)):
            smoothed = table + prior
            probs = smoothed / smoothed.sum(-1, keepdim=True)  # an unseen row with prior 0 is NaN: keep it uniform
            probs = torch.nan_to_num(probs, nan=1.0 / table.shape[-1])
            getattr(self, f"log_cpt_{i}").copy_(probs.clamp_min(1e-12).log())
        return self

    def posterior_concentrations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The exact Dirichlet posterior of each CPT row from complete data: prior + counts."""
        return [self.prior_concentration + c for c in self.counts(x)]

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) of complete data with every CPT integrated out (the Bayesian-Dirichlet score, in closed form).

        Each row of each table contributes log B(alpha + n) - log B(alpha), B the multivariate Beta function.
        """
        def log_beta(a: torch.Tensor) -> torch.Tensor:
            return torch.lgamma(a).sum(-1) - torch.lgamma(a.sum(-1))

        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for counts in self.counts(x):
            alpha = torch.full_like(counts, self.prior_concentration).double()
            total = total + (log_beta(alpha + counts.double()) - log_beta(alpha)).sum()
        return total


class DirichletCPTGuide(PyroModule):
    """Mean-field Dirichlet posteriors over every CPT row of a ``cpt="dirichlet"`` network.

    Conjugate to the model with complete data: the optimum is the exact posterior, prior + counts.
    """

    def __init__(self, network: PyroModule) -> None:  # a BayesianNetwork (which imports this module)
        super().__init__()
        self.names = list(network.names)
        self.shapes = [network.table_shape(i) for i in range(len(network.nodes))]
        # mean and total concentration apart: the total moves over orders of magnitude (prior to prior +
        # counts) while the mean needs fine steps, which one log-concentration per cell conditions badly
        for i, shape in enumerate(self.shapes):
            self.register_parameter(f"mean_logits_{i}", nn.Parameter(torch.zeros(shape)))
            total = math.log(network.prior_concentration * shape[-1])
            self.register_parameter(f"log_total_{i}", nn.Parameter(torch.full(shape[:-1], total)))

    def concentration(self, name: str) -> torch.Tensor:
        i = self.names.index(name)
        mean = torch.softmax(getattr(self, f"mean_logits_{i}"), -1)
        return getattr(self, f"log_total_{i}").exp().unsqueeze(-1) * mean

    def mean(self, name: str) -> torch.Tensor:
        return torch.softmax(getattr(self, f"mean_logits_{self.names.index(name)}").detach(), -1)

    @torch.no_grad()
    def set_concentrations(self, concentrations: list[torch.Tensor]) -> None:
        """Put the guide at given Dirichlet parameters (e.g. ``network.posterior_concentrations(x)``)."""
        for i, c in enumerate(concentrations):
            getattr(self, f"mean_logits_{i}").copy_(c.log())
            getattr(self, f"log_total_{i}").copy_(c.sum(-1).log())

    def forward(self, *args: Any, **kwargs: Any) -> None:
        for i, name in enumerate(self.names):
            posterior = dist.Dirichlet(self.concentration(name))
            pyro.sample(f"cpt_{name}", posterior.to_event(len(self.shapes[i]) - 1))
