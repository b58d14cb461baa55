r"""Planar flows: a one-unit residual map with a cheap Jacobian determinant.

.. math::

    f(z) = z + \hat u \tanh(w^\top z + b), \qquad
    \log\left|\det \frac{\partial f}{\partial z}\right| = \log\left|1 + \left(1 - \tanh^2(w^\top z + b)\right)
    w^\top \hat u\right|

with :math:`\hat u` chosen so that :math:`w^\top \hat u \ge -1`, which makes :math:`f` invertible. The inverse
has no closed form, so a planar flow scores only its own samples (and raises
:class:`~pprogen.transforms.bijection.NoInverseError` otherwise). :class:`Planar` holds its parameters;
:class:`ConditionalPlanar` takes them per data point from an amortized guide's encoder.

Reference: Rezende & Mohamed, Variational Inference with Normalizing Flows, 2015, arXiv:1505.05770.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pprogen.transforms.bijection import Bijection


def planar_map(z, u, w, b):
    r"""Rezende & Mohamed's planar map :math:`z + \hat u\, \tanh(w^\top z + b)` with :math:`\hat u` chosen so
    that :math:`w^\top \hat u \ge -1` (invertible), and its log|det J|. Parameters broadcast with ``z``."""
    wu = (w * u).sum(-1, keepdim=True)
    m = F.softplus(wu)  # w'u_hat = m - 1 > -1
    u_hat = u + (m - 1 - wu) * w / (w.pow(2).sum(-1, keepdim=True) + 1e-12)
    t = torch.tanh((w * z).sum(-1, keepdim=True) + b)
    # det J = 1 + (1 - t^2) w'u_hat = t^2 + (1 - t^2) m: a sum of non-negative terms, no cancellation
    ladj = torch.log(t.pow(2) + (1 - t.pow(2)) * m).squeeze(-1)
    return z + u_hat * t, ladj


class Planar(Bijection):
    """A planar flow step on vectors of size ``dim``; no closed-form inverse."""

    def __init__(self, dim: int) -> None:
        super().__init__(event_dim=1)
        bound = 1 / math.sqrt(dim)
        self.u = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.w = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.zeros(1))

    def forward_ladj(self, x):
        return planar_map(x, self.u, self.w, self.b)


class ConditionalPlanar(Bijection):
    """Planar steps whose parameters come per data point (an amortized guide's encoder):
    ``params`` is ``(..., K * (2 * dim + 1))`` for ``K`` steps."""

    def __init__(self, params: torch.Tensor, dim: int) -> None:
        super().__init__(event_dim=1)
        self.dim = dim
        self.params = params.unflatten(-1, (-1, 2 * dim + 1))

    def forward_ladj(self, x):
        ladj = 0
        for k in range(self.params.shape[-2]):
            p = self.params[..., k, :]
            x, step = planar_map(x, p[..., : self.dim], p[..., self.dim : 2 * self.dim], p[..., -1:])
            ladj = ladj + step
        return x, ladj
