r"""Radial flows: contract or expand space around a learned centre.

.. math::

    f(z) = z + \beta h(\alpha, r)(z - z_0), \quad h = \frac{1}{\alpha + r}, \quad r = |z - z_0|, \qquad
    \log\left|\det \frac{\partial f}{\partial z}\right| = (D - 1) \log(1 + \beta h) + \log(1 + \beta h - \beta h^2 r)

with :math:`\alpha > 0` and :math:`\beta \ge -\alpha`, which makes :math:`f` invertible. The inverse has no
closed form, so a radial flow scores only its own samples (and raises
:class:`~pprogen.transforms.bijection.NoInverseError` otherwise).

Reference: Rezende & Mohamed, Variational Inference with Normalizing Flows, 2015, arXiv:1505.05770.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pprogen.transforms.bijection import Bijection


def radial_map(z, z0, log_alpha, beta_raw):
    r"""Radial map :math:`z + \beta h(\alpha, r)(z - z_0)`, :math:`h = 1 / (\alpha + r)`, with
    :math:`\beta = -\alpha + \mathrm{softplus}(\cdot)` (invertible), and its log|det J|."""
    alpha = log_alpha.exp()
    beta = -alpha + F.softplus(beta_raw)
    diff = z - z0
    r = diff.norm(dim=-1, keepdim=True)
    h = 1 / (alpha + r)
    bh = beta * h
    d = z.shape[-1]
    ladj = ((d - 1) * torch.log1p(bh) + torch.log1p(bh - beta * h.pow(2) * r)).squeeze(-1)
    return z + bh * diff, ladj


class Radial(Bijection):
    """A radial flow step on vectors of size ``dim``; no closed-form inverse."""

    def __init__(self, dim: int) -> None:
        super().__init__(event_dim=1)
        bound = 1 / math.sqrt(dim)
        self.z0 = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.log_alpha = nn.Parameter(torch.zeros(1))
        self.beta = nn.Parameter(torch.zeros(1))

    def forward_ladj(self, x):
        return radial_map(x, self.z0, self.log_alpha, self.beta)
