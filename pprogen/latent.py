"""Pictures of a latent space: interpolations between latents and traversals of each latent dimension.

A model with a latent space declares it (see :mod:`pprogen.capabilities`): ``latent_shape``, ``prior_latents(n)``
(draws of its top latent from the prior) and ``from_latent(z, mean=False, **condition)`` (examples made from given
latents: the likelihood's mean with ``mean``, else draws). VAEs (z), the two-layer VAE (its top latent z2), flows
(z is the base variable, x = T(z)) and GANs (x = G(z)) do. Models with a guide can also start from the encodings
of data points (the guide's posterior mean of the model's ``latent_site``), and order a traversal's dimensions by
their KL from the standard Normal prior, averaged over data.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro import poutine

from pprogen.capabilities import capabilities


def _name(model) -> str:
    return type(model).__name__.lower()


def check_latent(model, mean: bool | None = None, from_data: bool = False, guide=None) -> None:
    """One-line errors for latent pictures a model cannot give."""
    caps = capabilities(model)
    if not caps.latent:
        raise ValueError(f"{_name(model)} has no latent space to interpolate or traverse (its samples come from "
                         "p(x) directly); use plain sampling")
    if mean and not caps.latent_mean:
        raise ValueError(f"{_name(model)} makes x as a function of its latent (x = f(z)): there is no likelihood "
                         "mean to show; drop --mean")
    if from_data and (guide is None or capabilities(model).latent_site is None):
        raise ValueError(f"{_name(model)} has no guide to encode data points with; start from prior draws "
                         "(drop --from-data)")


def slerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for generative models) from each row of ``z0`` to the
    same row of ``z1``: ``(n, steps, *shape)``, the first step ``z0``, the last ``z1``; straight lines where the
    two are (anti)parallel."""
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps, got {steps}")
    a, b = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    t = torch.linspace(0, 1, steps, device=a.device, dtype=a.dtype)[None, :, None]
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
    omega = cos.clamp(-1, 1).acos()[:, None, None]
    sin = omega.sin()
    straight = sin.abs() < 1e-6
    safe = torch.where(straight, torch.ones_like(sin), sin)
    wa = torch.where(straight, 1 - t, ((1 - t) * omega).sin() / safe)
    wb = torch.where(straight, t, (t * omega).sin() / safe)
    out = wa * a[:, None] + wb * b[:, None]
    return out.reshape(z0.shape[0], steps, *z0.shape[1:])


