r"""Element-wise maps: the bijection inside coupling and autoregressive layers, parameterized per element by a
conditioner network.

Each map takes values ``x`` and parameters ``p`` stacked along a leading dimension of size ``num_params``, and
returns the image and the log-derivative per element, in either direction:

- :class:`Affine` — :math:`y = x\, e^{s} + m`, with the log-scale :math:`s` soft-clamped (RealNVP, Glow, MAF, IAF);
- :class:`Additive` — :math:`y = x + m`, volume-preserving (NICE);
- :class:`RationalQuadratic` — a monotonic rational-quadratic spline on :math:`[-B, B]` whose knots come from
  ``3K - 1`` parameters (widths, heights, inner derivatives), with identity tails outside (neural spline flows).

:func:`elementwise` builds one by name (one of :data:`ELEMENTWISE`).

References: Dinh et al. 2015 (NICE, arXiv:1410.8516), 2017 (RealNVP, arXiv:1605.08803); Durkan et al. 2019
(neural spline flows, arXiv:1906.04032).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_clamp(t: torch.Tensor, bound: float = 3.0) -> torch.Tensor:
    """``bound * tanh(t / bound)``: keeps log-scales in (-bound, bound) without killing gradients."""
    return bound * torch.tanh(t / bound)


class Affine:
    """``y = x exp(s) + m`` per element; 2 parameters per element."""

    num_params = 2

    @staticmethod
    def forward(x, p):
        m, s = p[0], soft_clamp(p[1])
        return x * s.exp() + m, s

    @staticmethod
    def inverse(y, p):
        m, s = p[0], soft_clamp(p[1])
        return (y - m) * (-s).exp(), s


class Additive:
    """``y = x + m`` (NICE); volume-preserving; 1 parameter per element."""

    num_params = 1

    @staticmethod
    def forward(x, p):
        return x + p[0], torch.zeros_like(x)

    @staticmethod
    def inverse(y, p):
        return y - p[0], torch.zeros_like(y)


class RationalQuadratic:
    """Monotonic rational-quadratic spline on ``[-bound, bound]`` with ``bins`` bins and identity tails
    (Durkan et al. 2019); ``3 * bins - 1`` parameters per element (widths, heights, inner derivatives)."""

    def __init__(self, bins: int = 8, bound: float = 3.0, min_width: float = 1e-3, min_derivative: float = 1e-3):
        if bins < 1 or bound <= 0:
            raise ValueError(f"spline needs bins >= 1 and bound > 0, got bins={bins}, bound={bound}")
        self.bins, self.bound, self.min_width, self.min_derivative = bins, bound, min_width, min_derivative
        self.num_params = 3 * bins - 1

    def _knots(self, p):
        k, b = self.bins, self.bound
        raw_w, raw_h, raw_d = p[:k], p[k : 2 * k], p[2 * k :]

        def edges(raw):
            size = F.softmax(torch.movedim(raw, 0, -1), -1)
            size = self.min_width + (1 - self.min_width * k) * size
            cum = F.pad(torch.cumsum(size, -1), (1, 0)) * 2 * b - b
            cum = torch.cat([torch.full_like(cum[..., :1], -b), cum[..., 1:-1], torch.full_like(cum[..., :1], b)], -1)
            return cum, cum[..., 1:] - cum[..., :-1]

        xs, widths = edges(raw_w)
        ys, heights = edges(raw_h)
        inner = self.min_derivative + F.softplus(torch.movedim(raw_d, 0, -1))
        # the boundary derivatives are 1 so the spline joins the identity tails smoothly
        d = F.pad(inner, (1, 1), value=1.0)
        return xs, widths, ys, heights, d

    @staticmethod
    def _gather(t, idx):
        return t.gather(-1, idx.unsqueeze(-1)).squeeze(-1)

    def _spline(self, v, p, inverse: bool):
        inside = (v > -self.bound) & (v < self.bound)
        xs, widths, ys, heights, d = self._knots(p)
        knots = ys if inverse else xs
        vc = v.clamp(-self.bound, self.bound)
        idx = (torch.searchsorted(knots[..., 1:-1].contiguous(), vc.unsqueeze(-1).contiguous()).squeeze(-1))
        x_k, w_k = self._gather(xs, idx), self._gather(widths, idx)
        y_k, h_k = self._gather(ys, idx), self._gather(heights, idx)
        d_k, d_k1 = self._gather(d, idx), self._gather(d[..., 1:], idx)
        s_k = h_k / w_k
        if inverse:
            dy = vc - y_k
            a = h_k * (s_k - d_k) + dy * (d_k1 + d_k - 2 * s_k)
            b = h_k * d_k - dy * (d_k1 + d_k - 2 * s_k)
            c = -s_k * dy
            disc = (b.pow(2) - 4 * a * c).clamp_min(0)
            xi = (2 * c) / (-b - disc.sqrt())
            out = x_k + xi * w_k
        else:
            xi = (vc - x_k) / w_k
            out = None
        one = xi * (1 - xi)
        denom = s_k + (d_k1 + d_k - 2 * s_k) * one
        if out is None:
            out = y_k + h_k * (s_k * xi.pow(2) + d_k * one) / denom
        deriv = s_k.pow(2) * (d_k1 * xi.pow(2) + 2 * s_k * one + d_k * (1 - xi).pow(2)) / denom.pow(2)
        ladj = torch.where(inside, deriv.log(), torch.zeros_like(deriv))
        return torch.where(inside, out, v), ladj

    def forward(self, x, p):
        return self._spline(x, p, inverse=False)

    def inverse(self, y, p):
        return self._spline(y, p, inverse=True)


ELEMENTWISE = ("affine", "additive", "spline")


def elementwise(kind: str, bins: int = 8, bound: float = 3.0):
    if kind == "affine":
        return Affine()
    if kind == "additive":
        return Additive()
    if kind == "spline":
        return RationalQuadratic(bins, bound)
    raise ValueError(f"unknown element-wise map {kind!r}; choose one of {', '.join(ELEMENTWISE)}")
