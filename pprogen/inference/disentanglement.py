"""Disentanglement scores of a representation against known factors of variation.

``mig(codes, factors)``: the mutual information gap (Chen, Li, Grosse & Duvenaud, Isolating Sources of
Disentanglement in VAEs, NeurIPS 2018): each code dimension discretized into equal-width bins, the mutual
information of every (dimension, factor) pair, and per factor the gap between its two most informative dimensions
divided by the factor's entropy, averaged over factors. 1: each factor in one dimension alone; 0: none.

``factor_vae_score(codes, factors)``: the FactorVAE score (Kim & Mnih, Disentangling by Factorising, ICML 2018):
each code dimension scaled by its standard deviation over the data; a vote fixes one factor at a random value,
takes ``batch`` inputs that share it, and names the active dimension of least variance among their codes; a
majority-vote classifier from dimension to factor is built on ``votes`` votes and its accuracy measured on as many
others. 1: every factor is the least variable dimension when fixed; chance is 1 / number of factors.

Codes are representations of the inputs (for a VAE, the guide's posterior means); ``factors`` their integer
ground-truth factor indices (N, F), every combination present (as in :func:`pprogen.data.load_sprites`).
"""

from __future__ import annotations

import torch


def _check(codes: torch.Tensor, factors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.as_tensor(codes).detach().double().cpu().reshape(codes.shape[0], -1)
    factors = torch.as_tensor(factors).detach().long().cpu()
    if factors.dim() != 2 or factors.shape[0] != codes.shape[0]:
        raise ValueError(f"factors must be (N, F) with one row per code, got {tuple(factors.shape)} for "
                         f"{codes.shape[0]} codes")
    if not torch.isfinite(codes).all():
        raise ValueError("the codes hold non-finite values")
    return codes, factors


def mutual_information(codes: torch.Tensor, factors: torch.Tensor, bins: int = 20) -> torch.Tensor:
    """(D, F) mutual information (nats) between each code dimension, discretized into ``bins`` equal-width bins,
    and each factor."""
    from sklearn.metrics import mutual_info_score

    codes, factors = _check(codes, factors)
    lo, hi = codes.min(0).values, codes.max(0).values
    binned = ((codes - lo) / (hi - lo).clamp_min(1e-12) * bins).floor().clamp(max=bins - 1).long()
    return torch.tensor([[mutual_info_score(binned[:, d].numpy(), factors[:, k].numpy())
                          for k in range(factors.shape[1])] for d in range(codes.shape[1])], dtype=torch.float64)


def mig(codes: torch.Tensor, factors: torch.Tensor, bins: int = 20) -> tuple[float, torch.Tensor]:
    """The mutual information gap and its value per factor."""
    from sklearn.metrics import mutual_info_score

    codes, factors = _check(codes, factors)
    if codes.shape[1] < 2:
        raise ValueError("the mutual information gap compares the two most informative dimensions: give at least 2")
    mi = mutual_information(codes, factors, bins)
    top = mi.topk(2, dim=0).values
    entropy = torch.tensor([mutual_info_score(f.numpy(), f.numpy()) for f in factors.T], dtype=torch.float64)
    per_factor = (top[0] - top[1]) / entropy
    return float(per_factor.mean()), per_factor


def factor_vae_score(codes: torch.Tensor, factors: torch.Tensor, votes: int = 800, batch: int = 64,
                     seed: int = 0, min_std: float = 0.05) -> float:
    """The FactorVAE score (see the module docstring); dimensions whose standard deviation over the data is below
    ``min_std`` (collapsed to the prior) are left out."""
    codes, factors = _check(codes, factors)
    std = codes.std(0)
    active = std >= min_std
    if not active.any():
        raise ValueError("every code dimension is collapsed (standard deviation below min_std): nothing to score")
    scaled = codes[:, active] / std[active]
    g = torch.Generator().manual_seed(seed)
    num_factors = factors.shape[1]

    def vote() -> tuple[int, int]:
        k = int(torch.randint(num_factors, (1,), generator=g))
        values = factors[:, k].unique()
        value = values[torch.randint(len(values), (1,), generator=g)]
        rows = (factors[:, k] == value).nonzero()[:, 0]
        pick = rows[torch.randint(len(rows), (batch,), generator=g)]
        return int(scaled[pick].var(0).argmin()), k

    table = torch.zeros(int(active.sum()), num_factors)
    for _ in range(votes):
        d, k = vote()
        table[d, k] += 1
    classify = table.argmax(1)
    correct = sum(int(classify[d] == k) for d, k in (vote() for _ in range(votes)))
    return correct / votes
