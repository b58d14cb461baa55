"""Toy data sets sampled here with a fixed seed, 10 000 / 2 000 / 2 000 points: 2-D densities (``moons``,
``circles``, the mode-counting mixtures ``ring8`` and ``grid25``, ``pinwheel``, ``checkerboard``,
``swiss_roll``) and discrete tables (``sprinkler``: samples of the sprinkler Bayesian network;
``sprinkler_missing``: the same with 20% of its entries missing, as NaN).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from pprogen.data.dataset import Dataset
from pprogen.data.registry import register_dataset


def _moons(n, g):
    t = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    return torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=g), upper.long()


def _circles(n, g):
    outer = torch.rand(n, generator=g) < 0.5
    t = torch.rand(n, generator=g) * 2 * math.pi
    r = torch.where(outer, 1.0, 0.5)
    pts = torch.stack([r * torch.cos(t), r * torch.sin(t)], 1)
    return pts + 0.03 * torch.randn(n, 2, generator=g), outer.long()


def _mixture(centers: torch.Tensor, sigma: float):
    def sample(n, g):
        k = torch.randint(len(centers), (n,), generator=g)
        return centers[k] + sigma * torch.randn(n, 2, generator=g), k

    return sample


RING8_CENTERS = torch.stack(
    [torch.tensor([math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)]) for k in range(8)]
)
GRID25_CENTERS = torch.tensor([[a, b] for a in (-4.0, -2.0, 0.0, 2.0, 4.0) for b in (-4.0, -2.0, 0.0, 2.0, 4.0)])
MODES = {"ring8": (RING8_CENTERS, 0.01), "grid25": (GRID25_CENTERS, 0.05)}  # the mode benchmarks: centers, sigma


def _pinwheel(n, g, arms=5, radial_std=0.3, tangential_std=0.1, rate=0.25):
    k = torch.randint(arms, (n,), generator=g)
    features = torch.randn(n, 2, generator=g) * torch.tensor([radial_std, tangential_std])
    features[:, 0] += 1.0
    angle = 2 * math.pi * k / arms + rate * torch.exp(features[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    rotated = torch.stack([c * features[:, 0] - s * features[:, 1], s * features[:, 0] + c * features[:, 1]], 1)
    return 2 * rotated, k


def _checkerboard(n, g):
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(2, (n,), generator=g) * 2.0
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2, None


def _swiss_roll(n, g):
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 5
    return pts + 0.1 * torch.randn(n, 2, generator=g), None


def _sprinkler(missing: float):
    def sample(n, g):
        from pprogen.dag import ancestral_sample

        x = ancestral_sample("sprinkler", n, generator=g)
        if missing:
            x[torch.rand(x.shape, generator=g) < missing] = float("nan")
        return x, None

    return sample


TOYS: dict[str, Callable] = {
    "moons": _moons,
    "circles": _circles,
    "ring8": _mixture(*MODES["ring8"]),
    "grid25": _mixture(*MODES["grid25"]),
    "pinwheel": _pinwheel,
    "checkerboard": _checkerboard,
    "swiss_roll": _swiss_roll,
}
DISCRETE_TOYS: dict[str, Callable] = {
    "sprinkler": _sprinkler(0.0),  # ancestral samples of the textbook network (columns Cloudy, Sprinkler, Rain, GrassWet)
    "sprinkler_missing": _sprinkler(0.2),  # the same with 20% of the entries missing at random (NaN)
}


def load_toy(name: str, num_train: int = 10000, num_eval: int = 2000, seed: int = 0) -> Dataset:
    """``num_train`` / ``num_eval`` / ``num_eval`` points of a toy of :data:`TOYS` or :data:`DISCRETE_TOYS`."""
    g = torch.Generator().manual_seed(seed)
    x, y = {**TOYS, **DISCRETE_TOYS}[name](num_train + 2 * num_eval, g)
    splits = x[:num_train], x[num_train : num_train + num_eval], x[num_train + num_eval :]
    labels = {}
    if y is not None:
        labels = {"train": y[:num_train], "valid": y[num_train : num_train + num_eval], "test": y[num_train + num_eval :]}
    return Dataset(name, *[s.float() for s in splits], shape=tuple(x.shape[1:]), binary=False, labels=labels,
                   num_classes=int(y.max()) + 1 if y is not None else None)


# ---------------------------------------------------------------- registered data sets

MODE_BENCHMARK = "the mode-counting benchmarks of VEEGAN: A. Srivastava et al., 2017, arXiv:1705.07761"


@register_dataset("moons", kind="points", shape=(2,), binary=False, num_classes=2)
def moons() -> Dataset:
    """Two interleaved half circles with Gaussian noise (sd 0.05); the label is the half."""
    return load_toy("moons")


@register_dataset("circles", kind="points", shape=(2,), binary=False, num_classes=2)
def circles() -> Dataset:
    """Two concentric circles (radii 0.5 and 1) with Gaussian noise (sd 0.03); the label is the circle."""
    return load_toy("circles")


@register_dataset("ring8", kind="points", shape=(2,), binary=False, num_classes=8, reference=MODE_BENCHMARK)
def ring8() -> Dataset:
    """Eight Gaussians (sd 0.01) evenly spaced on the unit circle (:data:`MODES`); the label is the mode."""
    return load_toy("ring8")


@register_dataset("grid25", kind="points", shape=(2,), binary=False, num_classes=25, reference=MODE_BENCHMARK)
def grid25() -> Dataset:
    """25 Gaussians (sd 0.05) on the grid {-4, -2, 0, 2, 4}^2 (:data:`MODES`); the label is the mode."""
    return load_toy("grid25")


@register_dataset("pinwheel", kind="points", shape=(2,), binary=False, num_classes=5,
                  reference="M. Johnson et al., Composing graphical models with neural networks, 2016, arXiv:1603.06277")
def pinwheel() -> Dataset:
    """Five curved arms of a pinwheel; the label is the arm."""
    return load_toy("pinwheel")


@register_dataset("checkerboard", kind="points", shape=(2,), binary=False)
def checkerboard() -> Dataset:
    """Uniform on the dark squares of a 4x4 checkerboard over [-4, 4]^2."""
    return load_toy("checkerboard")


@register_dataset("swiss_roll", kind="points", shape=(2,), binary=False)
def swiss_roll() -> Dataset:
    """A 2-D swiss roll (a spiral of one and a half turns) with Gaussian noise (sd 0.1)."""
    return load_toy("swiss_roll")


@register_dataset("sprinkler", kind="discrete", shape=(4,), binary=False)
def sprinkler() -> Dataset:
    """Ancestral samples of the textbook sprinkler network (columns Cloudy, Sprinkler, Rain, GrassWet; 0/1)."""
    return load_toy("sprinkler")


@register_dataset("sprinkler_missing", kind="discrete", shape=(4,), binary=False)
def sprinkler_missing() -> Dataset:
    """The sprinkler samples with 20% of their entries missing at random (NaN)."""
    return load_toy("sprinkler_missing")
