"""SVI's part of a run's checkpoint, and how a resumed :func:`~pprogen.inference.fit` takes it back.

Beside the loop's part (:meth:`pprogen.inference.loop.EpochLoop.state`: epoch, random states, shuffle, history) an SVI
checkpoint holds ``params`` (each trained tensor as ``p.<name>``, its module path or ``param_store.<name>``, and each
buffer of the loss module as ``b.<name>``; checkpoints written before names were kept hold them by position,
``p0``, ``p1``, ...), ``optimizer``, ``scheduler``, ``best_state`` (the ``params`` of the best validation epoch, or
empty), ``average`` (the moving average of the parameters, or empty), ``bad_epochs`` and ``lr``. A checkpoint whose
tensors do not match the model and guide is refused in one line that names the tensor.
"""

from __future__ import annotations

from typing import Any

import torch

from pprogen.inference.averaging import ParameterAverage
from pprogen.inference.loop import EarlyStopping, EpochLoop


class SVICheckpoint:
    """The trained tensors of one ``fit`` by name (``keys``, from :func:`pprogen.inference.step.parameter_names`),
    the loss module's buffers, the optimizer, its schedule and the moving average: what a checkpoint holds of them,
    and putting a checkpoint's values back."""

    def __init__(self, keys: list[str], params: list[torch.Tensor], buffers: dict[str, torch.Tensor],
                 optimizer: torch.optim.Optimizer, scheduler: Any, average: ParameterAverage | None,
                 lr: float) -> None:
        self.keys, self.params, self.buffers = [f"p.{name}" for name in keys], params, buffers
        self.optimizer, self.scheduler, self.average, self.lr = optimizer, scheduler, average, lr

    def snapshot(self) -> dict[str, torch.Tensor]:
        """The parameters and buffers now, as copies."""
        state = {key: p.detach().clone() for key, p in zip(self.keys, self.params)}
        state.update({f"b.{name}": b.detach().clone() for name, b in self.buffers.items()})
        return state

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """A snapshot's values into the parameters and buffers."""
        named = any(k.startswith("p.") for k in state)  # older checkpoints hold them by position
        with torch.no_grad():
            for i, (key, p) in enumerate(zip(self.keys, self.params)):
                p.copy_(state[key] if named else state[f"p{i}"])
            for name, b in self.buffers.items():
                if f"b.{name}" in state:
                    b.copy_(state[f"b.{name}"])

    def state(self, loop: EpochLoop, epoch: int, stopping: EarlyStopping) -> dict[str, Any]:
        """The whole checkpoint at the end of ``epoch`` (epochs done)."""
        return {
            **loop.state(epoch),
            "params": self.snapshot(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "best_state": stopping.best_state or {},
            "average": self.average.state(self.keys) if self.average is not None else {},
            "bad_epochs": stopping.bad_epochs,
            "lr": self.lr,
        }

    def check(self, saved_params: dict[str, torch.Tensor], where: str) -> None:
        """Refuses a checkpoint's ``params`` that do not fit this model and guide, naming the first tensor."""
        saved = [k for k in saved_params if k.startswith("p")]
        keys = self.keys
        if any(k.startswith("p.") for k in saved) and saved != keys:
            theirs, ours = set(saved) - set(keys), set(keys) - set(saved)
            what = (f"holds {sorted(theirs)[0][2:]!r}, which this model and guide lack" if theirs else
                    f"lacks {sorted(ours)[0][2:]!r}" if ours else "holds the parameters in another order")
            raise ValueError(f"{where} {what}; resume with the configuration the run was started with")
        for key, p in zip(keys, self.params):
            if key in saved_params and saved_params[key].shape != p.shape:
                raise ValueError(f"{where} holds {key[2:]!r} of shape {tuple(saved_params[key].shape)} where this "
                                 f"model has {tuple(p.shape)}; resume with the configuration the run was started with")
        if len(saved) != len(self.params):
            raise ValueError(
                f"{where} holds {len(saved)} parameter tensors but this model "
                f"and guide have {len(self.params)}; resume with the configuration the run was started with"
            )

    def load(self, state: dict[str, Any], schedule: str, epochs: int) -> None:
        """The checkpoint's parameters, average, optimizer and schedule, the schedule continued to ``epochs``."""
        self.restore(state["params"])
        if self.average is not None:  # a checkpoint without one (trained without ema): the average starts here
            self.average.load(state.get("average") or {}, self.keys)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        continue_schedule(self.optimizer, self.scheduler, schedule, state, self.lr, epochs)


def continue_schedule(opt, scheduler, schedule: str, state: dict[str, Any], lr: float, epochs: int) -> None:
    """A resumed run's learning rate continues where it was: a new ``lr`` rescales the schedule from here on
    (the checkpoint's optimizer would otherwise keep the old one), and a cosine schedule stretched to more
    epochs decays from its current rate to the new end instead of starting a second cycle."""
    saved = state.get("lr")
    if saved is None and state.get("optimizer", {}).get("param_groups"):  # older checkpoints: the optimizer's
        group = state["optimizer"]["param_groups"][0]
        saved = group.get("initial_lr", group.get("lr"))
    if saved is not None and saved != lr:
        ratio = lr / saved
        for group in opt.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [b * ratio for b in scheduler.base_lrs]
    if schedule == "cosine" and scheduler.T_max != epochs:
        if state["epoch"] >= scheduler.T_max and epochs > state["epoch"]:
            raise ValueError(
                f"this run's cosine schedule ended at epoch {scheduler.T_max} with the learning rate at "
                f"{scheduler.eta_min:g}: more epochs would not move the weights; start a new run (its weights can "
                "seed the new one) or keep --epochs at " + str(scheduler.T_max)
            )
        scheduler.T_max = epochs
