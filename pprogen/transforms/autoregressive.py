r"""Masked autoregressive transforms on vectors with a MADE conditioner: MAF and IAF.

With :math:`u` the noise side, :math:`x` the data side and :math:`\tau` an element-wise map (affine or spline,
:mod:`pprogen.transforms.elementwise_maps`) whose parameters :math:`h_i` come from a masked network,

.. math::

    \text{MAF:}\quad x_i = \tau(u_i;\, h_i(x_{<i})), \qquad\qquad \text{IAF:}\quad x_i = \tau(u_i;\, h_i(u_{<i}))

so MAF computes ``log_prob`` in one network pass and samples in one pass per dimension, and IAF the other way
round. :func:`alternating_orders` gives the orders of a stack (identity, reversed, ...), so that every variable
conditions on every other somewhere in it.

References: Germain et al. 2015 (MADE, arXiv:1502.03509); Papamakarios et al. 2017 (MAF, arXiv:1705.07057);
Kingma et al. 2016 (IAF, arXiv:1606.04934).
"""

from __future__ import annotations

from typing import Sequence

import torch

from pprogen.nn import MaskedMLP
from pprogen.transforms.bijection import Bijection
from pprogen.transforms.elementwise_maps import elementwise


class MaskedAutoregressive(Bijection):
    r"""Autoregressive flow on vectors with a MADE conditioner.

    ``fast="density"`` (MAF): the conditioner reads the data side, so ``log_prob`` takes one pass and
    ``sample`` one pass per dimension. ``fast="sample"`` (IAF): the conditioner reads the noise side, so
    ``sample`` takes one pass and ``log_prob`` of new data one pass per dimension. ``order`` is the
    autoregressive order (a permutation of ``range(dim)``; alternate it between layers).
    """

    def __init__(self, dim: int, hidden_dims: Sequence[int] = (64, 64), fast: str = "density", kind: str = "affine",
                 order: Sequence[int] | None = None, bins: int = 8, bound: float = 3.0) -> None:
        super().__init__(event_dim=1)
        if fast not in ("density", "sample"):
            raise ValueError(f"fast must be 'density' (MAF) or 'sample' (IAF), got {fast!r}")
        self.dim, self.fast = dim, fast
        self.map = elementwise(kind, bins, bound)
        self.kind = kind
        self.net = MaskedMLP(dim, hidden_dims, self.map.num_params, order=order)

    def _params(self, v):
        # (..., dim * P) -> (P, ..., dim)
        return torch.movedim(self.net(v).unflatten(-1, (self.map.num_params, self.dim)), -2, 0)

    def _sequential(self, target, step):
        out = torch.zeros_like(target)
        for _ in range(self.dim):
            out, ladj = step(target, self._params(out))
        return out, ladj

    def forward_ladj(self, x):
        if self.fast == "sample":
            y, ladj = self.map.forward(x, self._params(x))
        else:
            y, ladj = self._sequential(x, lambda u, p: self.map.forward(u, p))
        return y, ladj.sum(-1)

    def inverse_ladj(self, y):
        if self.fast == "density":
            x, ladj = self.map.inverse(y, self._params(y))
        else:
            x, ladj = self._sequential(y, lambda v, p: self.map.inverse(v, p))
        return x, ladj.sum(-1)


def alternating_orders(x_dim: int, num_layers: int) -> list[list[int]]:
    """Autoregressive orders for a stack of MADE-style layers: the identity, then reversed, alternately, so that
    every variable conditions on every other somewhere in the stack."""
    forward = list(range(x_dim))
    return [forward if i % 2 == 0 else forward[::-1] for i in range(num_layers)]
