r"""Flow transforms: the bijections that Pyro lacks or runs in the wrong direction for density estimation.

Every transform here maps the base (noise) side to the data side, as ``TransformedDistribution`` expects,
and computes :math:`\log|\det \partial y / \partial x|` in the same pass as the map, in both directions,
so ``log_prob`` (data -> noise) and ``rsample`` (noise -> data) each cost one pass:

- :class:`MaskedAutoregressive` — MAF (``fast="density"``: one network pass for ``log_prob``) or IAF
  (``fast="sample"``: one pass for ``sample``), with affine or rational-quadratic spline element-wise maps;
  the other direction takes one pass per dimension.
- :class:`Coupling` — additive (NICE), affine (RealNVP, Glow) or spline (NSF) coupling on vectors (feature
  halves) or images (channel halves).
- :class:`Scaling` (NICE's diagonal scaling), :class:`ActNorm` (data-dependent init), :class:`InvertibleLinear`
  (Glow's invertible 1x1 convolution, with an LU option), :class:`FlowBatchNorm`, :class:`Reverse`.
- :class:`MultiScale` — Glow/RealNVP's levels: squeeze, steps, then half of the channels is factored out
  (sent straight to the base distribution) and the other half goes through the next level.
- :class:`Planar`, :class:`Radial` — Rezende & Mohamed's flows; they have no closed-form inverse, so they
  score only their own samples (through the cache) and raise :class:`NoInverseError` otherwise.
- :class:`Logit` — the image preprocessing :math:`y = (\sigma(s) - \alpha) / (1 - 2\alpha)` with its Jacobian.

References: Dinh et al. 2015 (NICE, arXiv:1410.8516), 2017 (RealNVP, arXiv:1605.08803); Kingma & Dhariwal
2018 (Glow, arXiv:1807.03039); Papamakarios et al. 2017 (MAF, arXiv:1705.07057); Kingma et al. 2016 (IAF,
arXiv:1606.04934); Durkan et al. 2019 (neural spline flows, arXiv:1906.04032); Rezende & Mohamed 2015
(arXiv:1505.05770).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from pyro.distributions.torch_transform import TransformModule
from torch import nn
from torch.distributions import constraints

from pprogen.nn import MLP, MaskedMLP


class NoInverseError(NotImplementedError):
    """A transform asked for an inverse it does not have in closed form."""


class Bijection(TransformModule):
    """A bijection that returns its log-Jacobian with each pass; subclasses implement ``forward_ladj``
    (noise -> data) and ``inverse_ladj`` (data -> noise), both returning the forward map's
    log|det J| summed over the ``event_dim`` rightmost dimensions."""

    bijective = True

    def __init__(self, event_dim: int = 1) -> None:
        super().__init__(cache_size=1)
        self._event_dim = event_dim
        self._last: tuple | None = None

    @property
    def domain(self):
        return constraints.independent(constraints.real, self._event_dim)

    @property
    def codomain(self):
        return constraints.independent(constraints.real, self._event_dim)

    def forward_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse_ladj(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NoInverseError(
            f"{type(self).__name__} has no closed-form inverse: it scores only its own samples (sample, then "
            "log_prob of that very tensor); to fit data by maximum likelihood use realnvp, maf or nsf"
        )

    def _call(self, x):
        y, ladj = self.forward_ladj(x)
        self._last = (x, y, ladj)
        return y

    def _inverse(self, y):
        x, ladj = self.inverse_ladj(y)
        self._last = (x, y, ladj)
        return x

    def log_abs_det_jacobian(self, x, y):
        last = self._last
        if last is not None and last[0] is x and last[1] is y:
            return last[2]
        return self.forward_ladj(x)[1]

    def clear_cache(self) -> None:
        """Forget the last call. The cache lets a flow score its own samples without an inverse, but it
        would return stale values for a tensor scored again after the parameters changed."""
        self._cached_x_y = None, None
        self._last = None

    def _sum_event(self, t: torch.Tensor) -> torch.Tensor:
        return t.sum(tuple(range(-self._event_dim, 0))) if self._event_dim else t


# ----------------------------------------------------------------------------- element-wise maps


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


# ----------------------------------------------------------------------------- autoregressive


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


# ----------------------------------------------------------------------------- coupling


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


# ----------------------------------------------------------------------------- normalization and mixing


def _per_feature(shape: Sequence[int]) -> tuple[int, ...]:
    """Parameter shape broadcasting over an event: one per feature (vectors) or channel (images)."""
    return (shape[0],) + (1,) * (len(shape) - 1)


def _pixels(shape: Sequence[int]) -> int:
    return math.prod(shape[1:]) if len(shape) > 1 else 1


class Scaling(Bijection):
    """``y = x * exp(s)`` with one learned log-scale per element (NICE's last layer)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__(event_dim=len(shape))
        self.log_scale = nn.Parameter(torch.zeros(tuple(shape)))

    def forward_ladj(self, x):
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[: x.dim() - self._event_dim])

    def inverse_ladj(self, y):
        return y * (-self.log_scale).exp(), self.log_scale.sum().expand(y.shape[: y.dim() - self._event_dim])


