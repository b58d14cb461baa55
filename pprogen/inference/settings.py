"""``fit``'s settings in four groups: :class:`Optim` (how it steps), :class:`Objective` (what it maximizes),
:class:`Stopping` (when it stops early) and :class:`Speed` (how fast it runs). ``fit(optim=Optim(lr=1e-2))`` and
``fit(lr=1e-2)`` are the same call: :func:`group_settings` puts each setting given by name in its group."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler


@dataclass(frozen=True)
class Optim:
    """How ``fit`` steps: the optimizer (``adam``, ``adamw``, ``sgd``, ``rmsprop``, ``adagrad``), its learning rate and
    weight decay, the schedule (``constant``, ``cosine``, ``exponential`` or ``plateau``, with ``lr_gamma``),
    gradient-norm clipping, and ``ema``, the decay of a moving average of the parameters (Polyak averaging,
    :class:`ParameterAverage`; 0 turns it off)."""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    lr_gamma: float = 0.5
    clip_norm: float | None = None
    ema: float = 0.0

    def __post_init__(self) -> None:
        gamma = self.lr_gamma
        if isinstance(gamma, bool) or not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
            raise ValueError(f"lr_gamma is the schedule's factor on the learning rate, in (0, 1], got {gamma!r}")

    def scheduler(self, optimizer: Optimizer, epochs: int) -> LRScheduler | None:
        """The learning-rate schedule of ``optimizer`` over ``epochs`` (None for a constant rate): cosine, or
        multiplied by ``lr_gamma`` every epoch (exponential) or when the validation loss stops falling (plateau)."""
        import torch

        if self.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        if self.schedule == "exponential":
            return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.lr_gamma)
        if self.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=self.lr_gamma, patience=2)
        return None


@dataclass(frozen=True)
class Objective:
    """What ``fit`` maximizes: the ELBO estimator (a name for :func:`make_elbo` or an ELBO object), its
    particles, the KL weight ``beta`` (ramped up over ``kl_warmup`` epochs) and a Rényi ``alpha``."""

    elbo: Any = "analytic"
    num_particles: int = 1
    beta: float = 1.0
    kl_warmup: int = 0
    alpha: float | None = None


@dataclass(frozen=True)
class Stopping:
    """Early stopping on the validation loss after ``patience`` epochs without a better one (None: off);
    ``restore_best`` leaves the best epoch's state in the model and guide."""

    patience: int | None = None
    restore_best: bool = True


@dataclass(frozen=True)
class Speed:
    """bfloat16 autocast (``autocast="bf16"``), ``torch.compile`` of the networks (``compile=True``) and the
    replayed steps (``fast_path``, on by default: :mod:`pprogen.inference.replay`)."""

    autocast: str | None = None
    compile: bool = False
    fast_path: bool = True


GROUPS = (Optim, Objective, Stopping, Speed)
FLAT = {f.name: group for group in GROUPS for f in fields(group)}  # fit(lr=...) is fit(optim=Optim(lr=...))


def group_settings(optim, objective, stopping, speed, flat: dict[str, Any]) -> dict[type, Any]:
    """The four groups of ``fit``'s settings, each given as its object or left at its defaults, with any
    setting also given by its own name (``lr=1e-2``) put in its group."""
    given = {Optim: optim, Objective: objective, Stopping: stopping, Speed: speed}
    for group, value in given.items():
        if value is not None and not isinstance(value, group):
            raise TypeError(f"fit's {group.__name__.lower()}= expects pprogen.inference.{group.__name__}, got "
                            f"{type(value).__name__}")
    unknown = sorted(set(flat) - set(FLAT))
    if unknown:
        raise TypeError(f"fit() got an unexpected keyword argument {unknown[0]!r}")
    out = {}
    for group, value in given.items():
        mine = {k: v for k, v in flat.items() if FLAT[k] is group}
        if value is not None and mine:
            raise TypeError(f"fit() got {sorted(mine)[0]}= and {group.__name__.lower()}=: give the setting in one "
                            f"place, e.g. {group.__name__.lower()}={group.__name__}(..., {sorted(mine)[0]}=...)")
        out[group] = replace(value if value is not None else group(), **mine)
    return out
