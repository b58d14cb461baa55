"""Moving averages of trained weights: Polyak averaging of SVI's parameters (:class:`ParameterAverage`,
``fit(ema=...)``) and the warm-up both it and the GAN generator's average use (:func:`warmed_up_decay`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch


def warmed_up_decay(decay: float, updates: int) -> float:
    """A moving average's decay after ``updates`` updates: ``min(decay, (1 + t) / (10 + t))``, so that the first
    steps do not drag the starting weights along (SVI's :class:`ParameterAverage`, the GAN generator's average)."""
    return min(decay, (1 + updates) / (10 + updates))


class ParameterAverage:
    """Polyak averaging: an exponential moving average of ``params``, updated after every applied step with the
    decay :func:`warmed_up_decay` (the adversarial trainer's warm-up). ``fit(ema=...)`` scores the average on the validation data,
    early-stops on it and leaves it (or its best epoch) in the model and guide; the training loss is the
    trained parameters'."""

    def __init__(self, params: list[torch.Tensor], decay: float) -> None:
        self.params, self.decay, self.updates = list(params), decay, 0
        self.live = [p.detach() for p in self.params]  # views of the parameters' storage, which steps update in place
        self.average = [p.clone() for p in self.live]

    def update(self) -> None:
        torch._foreach_lerp_(self.average, self.live, 1.0 - warmed_up_decay(self.decay, self.updates))
        self.updates += 1

    @contextmanager
    def swapped(self):
        """The average in the parameters inside the block, the trained values back after it (bit for bit)."""
        trained = [p.detach().clone() for p in self.params]
        self.copy_to_parameters()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, trained):
                    p.copy_(t)

    def copy_to_parameters(self) -> None:
        with torch.no_grad():
            for p, a in zip(self.params, self.average):
                p.copy_(a)

    def state(self, keys: list[str]) -> dict[str, Any]:
        return {"updates": self.updates, **{key: a.clone() for key, a in zip(keys, self.average)}}

    def load(self, state: dict[str, Any], keys: list[str]) -> None:
        """The average a checkpoint holds; an empty one restarts the average from the parameters as they are."""
        if not state:
            self.average, self.updates = [p.clone() for p in self.live], 0
            return
        self.updates = state["updates"]
        with torch.no_grad():
            for key, a in zip(keys, self.average):
                a.copy_(state[key])
