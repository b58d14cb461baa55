r"""Uniform dequantization: discrete pixels scored by a continuous flow.

Pixels on a grid of :math:`L` intensity levels in [0, 1] (17 for the 8x8 digits, 256 for 8-bit images) become
continuous values in (0, 1) by uniform noise within their bin, and a flow's density on (0, 1)^D bounds the
probability of the discrete pixels from below:

.. math::

    y = \frac{x (L - 1) + u}{L}, \quad u \sim \mathcal{U}(0, 1)^D, \qquad
    \log P(x) \ge \mathbb{E}_u[\log p(y)] - D \log L

:func:`dequantized_log_prob` estimates the bound with importance weighting over ``num_samples`` draws of
:math:`u` (:math:`\log \frac{1}{K} \sum_k p(y_k) - D \log L`, tighter as :math:`K` grows); :class:`Dequantized`
is the same bound as a Pyro distribution over the discrete pixels, and :func:`quantize` puts continuous
samples back on the grid.

References: Theis, van den Oord & Bethge, A note on the evaluation of generative models, 2016,
arXiv:1511.01844; Ho et al., Flow++, 2019, arXiv:1902.00275 (the importance-weighted bound).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints


class Dequantized(TorchDistribution):
    """Pixels on a grid of ``num_levels`` levels in [0, 1], modelled by a continuous ``flow`` on (0, 1)^D
    through uniform dequantization; ``log_prob`` is the (importance-weighted, ``num_samples`` draws)
    dequantization bound on the probability of the discrete pixels."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, flow: dist.TransformedDistribution, num_levels: int, num_samples: int = 1,
                 validate_args=None) -> None:
        self.flow, self.num_levels, self.num_samples = flow, num_levels, num_samples
        super().__init__(flow.batch_shape, flow.event_shape, validate_args=validate_args)

    @property
    def support(self):
        return constraints.independent(constraints.unit_interval, len(self.event_shape))

    def expand(self, batch_shape: Sequence[int], _instance: Dequantized | None = None) -> Dequantized:
        return Dequantized(self.flow.expand(batch_shape), self.num_levels, self.num_samples)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dequantized_log_prob(self.flow.log_prob, value, self.num_levels, self.num_samples,
                                    math.prod(self.event_shape))

    @torch.no_grad()
    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> torch.Tensor:
        return quantize(self.flow.sample(sample_shape), self.num_levels)


def dequantize(x: torch.Tensor, levels: int, num_samples: int | None = None) -> torch.Tensor:
    """``(x (L - 1) + u) / L`` with ``u ~ U(0, 1)``; ``num_samples`` draws stacked in front when given."""
    shape = x.shape if num_samples is None else (num_samples,) + x.shape
    return (x * (levels - 1) + torch.rand(shape, dtype=x.dtype, device=x.device)) / levels


def quantize(y: torch.Tensor, levels: int) -> torch.Tensor:
    """The level of each continuous value in (0, 1), back on the grid ``k / (L - 1)``."""
    return (y * levels).floor().clamp(0, levels - 1) / (levels - 1)


def dequantized_log_prob(log_density: Callable, x: torch.Tensor, levels: int, num_samples: int, dim: int):
    """The dequantization bound ``log mean_k p(y_k) - D log L`` over ``num_samples`` draws of ``u``."""
    lp = log_density(dequantize(x, levels, num_samples)) - dim * math.log(levels)
    return lp[0] if num_samples == 1 else torch.logsumexp(lp, 0) - math.log(num_samples)
