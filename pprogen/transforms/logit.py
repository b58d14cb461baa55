r"""The logit preprocessing of image flows: pixels in (0, 1) modelled in logit space.

.. math::

    s = \mathrm{logit}(\alpha + (1 - 2\alpha)\, y), \qquad y = \frac{\sigma(s) - \alpha}{1 - 2\alpha}, \qquad
    \log\left|\frac{\partial y}{\partial s}\right| = \log \sigma(s) + \log \sigma(-s) - \log(1 - 2\alpha)

:class:`Logit` is a flow's last transform on the data side; its log-Jacobian is part of the density, so bits/dim
count it.

Reference: Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP, 2017, arXiv:1605.08803.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from pprogen.transforms.bijection import Bijection


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
