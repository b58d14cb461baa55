r"""The base of every pprogen flow transform: a bijection that returns its log-Jacobian with each pass.

A flow maps the base (noise) side to the data side, as ``TransformedDistribution`` expects, and scores data by
the change of variables

.. math::

    \log p(y) = \log p_u(f^{-1}(y)) - \log\left|\det \frac{\partial f}{\partial u}\right|_{u = f^{-1}(y)}

:class:`Bijection` computes :math:`\log|\det \partial y / \partial x|` in the same pass as the map, in both
directions (``forward_ladj``: noise -> data; ``inverse_ladj``: data -> noise), so ``log_prob`` and ``rsample``
each cost one pass. A transform without a closed-form inverse scores only its own samples, through the cache of
its last call, and raises :class:`NoInverseError` for anything else. :func:`check_num_layers` validates the
length of a stack of transforms.
"""

from __future__ import annotations

import torch
from pyro.distributions.torch_transform import TransformModule
from torch.distributions import constraints


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


def check_num_layers(num_layers, name: str = "num_layers") -> int:
    """``num_layers`` if it is a positive integer, else a one-line error naming the argument."""
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ValueError(f"{name} must be a positive integer, got {num_layers!r}")
    return num_layers