class ActNorm(Bijection):
    """Per-channel affine map ``y = x * exp(s) + b`` whose first data batch (or ``initialize(y)``) sets
    ``s, b`` so that the data side maps to zero mean and unit variance per channel (Glow)."""

    def __init__(self, shape: Sequence[int]) -> None:
        shape = tuple(shape)
        super().__init__(event_dim=len(shape))
        self.shape = shape
        self.log_scale = nn.Parameter(torch.zeros(_per_feature(shape)))
        self.bias = nn.Parameter(torch.zeros(_per_feature(shape)))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False  # the buffer's value once known to be True: read in Python without a tensor

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._initialized = False  # read the loaded buffer again

    def is_initialized(self) -> bool:
        if not self._initialized:
            self._initialized = bool(self.initialized)
        return self._initialized

    @torch.no_grad()
    def initialize(self, y: torch.Tensor) -> None:
        """Data-dependent init from data-side values ``y`` of shape ``(N, *shape)``."""
        flat = y.reshape(-1, *self.shape).movedim(1, 0).reshape(self.shape[0], -1)
        std = flat.std(1) if flat.shape[1] > 1 else torch.ones(self.shape[0], device=y.device)
        self.log_scale.copy_(std.clamp_min(1e-6).log().reshape(self.log_scale.shape))
        self.bias.copy_(flat.mean(1).reshape(self.bias.shape))
        self.initialized.fill_(True)
        self._initialized = True

    def _ladj(self, v):
        total = self.log_scale.sum() * _pixels(self.shape)
        return total.expand(v.shape[: v.dim() - self._event_dim])

    def forward_ladj(self, x):
        return x * self.log_scale.exp() + self.bias, self._ladj(x)

    def inverse_ladj(self, y):
        if self.training and not self.is_initialized():
            self.initialize(y.detach())
        return (y - self.bias) * (-self.log_scale).exp(), self._ladj(y)


