r"""Coupling layers: one half of the features passes unchanged and parameterizes an element-wise map of the other.

.. math::

    (x_a, x_b) = x, \qquad y_a = x_a, \quad y_b = \tau(x_b;\, h(x_a)), \qquad
    \log\left|\det \frac{\partial y}{\partial x}\right| = \sum_i \log \left|\tau'(x_{b,i})\right|

Both directions take one network pass. On vectors the halves are features and the conditioner :math:`h` an MLP;
on images ``(C, H, W)`` they are channels and the conditioner a small convolutional network (:class:`ConvNet`).
With the additive map this is NICE, with the affine map RealNVP and Glow, with the rational-quadratic spline NSF
(:mod:`pprogen.transforms.elementwise_maps`).

References: Dinh et al. 2015 (NICE, arXiv:1410.8516), 2017 (RealNVP, arXiv:1605.08803); Kingma & Dhariwal 2018
(Glow, arXiv:1807.03039); Durkan et al. 2019 (neural spline flows, arXiv:1906.04032).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pprogen.nn import MLP
from pprogen.transforms.bijection import Bijection
from pprogen.transforms.elementwise_maps import elementwise


class ConvNet(nn.Module):
    """A small conditioner for images: 3x3 conv, 1x1 conv, 3x3 conv (the last one starts at zero)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 3, padding=1),
        )

    def forward(self, x):
        batch = x.shape[:-3]
        return self.net(x.reshape((-1,) + x.shape[-3:])).reshape(batch + (-1,) + x.shape[-2:])


class Coupling(Bijection):
    r"""Coupling layer: one half of the features (vectors) or channels (images) passes unchanged and
    parameterizes an element-wise map of the other half. ``swap`` exchanges the halves' roles."""

    def __init__(self, shape: Sequence[int], kind: str = "affine", hidden_dims: Sequence[int] = (64, 64),
                 swap: bool = False, bins: int = 8, bound: float = 3.0, hidden_channels: int = 64) -> None:
        shape = tuple(shape)
        super().__init__(event_dim=len(shape))
        if len(shape) not in (1, 3):
            raise ValueError(f"coupling works on vectors (D,) or images (C, H, W), got shape {shape}")
        size = shape[0]
        if size < 2:
            raise ValueError(f"coupling needs at least 2 {'features' if len(shape) == 1 else 'channels'}, got {size}")
        self.map = elementwise(kind, bins, bound)
        self.kind = kind
        self.shape, self.swap = shape, swap
        self.split = (size // 2, size - size // 2)
        n_in, n_out = self.split[::-1] if swap else self.split
        if len(shape) == 1:
            self.net = MLP(n_in, hidden_dims, n_out * self.map.num_params)
            last = self.net[-1]
        else:
            self.net = ConvNet(n_in, n_out * self.map.num_params, hidden_channels)
            last = self.net.net[-1]
        with torch.no_grad():  # the layer starts close to the identity (not at it: gradients must flow)
            last.weight.mul_(1e-2)
            last.bias.zero_()

    def _halves(self, v):
        dim = -len(self.shape)
        a, b = v.split(self.split, dim)
        return (b, a) if self.swap else (a, b)

    def _join(self, cond, moved):
        parts = (moved, cond) if self.swap else (cond, moved)
        return torch.cat(parts, -len(self.shape))

    def _params(self, cond):
        out = self.net(cond)
        dim = -len(self.shape)
        return torch.movedim(out.unflatten(dim, (self.map.num_params, -1)), dim - 1, 0)

    def forward_ladj(self, x):
        cond, moved = self._halves(x)
        y, ladj = self.map.forward(moved, self._params(cond))
        return self._join(cond, y), self._sum_event(ladj)

    def inverse_ladj(self, y):
        cond, moved = self._halves(y)
        x, ladj = self.map.inverse(moved, self._params(cond))
        return self._join(cond, x), self._sum_event(ladj)
