r"""The linear layers between a flow's nonlinear steps: learned scalings, normalization and feature mixing.

- :class:`Scaling` — :math:`y = x \odot e^{s}` with one log-scale per element (NICE's last layer);
- :class:`ActNorm` — :math:`y = x \odot e^{s} + b` per feature or channel, initialized from the first data batch
  so that the data side maps to zero mean and unit variance (Glow);
- :class:`FlowBatchNorm` — batch normalization as a bijection (RealNVP, MAF);
- :class:`InvertibleLinear` — :math:`y = W x` across the features, or the channels of every pixel (Glow's
  invertible 1x1 convolution), optionally as :math:`W = P L (U + \mathrm{diag}(\pm e^{s}))` so that
  :math:`\log|\det W| = \sum s`;
- :class:`Reverse` — the features or channels in reverse order, volume-preserving.

On images a per-channel map acts on every pixel, so its log-determinant counts :math:`H W` times.

References: Dinh et al. 2015 (NICE, arXiv:1410.8516), 2017 (RealNVP, arXiv:1605.08803); Kingma & Dhariwal 2018
(Glow, arXiv:1807.03039); Papamakarios et al. 2017 (MAF, arXiv:1705.07057).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from pprogen.transforms.bijection import Bijection


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
