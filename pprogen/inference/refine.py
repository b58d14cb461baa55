r"""A per-datum refinement of a guide, fitted on the data being scored, as the proposal of importance sampling.

An amortized guide :math:`q_\phi(z \mid x)` fitted to the training set proposes less well on held-out data
(the amortization gap; Cremer, Li & Duvenaud 2018): its importance-sampled :math:`\log \hat p(x)` then sits
further below :math:`\log p(x)`. :class:`Refiner` moves each of the guide's real-valued latent sites inside the
per-datum plate through its own affine map, one per datum (and per element of the site),

.. math::

    z' = c_n + t_n + e^{s_n} \odot (z - c_n), \qquad z \sim q_\phi(z \mid x_n), \qquad
    \log q'(z' \mid x_n) = \log q_\phi(z \mid x_n) - \textstyle\sum s_n,

about the mean :math:`c_n` of 32 draws from the guide (a constant, so that a scale does not also shift),
starting at the identity (:math:`t = 0`, :math:`s = 0`), and :func:`refine` fits :math:`(t_n, s_n)` by Adam
(learning rate decayed to zero on a cosine), the model and the guide's own parameters frozen: on the ELBO for
the first half of the steps (its gradients find the posterior even from a poor guide; the importance-weighted
bound's gradients for a proposal fade as the particles grow, Rainforth et al. 2018, and on a linear-Gaussian
program 300 steps of it alone left a scale 6 times too wide), then on the importance-weighted bound with
``particles`` draws, which widens the proposal to cover the posterior (on a 784-200-200-50 VAE, 300 binarized
MNIST validation images, K = 2000: 90.21 nats with the switch, 90.89 unrefined; the ELBO alone 90.25, measured
before the cosine decay).
The later sites of the guide see the moved value, so hierarchical and flow guides refine too; sites outside
the plate, discrete sites and constrained sites keep the guide's proposal.

The refined proposal depends on :math:`x` only, and the estimate draws fresh particles from it, so
:math:`\mathbb{E}\,\hat p(x_n) = p(x_n)` still holds and :math:`\log \hat p(x_n)` remains a stochastic lower
bound on :math:`\log p(x_n)`: a tighter one, never a biased-upwards one.

References: Cremer, Li & Duvenaud, Inference Suboptimality in Variational Autoencoders, 2018, arXiv:1801.03558;
Rainforth et al., Tighter Variational Bounds are Not Necessarily Better, 2018, arXiv:1802.04537.
"""

from __future__ import annotations

import math
from typing import Callable

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import constraints
from torch.distributions.transforms import AffineTransform

from pprogen.inference.tracing import site_is_subsample

CENTRE_DRAWS = 32


def _real_support(fn) -> bool:
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


class Refiner(Messenger):
    """Moves each real-valued guide site inside plate ``plate_name`` by a per-datum affine map (see the module
    docstring). Its shifts and log-scales are created, at zero, the first time a site is seen; ``params``
    lists them. ``particle_dim`` is the particle plate's dim (its axis gets one shared entry); ``like`` (the data)
    gives their device, and their dtype when it is a floating type."""

    def __init__(self, plate_name: str, particle_dim: int, like: torch.Tensor) -> None:
        super().__init__()
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        self.like = torch.zeros((), dtype=dtype, device=like.device)
        self.plate_name = plate_name
        self.particle_dim = particle_dim
        self.shifts: dict[str, torch.Tensor] = {}
        self.log_scales: dict[str, torch.Tensor] = {}
        self.centres: dict[str, torch.Tensor] = {}

    @property
    def params(self) -> list[torch.Tensor]:
        return [*self.shifts.values(), *self.log_scales.values()]

    @property
    def sites(self) -> list[str]:
        return list(self.shifts)

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg) or not _real_support(fn):
            return
        if not any(f.name == self.plate_name for f in msg["cond_indep_stack"]):
            return
        name = msg["name"]
        if name not in self.shifts:
            batch = list(fn.batch_shape)
            axis = len(batch) + self.particle_dim
            if 0 <= axis < len(batch):
                batch[axis] = 1
            shape = (*batch, *fn.event_shape)
            self.shifts[name] = self.like.new_zeros(shape).requires_grad_(True)
            self.log_scales[name] = self.like.new_zeros(shape).requires_grad_(True)
            with torch.no_grad():  # the centre of the scaling: the mean of CENTRE_DRAWS of the guide's draws
                centre = fn.sample((CENTRE_DRAWS,)).mean(0)
                self.centres[name] = centre.mean(axis, keepdim=True) if 0 <= axis < len(batch) else centre
        shift, scale, centre = self.shifts[name], self.log_scales[name].exp(), self.centres[name]
        move = AffineTransform(centre + shift - scale * centre, scale, event_dim=len(fn.event_shape), cache_size=1)
        msg["fn"] = dist.TransformedDistribution(fn, [move])


def refine(log_weights: Callable[[Refiner, int], torch.Tensor], refiner: Refiner, steps: int, particles: int,
           lr: float) -> list[float]:
    """Fit ``refiner``'s maps by ``steps`` Adam steps (the ELBO, then the importance-weighted bound with
    ``particles`` draws; see the module docstring); ``log_weights(refiner, particles)`` returns the
    ``(particles, rows)`` log weights of the program run under ``refiner``. Only the maps are updated (their
    gradients alone are taken; a non-finite gradient entry counts as zero, and the estimate stays valid whatever
    the maps end at). Returns the mean bound per step (nats per datum), for diagnostics."""
    bounds: list[float] = []
    optimizer = None
    with torch.enable_grad():
        for step in range(steps):
            log_w = log_weights(refiner, particles)
            if step < steps // 2:  # the ELBO first: its gradients find the posterior from a poor start
                bound = log_w.mean(0)
            else:  # then the importance-weighted bound: it widens the proposal to cover the posterior
                bound = torch.logsumexp(log_w, 0) - math.log(particles)
            if not refiner.params:
                raise ValueError("refine found no real-valued guide site inside the data plate to refine; evaluate "
                                 "with refine=0 (the guide's own proposal)")
            if optimizer is None:
                optimizer = torch.optim.Adam(refiner.params, lr=lr)
            loss = -bound.sum()
            grads = torch.autograd.grad(loss, refiner.params, allow_unused=True)
            for p, g in zip(refiner.params, grads):
                p.grad = None if g is None else torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            for group in optimizer.param_groups:  # a cosine decay to zero: no jitter left at the end
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            optimizer.step()
            bounds.append(bound.mean().item())
    for p in refiner.params:
        p.requires_grad_(False)
        p.grad = None
    return bounds
