"""The adversarial losses and penalties :class:`~pprogen.inference.AdversarialTrainer` trains GANs with.

Losses on critic outputs ``D(x)`` (logits or scores; patch critics are averaged over their patches):

====================  ===========================================  ==========================
loss                  discriminator                                 generator
====================  ===========================================  ==========================
``minimax``           ``softplus(-D(r)) + softplus(D(f))``         ``-softplus(D(f))``
``nonsaturating``     same                                         ``softplus(-D(f))``
``wgan_gp``           ``D(f) - D(r)`` (+ gradient penalty)          ``-D(f)``
``hinge``             ``relu(1 - D(r)) + relu(1 + D(f))``          ``-D(f)``
``lsgan``             ``(D(r) - 1)^2 / 2 + D(f)^2 / 2``            ``(D(f) - 1)^2 / 2``
====================  ===========================================  ==========================

``softplus(-D) = -log sigmoid(D)`` and ``softplus(D) = -log(1 - sigmoid(D))``, so the first two are the
original GAN's cross-entropies written without overflow. The gradient penalty (Gulrajani et al. 2017) is
``gp_weight * E (|grad_x D(x_hat)| - 1)^2`` on ``x_hat = e r + (1 - e) f`` with one ``e ~ U(0, 1)`` per example;
R1 (Mescheder et al. 2018) is ``r1_weight / 2 * E |grad_x D(r)|^2`` on real data.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pprogen.errors import unknown_name_error

LOSSES = ("minimax", "nonsaturating", "wgan_gp", "hinge", "lsgan")


def discriminator_loss(loss: str, real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss for critic outputs on real and fake inputs (mean over all elements), in float32
    even when the critic ran under bf16 autocast."""
    real_out, fake_out = real_out.float(), fake_out.float()
    if loss in ("minimax", "nonsaturating"):
        return F.softplus(-real_out).mean() + F.softplus(fake_out).mean()
    if loss == "wgan_gp":
        return fake_out.mean() - real_out.mean()
    if loss == "hinge":
        return F.relu(1 - real_out).mean() + F.relu(1 + fake_out).mean()
    if loss == "lsgan":
        return 0.5 * (real_out - 1).pow(2).mean() + 0.5 * fake_out.pow(2).mean()
    raise unknown_name_error("GAN loss", loss, LOSSES)


def generator_loss(loss: str, fake_out: torch.Tensor) -> torch.Tensor:
    """The generator's loss for critic outputs on fake inputs (in float32)."""
    fake_out = fake_out.float()
    if loss == "minimax":
        return -F.softplus(fake_out).mean()
    if loss == "nonsaturating":
        return F.softplus(-fake_out).mean()
    if loss in ("wgan_gp", "hinge"):
        return -fake_out.mean()
    if loss == "lsgan":
        return 0.5 * (fake_out - 1).pow(2).mean()
    raise unknown_name_error("GAN loss", loss, LOSSES)


def _gradient(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d(sum out)/dx per example, flattened, kept in the graph (the penalties train the critic through it)."""
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.reshape(grad.shape[0], -1)


def _input_gradient(critic: Callable, x: torch.Tensor, condition: dict) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    return _gradient(critic(x, **condition), x)


def gradient_penalty(critic: Callable, real: torch.Tensor, fake: torch.Tensor, condition: dict | None = None,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """``E (|grad D(x_hat)|_2 - 1)^2`` at ``x_hat = eps * real + (1 - eps) * fake``, one ``eps`` per example
    (drawn from U(0, 1) unless given, shape ``(B,)``); the norm runs over every non-batch dimension."""
    if eps is None:
        eps = torch.rand(real.shape[0], device=real.device, dtype=real.dtype)
    eps = eps.reshape((-1,) + (1,) * (real.dim() - 1))
    x_hat = eps * real.detach() + (1 - eps) * fake.detach()
    grad = _input_gradient(critic, x_hat, condition or {})
    return (grad.norm(dim=1) - 1).pow(2).mean()


def r1_penalty(critic: Callable, real: torch.Tensor, condition: dict | None = None) -> torch.Tensor:
    """``E |grad D(real)|_2^2`` (multiply by gamma / 2)."""
    real = real.detach().requires_grad_(True)
    return r1_from_output(critic(real, **(condition or {})), real)


def r1_from_output(real_out: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 from the critic's output on ``real`` (which requires grad), so the critic's loss and R1 share one pass."""
    return _gradient(real_out, real).pow(2).sum(1).mean()


@torch.no_grad()
def ema_update(average: nn.Module, current: nn.Module, decay: float) -> None:
    """``average <- decay * average + (1 - decay) * current`` for every parameter; buffers (batch-norm
    statistics) are copied."""
    for a, c in zip(average.parameters(), current.parameters()):
        a.mul_(decay).add_(c.detach(), alpha=1 - decay)
    for a, c in zip(average.buffers(), current.buffers()):
        a.copy_(c)