class InvertibleLinear(Bijection):
    """``y = W x`` across the features of a vector or the channels of every pixel (Glow's invertible 1x1
    convolution). ``lu=True`` parameterizes ``W = P L (U + diag(sign * exp(s)))`` so log|det W| is
    ``sum(s)``; otherwise ``W`` is free and its determinant comes from ``slogdet``."""

    def __init__(self, shape: Sequence[int], lu: bool = True, seed: int | None = None) -> None:
        shape = tuple(shape)
        super().__init__(event_dim=len(shape))
        self.shape, self.lu = shape, lu
        c = shape[0]
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=g))  # a random rotation to start from
        if lu:
            p, lower, upper = torch.linalg.lu(q)
            diag = upper.diagonal()
            self.register_buffer("perm", p)
            self.register_buffer("diag_sign", diag.sign())
            self.register_buffer("lower_mask", torch.ones(c, c).tril(-1))
            self.lower = nn.Parameter(lower * self.lower_mask)
            self.upper = nn.Parameter(upper.triu(1))
            self.log_diag = nn.Parameter(diag.abs().log())
        else:
            self.weight = nn.Parameter(q)

    def matrix(self) -> torch.Tensor:
        if not self.lu:
            return self.weight
        eye = torch.eye(self.shape[0], device=self.lower.device, dtype=self.lower.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper.triu(1) + torch.diag(self.diag_sign * self.log_diag.exp())
        return self.perm @ lower @ upper

    def _logdet(self):
        return self.log_diag.sum() if self.lu else torch.linalg.slogdet(self.weight)[1]

    def _mix(self, v, w):
        if len(self.shape) == 1:
            return v @ w.T
        return torch.einsum("ij,...jhw->...ihw", w, v)

    def _ladj(self, v):
        return (self._logdet() * _pixels(self.shape)).expand(v.shape[: v.dim() - self._event_dim])

    def forward_ladj(self, x):
        return self._mix(x, self.matrix()), self._ladj(x)

    def inverse_ladj(self, y):
        return self._mix(y, torch.linalg.inv(self.matrix())), self._ladj(y)


class Reverse(Bijection):
    """Reverses the order of the features (vectors) or channels (images); volume-preserving."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__(event_dim=len(shape))
        self.dim = -len(shape)

    def forward_ladj(self, x):
        return x.flip(self.dim), x.new_zeros(x.shape[: x.dim() - self._event_dim])

    def inverse_ladj(self, y):
        return self.forward_ladj(y)


class FlowBatchNorm(Bijection):
    """Batch normalization as a bijection (RealNVP, MAF): on the data side, training batches are
    normalized by their own statistics and evaluation uses running averages; then a learned scale and
    shift per feature or channel."""

    def __init__(self, shape: Sequence[int], momentum: float = 0.05, eps: float = 1e-5) -> None:
        shape = tuple(shape)
        super().__init__(event_dim=len(shape))
        self.shape, self.momentum, self.eps = shape, momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(_per_feature(shape)))
        self.beta = nn.Parameter(torch.zeros(_per_feature(shape)))
        self.register_buffer("running_mean", torch.zeros(_per_feature(shape)))
        self.register_buffer("running_var", torch.ones(_per_feature(shape)))

    def _stats(self, y):
        if not self.training:
            return self.running_mean, self.running_var
        dims = [i for i in range(y.dim()) if i != y.dim() - len(self.shape)]
        mean = y.mean(dims, keepdim=True).reshape(self.running_mean.shape)
        var = y.var(dims, keepdim=True, unbiased=False).reshape(self.running_var.shape)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach(), self.momentum)
        return mean, var

    def _ladj(self, v, var):
        per = (0.5 * (var + self.eps).log() - self.log_gamma).sum() * _pixels(self.shape)
        return per.expand(v.shape[: v.dim() - self._event_dim])

    def forward_ladj(self, x):
        mean, var = self.running_mean, self.running_var
        y = (x - self.beta) * (-self.log_gamma).exp() * (var + self.eps).sqrt() + mean
        return y, self._ladj(x, var)

    def inverse_ladj(self, y):
        mean, var = self._stats(y)
        x = (y - mean) / (var + self.eps).sqrt() * self.log_gamma.exp() + self.beta
        return x, self._ladj(y, var)


# ----------------------------------------------------------------------------- multi-scale


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """``(..., C, H, W) -> (..., 4C, H/2, W/2)``: each 2x2 patch becomes 4 channels."""
    *batch, c, h, w = x.shape
    x = x.reshape(*batch, c, h // 2, 2, w // 2, 2)  # (..., c, h2, i, w2, j)
    nb = len(batch)
    x = x.permute(*range(nb), nb, nb + 2, nb + 4, nb + 1, nb + 3)  # (..., c, i, j, h2, w2)
    return x.reshape(*batch, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`squeeze`."""
    *batch, c4, h, w = x.shape
    c = c4 // 4
    x = x.reshape(*batch, c, 2, 2, h, w)  # (..., c, i, j, h, w)
    nb = len(batch)
    x = x.permute(*range(nb), nb, nb + 3, nb + 1, nb + 4, nb + 2)  # (..., c, h, i, w, j)
    return x.reshape(*batch, c, 2 * h, 2 * w)


class MultiScale(Bijection):
    """One level of a multi-scale flow on ``(C, H, W)``: squeeze to ``(4C, H/2, W/2)``, apply ``steps``,
    then factor out half of the channels (they go to the base as they are) and pass the other half
    through ``inner`` (the next level), if any. The output keeps the input's shape."""

    def __init__(self, shape: Sequence[int], steps: Sequence[Bijection], inner: Bijection | None = None) -> None:
        shape = tuple(shape)
        super().__init__(event_dim=3)
        c, h, w = shape
        if h % 2 or w % 2:
            raise ValueError(f"a multi-scale level squeezes 2x2 patches, so H and W must be even; got {h}x{w}: "
                             "use fewer levels or pad the images")
        self.shape = shape
        self.steps = nn.ModuleList(steps)
        self.inner = inner
        self.keep = 2 * c  # channels factored out at this level

    def forward_ladj(self, x):
        h = squeeze(x)
        ladj = x.new_zeros(x.shape[:-3])
        if self.inner is not None:
            out, rest = h.split((self.keep, h.shape[-3] - self.keep), -3)
            rest, l_inner = self.inner.forward_ladj(rest)
            h, ladj = torch.cat([out, rest], -3), ladj + l_inner
        for step in reversed(self.steps):
            h, l_step = step.forward_ladj(h)
            ladj = ladj + l_step
        return unsqueeze(h), ladj

    def inverse_ladj(self, y):
        h = squeeze(y)
        ladj = y.new_zeros(y.shape[:-3])
        for step in self.steps:
            h, l_step = step.inverse_ladj(h)
            ladj = ladj + l_step
        if self.inner is not None:
            out, rest = h.split((self.keep, h.shape[-3] - self.keep), -3)
            rest, l_inner = self.inner.inverse_ladj(rest)
            h, ladj = torch.cat([out, rest], -3), ladj + l_inner
        return unsqueeze(h), ladj


# ----------------------------------------------------------------------------- planar and radial


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


# ----------------------------------------------------------------------------- preprocessing


class Logit(Bijection):
    r"""Maps logit space to pixels in (0, 1): :math:`y = (\sigma(s) - \alpha) / (1 - 2\alpha)`, so that the
    flow models :math:`s = \mathrm{logit}(\alpha + (1 - 2\alpha) y)` (RealNVP's preprocessing); its
    log-Jacobian is part of the density, so bits/dim count it."""

    def __init__(self, shape: Sequence[int], alpha: float = 0.05) -> None:
        super().__init__(event_dim=len(tuple(shape)))
        if not 0 <= alpha < 0.5:
            raise ValueError(f"logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward_ladj(self, s):
        y = (torch.sigmoid(s) - self.alpha) / (1 - 2 * self.alpha)
        ladj = F.logsigmoid(s) + F.logsigmoid(-s) - math.log(1 - 2 * self.alpha)
        return y, self._sum_event(ladj)

    def inverse_ladj(self, y):
        p = self.alpha + (1 - 2 * self.alpha) * y
        s = torch.log(p) - torch.log1p(-p)
        ladj = F.logsigmoid(s) + F.logsigmoid(-s) - math.log(1 - 2 * self.alpha)
        return s, self._sum_event(ladj)


__all__ = [
    "ActNorm", "Affine", "Additive", "Bijection", "ConditionalPlanar", "ConvNet", "Coupling", "FlowBatchNorm",
    "InvertibleLinear", "Logit", "MaskedAutoregressive", "MultiScale", "NoInverseError", "Planar", "Radial",
    "RationalQuadratic", "Reverse", "Scaling", "planar_map", "radial_map", "soft_clamp", "squeeze", "unsqueeze",
]


def check_num_layers(num_layers, name: str = "num_layers") -> int:
    """``num_layers`` if it is a positive integer, else a one-line error naming the argument."""
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ValueError(f"{name} must be a positive integer, got {num_layers!r}")
    return num_layers


def alternating_orders(x_dim: int, num_layers: int) -> list[list[int]]:
    """Autoregressive orders for a stack of MADE-style layers: the identity, then reversed, alternately, so that
    every variable conditions on every other somewhere in the stack."""
    forward = list(range(x_dim))
    return [forward if i % 2 == 0 else forward[::-1] for i in range(num_layers)]