@torch.no_grad()
def posterior_moments(model, guide, x: torch.Tensor, condition: dict[str, torch.Tensor] | None = None,
                      draws: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the guide's ``q(z | x)`` at the model's ``latent_site`` per row of ``x``:
    the guide's own ``encode(x)`` when it has one (the amortized Normal guide), else from ``draws`` draws."""
    condition = condition or {}
    if callable(getattr(guide, "encode", None)) and not condition:
        loc, scale = guide.encode(x)
        return loc, scale
    site = capabilities(model).latent_site
    zs = guide_draws(guide, [site], x, condition, draws)[site]
    return zs.mean(0), zs.std(0)


@torch.no_grad()
def guide_draws(guide, sites, x: torch.Tensor, condition: dict[str, torch.Tensor] | None = None,
                draws: int = 32) -> dict[str, torch.Tensor]:
    """``draws`` draws of each of the guide's ``sites`` at every row of ``x``, shaped ``(draws, N, ...)``, from one
    call of the guide on the rows repeated (a per-datum guide scores each row on its own)."""
    n = x.shape[0]
    repeat = {k: v.repeat_interleave(draws, 0) for k, v in (condition or {}).items()}
    with poutine.block():
        trace = poutine.trace(guide).get_trace(x.repeat_interleave(draws, 0), **repeat)
    out = {}
    for name in sites:
        value = trace.nodes[name]["value"]
        out[name] = value.reshape(n, draws, *value.shape[1:]).transpose(0, 1)
    return out


def latent_kl(model, guide, x: torch.Tensor, condition: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Per latent dimension, KL(N(mean, std^2) || N(0, 1)) of the guide's posterior averaged over the rows of
    ``x`` (exact for a diagonal Normal guide; the moment-matched Normal otherwise)."""
    loc, scale = posterior_moments(model, guide, x, condition)
    var = scale.pow(2).clamp_min(1e-12)
    return (0.5 * (loc.pow(2) + var - 1 - var.log())).reshape(x.shape[0], -1).mean(0)


def _rows(condition: dict[str, torch.Tensor] | None, repeat: int) -> dict[str, torch.Tensor]:
    return {k: v.repeat_interleave(repeat, 0) for k, v in (condition or {}).items()}


@torch.no_grad()
def interpolate(model, n: int = 8, steps: int = 10, mean: bool = False, guide=None, data: torch.Tensor | None = None,
                condition: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``n`` rows of ``steps`` examples: spherical interpolations between two latents each, drawn from the prior,
    or (with ``guide`` and ``data``) the guide's posterior means of data rows 2i and 2i + 1. ``condition`` holds a
    conditional model's labels, one per row. Returns ``(n * steps, *x_shape)``, row by row."""
    check_latent(model, mean, data is not None, guide)
    if data is not None:
        if data.shape[0] < 2 * n:
            raise ValueError(f"{n} interpolations between data points need {2 * n} rows, got {data.shape[0]}")
        pair_condition = {k: v[: 2 * n] for k, v in (condition or {}).items()}
        z, _ = posterior_moments(model, guide, data[: 2 * n], pair_condition)
        z0, z1 = z[0::2], z[1::2]
        condition = {k: v[0::2] for k, v in pair_condition.items()}
    else:
        z = model.prior_latents(2 * n)
        z0, z1 = z[:n], z[n:]
    path = slerp(z0, z1, steps).reshape(n * steps, *z0.shape[1:])
    return model.from_latent(path, mean=mean, **_rows(condition, steps))


@torch.no_grad()
def traverse(model, n: int | None = 10, steps: int = 9, span: float = 3.0, mean: bool = False, guide=None,
             data: torch.Tensor | None = None, condition: dict[str, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Each of ``n`` latent dimensions swept over ``steps`` values from ``-span`` to ``span`` with the others fixed:
    at the guide's posterior mean of ``data[0]`` when data are given, else at zero (the prior's centre). With a
    guide and data the dimensions are the ``n`` of largest KL (see :func:`latent_kl`), in that order; else (and
    for an autoencoder, which has no prior to measure a KL against) the first ``n``. Returns ``(images (n * steps, *x_shape), dims, kl or None)``."""
    check_latent(model, mean, data is not None, guide)
    if steps < 2 or not span > 0:
        raise ValueError(f"a traversal needs at least 2 steps and a positive span, got {steps} and {span}")
    shape = tuple(model.latent_shape)
    size = math.prod(shape)
    n = min(size, n or size)
    kl = None
    if data is not None:
        if capabilities(model).reconstruction:  # an autoencoder: no prior, so no KL to order by
            dims = torch.arange(n)
        else:
            kl = latent_kl(model, guide, data, condition)
            dims = torch.argsort(kl, descending=True, stable=True)[:n]
        base, _ = posterior_moments(model, guide, data[:1], {k: v[:1] for k, v in (condition or {}).items()})
        base = base.reshape(-1)
        condition = {k: v[:1] for k, v in (condition or {}).items()}
    else:
        dims = torch.arange(n)
        base = model.prior_latents(1).reshape(-1).zero_()
    values = torch.linspace(-span, span, steps, device=base.device, dtype=base.dtype)
    z = base.repeat(n * steps, 1)
    rows = torch.arange(n * steps, device=base.device)
    z[rows, dims.to(base.device).repeat_interleave(steps)] = values.repeat(n)
    images = model.from_latent(z.reshape(n * steps, *shape), mean=mean,
                               **{k: v.expand(n * steps, *v.shape[1:]) for k, v in (condition or {}).items()})
    return images, dims, kl


def describe(kind: str, model, mean: bool, from_data: bool) -> dict[str, Any]:
    """Words for a picture's title: what was drawn and how."""
    what = "likelihood means E[x | z]" if mean else ("x = f(z)" if not capabilities(model).latent_mean
                                                        else "draws x ~ p(x | z)")
    start = "encodings of data points" if from_data else "prior draws"
    return {"what": what, "start": start, "kind": kind}
