r"""The multi-scale architecture of RealNVP and Glow: squeeze, steps, then factor out half of the channels.

One level on :math:`(C, H, W)`: :func:`squeeze` turns each 2x2 patch into 4 channels, :math:`(4C, H/2, W/2)`;
the level's steps run there; then :math:`2C` channels are factored out (sent straight to the base distribution)
and the other :math:`2C` go through the next level, which does the same at half the resolution.
:class:`MultiScale` nests the levels and keeps its input's shape (:func:`unsqueeze` on the way out), so a whole
multi-scale flow is one transform on images.

References: Dinh et al. 2017 (RealNVP, arXiv:1605.08803); Kingma & Dhariwal 2018 (Glow, arXiv:1807.03039).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pprogen.transforms.bijection import Bijection


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
