r"""Energy targets: unnormalized densities that a flow is fitted to by reverse KL.

.. math::

    p(z) = \frac{e^{-U(z)}}{Z}, \qquad
    \mathbb{E}_{q}\left[-U(z) - \log q(z)\right] = \log Z - \mathrm{KL}(q \,\|\, p)

so maximizing the ELBO of the model ``p`` with a flow ``q`` as its guide fits ``q`` without ever knowing
:math:`Z`. :data:`ENERGIES` holds the four 2-D energies U1-U4 of Rezende & Mohamed (2015), Table 1 (U2-U4 with
a soft wall at :math:`|z_i| = 4` so that they are normalizable); :func:`load_energy` takes one by name, a
user's ``FILE.py:FUNCTION`` or a callable, and checks it on a few points; :class:`EnergyTarget` writes
:math:`p(z)` as a Pyro model (a flat site ``z`` plus ``pyro.factor(-U(z))``) whose guide is a flow
(``flow.as_guide("z")``).

Reference: Rezende & Mohamed, Variational Inference with Normalizing Flows, 2015, arXiv:1505.05770.
"""

from __future__ import annotations

import math
from typing import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule


def _w1(z):
    return torch.sin(2 * math.pi * z[..., 0] / 4)


def _wall(z):
    # a soft wall at |z_i| = 4 so that U2-U4, flat along z1, are normalizable (the paper plots [-4, 4]^2)
    return (z / 4).pow(8).sum(-1)


def _u1(z):
    r = z.norm(dim=-1)
    modes = torch.stack([-0.5 * ((z[..., 0] - 2) / 0.6) ** 2, -0.5 * ((z[..., 0] + 2) / 0.6) ** 2])
    return 0.5 * ((r - 2) / 0.4) ** 2 - torch.logsumexp(modes, 0)


def _u2(z):
    return 0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2 + _wall(z)


def _u3(z):
    w2 = 3 * torch.exp(-0.5 * ((z[..., 0] - 1) / 0.6) ** 2)
    a = -0.5 * ((z[..., 1] - _w1(z)) / 0.35) ** 2
    b = -0.5 * ((z[..., 1] - _w1(z) + w2) / 0.35) ** 2
    return -torch.logsumexp(torch.stack([a, b]), 0) + _wall(z)


def _u4(z):
    w3 = 3 * torch.sigmoid((z[..., 0] - 1) / 0.3)
    a = -0.5 * ((z[..., 1] - _w1(z)) / 0.4) ** 2
    b = -0.5 * ((z[..., 1] - _w1(z) + w3) / 0.35) ** 2
    return -torch.logsumexp(torch.stack([a, b]), 0) + _wall(z)


ENERGIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"u1": _u1, "u2": _u2, "u3": _u3, "u4": _u4}
"""The four 2-D energies U(z) of Rezende & Mohamed (2015), Table 1 (U2-U4 with a soft wall at |z_i| = 4)."""


def load_energy(spec: str | Callable, dim: int = 2) -> Callable[[torch.Tensor], torch.Tensor]:
    """An energy U(z) by name (:data:`ENERGIES`), as ``FILE.py:FUNCTION`` (a user's function of z (N, D) returning
    (N,)), or a callable; checked on a few points of dimension ``dim``. One-line errors otherwise."""
    if callable(spec):
        energy, what = spec, getattr(spec, "__name__", "the energy")
    elif spec in ENERGIES:
        if dim != 2:
            raise ValueError(f"energy {spec} is 2-D; drop --set x_dim={dim}")
        return ENERGIES[spec]
    elif isinstance(spec, str) and ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        import importlib.util
        from pathlib import Path

        path, name = spec.rsplit(":", 1)
        if not Path(path).is_file():
            raise ValueError(f"target file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:  # the user's file: report its first line of error
            raise ValueError(f"cannot import {path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        energy, what = getattr(module, name, None), f"{path}:{name}"
        if not callable(energy):
            raise ValueError(f"{path} defines no function {name!r}")
    else:
        raise ValueError(f"unknown target {spec!r}; choose {', '.join(ENERGIES)} or FILE.py:FUNCTION (a function of "
                         "z (N, D) returning the energy U(z), shape (N,))")
    try:
        value = energy(torch.zeros(3, dim))
    except Exception as err:
        raise ValueError(f"{what} fails on z of shape (3, {dim}) ({type(err).__name__}: {err}); it must take z (N, D) "
                         "and return U(z) (N,)") from None
    if not torch.is_tensor(value) or tuple(value.shape) != (3,) or not torch.isfinite(value).all():
        raise ValueError(f"{what} must return one finite energy per row (shape (3,) for z of shape (3, {dim})), got "
                         f"{tuple(value.shape) if torch.is_tensor(value) else type(value).__name__}")
    return energy


class EnergyTarget(PyroModule):
    """The unnormalized density p(z) ∝ exp(-U(z)) as a Pyro model: a flat (masked) site ``z`` plus
    ``pyro.factor(-U(z))``; its ELBO with a flow guide is -KL(q || p) + log Z."""

    def __init__(self, energy: str | Callable = "u1", dim: int = 2) -> None:
        super().__init__()
        if isinstance(energy, str):
            if energy not in ENERGIES:
                from pprogen.errors import unknown_name_error

                raise unknown_name_error("energy", energy, ENERGIES)
            energy = ENERGIES[energy]
        self.energy, self.dim = energy, dim
        self.register_buffer("zeros", torch.zeros(dim))

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> None:
        n = x.shape[0] if x is not None else (batch_size or 1)
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(self.zeros, 1.0).to_event(1).mask(False))
            pyro.factor("energy", -self.energy(z))

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        return -self.energy(z)
