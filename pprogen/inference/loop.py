"""The epoch loop shared by SVI (:func:`~pprogen.inference.fit`), the adversarial trainer
(:class:`~pprogen.inference.AdversarialTrainer`) and closed-form EM (:func:`~pprogen.inference.em.fit_em`).

What the trainers do around their own steps lives here once, as named parts of :class:`EpochLoop`:

- **resume**: the checkpoint to continue from (:meth:`EpochLoop.checkpoint`: the dict already read, or the run's),
  and the loop's part of it restored (:meth:`EpochLoop.resume`: random states, shuffle, history, epoch);
- **epochs**: each remaining epoch with its permutation of the rows (the shuffling generator's state is in the
  checkpoint, so a resumed run draws the same permutations; under ``torchrun`` each rank reseeds per epoch);
- **running**: the progress display (one line per epoch without a terminal), Pyro's argument validation
  switched off and subnormal floats flushed to zero while the loop runs;
- **progress and records**: :meth:`EpochLoop.step_done` per step, :meth:`EpochLoop.add_record` per epoch;
- **writing**: :meth:`EpochLoop.save` (the atomic checkpoint, the metrics file and, when given, the weights by
  name: :func:`save_weights`); only the main rank writes;
- **the non-finite guard**: :meth:`EpochLoop.non_finite` marks the history, runs the trainer's last writes and
  raises :class:`NonFiniteLossError`;
- **early stopping**: :class:`EarlyStopping`, the best validation epoch and the epochs since.

The trainers keep what differs: their steps, their optimizers and their parts of the checkpoint.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NoReturn

import pyro
import torch

from pprogen.distributed import World
from pprogen.inference.progress import Progress
from pprogen.runs import rng_state, set_rng_state


@dataclass
class History:
    """Per-epoch records (``epoch``, ``train_loss``, ``valid_loss``, ``lr``, ``seconds``), per datum."""

    records: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid_loss: float = float("inf")
    stop_reason: str = "finished"
    fast_path: str | None = None  # how the steps ran: replayed (and how many), or why not (not in checkpoints)

    @property
    def train_loss(self) -> list[float]:
        return [r["train_loss"] for r in self.records]

    @property
    def valid_loss(self) -> list[float | None]:
        return [r["valid_loss"] for r in self.records]

    def state(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "best_epoch": self.best_epoch,
            "best_valid_loss": self.best_valid_loss,
            "stop_reason": self.stop_reason,
        }


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/Inf loss or gradient; the parameters were left at the last good step."""

    def __init__(self, message: str, history: History) -> None:
        super().__init__(message)
        self.history = history


def save_weights(run: Any, model: Any, guide: Any = None) -> None:
    """The weights by name, where the run's readers look for them: ``model.safetensors`` and (given a guide)
    ``guide.safetensors``; a module without state writes no file. (A checkpoint holds them too, for resuming.)"""
    run.save_weights("model", model)
    if guide is not None:
        run.save_weights("guide", guide)


class EarlyStopping:
    """The best validation epoch in the :class:`History` and the epochs since it (``bad_epochs``); with a
    ``patience``, :attr:`stopped` once that many epochs brought no better loss. ``best_state`` is what the trainer
    snapshotted at the best epoch (SVI: the parameters, to hand back at the end)."""

    def __init__(self, patience: int | None = None) -> None:
        self.patience = patience
        self.bad_epochs = 0
        self.best_state: Any = None

    def observe(self, history: History, epoch: int, valid_loss: float | None,
                snapshot: Callable[[], Any] | None = None) -> None:
        """One epoch's validation loss (None: no validation data, nothing to compare): a better one becomes the
        history's best (and ``snapshot()`` the best state), another counts as a bad epoch."""
        if valid_loss is None:
            return
        if valid_loss < history.best_valid_loss:
            history.best_valid_loss = valid_loss
            history.best_epoch = epoch
            if snapshot is not None:
                self.best_state = snapshot()
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1

    @property
    def stopped(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best_state": self.best_state or {}, "bad_epochs": self.bad_epochs}

    def resume(self, state: dict[str, Any], history: History) -> bool:
        """Restores the bookkeeping of a checkpoint; returns whether a run that stopped early stays stopped under
        this patience (a larger patience, or none, continues it: its history is no longer stopped)."""
        self.best_state = state["best_state"] or None
        self.bad_epochs = state["bad_epochs"]
        if history.stop_reason != "early_stopping":
            return False
        if self.stopped:
            return True
        history.stop_reason = "finished"
        return False


class EpochLoop:
    """``for epoch, order in loop.epochs(num_data, device)`` inside ``with loop.running(...)``; ``loop.history`` is
    the run's :class:`History`. ``loop.resume(state)`` restores the loop's part of a checkpoint (random states,
    shuffle, history, epoch) and ``loop.state(epoch)`` gives it, for the trainer to add its own parts to. A loop
    with ``shuffle=False`` (EM: every epoch sees all rows) draws no permutations and keeps no shuffle state."""

    def __init__(self, epochs: int, seed: int | None, world: World, run: Any = None, shuffle: bool = True) -> None:
        self.epochs_total = epochs
        self.seed = seed
        self.world = world
        self.run = run
        self.writes = run is not None and world.is_main
        self.shuffle = torch.Generator().manual_seed(0 if seed is None else seed) if shuffle else None
        self.history = History()
        self.start_epoch = 0
        self.bar: Progress | None = None

    # ------------------------------------------------------------------ resume

    def checkpoint(self, resume: bool | dict[str, Any]) -> dict[str, Any]:
        """The checkpoint to resume from: ``resume`` itself when it is one already read, else the run's (rank 0's,
        on every rank)."""
        return resume if isinstance(resume, dict) else self.world.load_checkpoint(self.run)

    def resume(self, state: dict[str, Any]) -> None:
        set_rng_state(state["rng"])
        if self.shuffle is not None:
            self.shuffle.set_state(state["shuffle"])
        self.history = History(**state["history"])
        if self.history.stop_reason == "non_finite":  # the run goes on: it is no longer stopped
            self.history.stop_reason = "finished"
        self.start_epoch = state["epoch"]

    def state(self, epoch: int) -> dict[str, Any]:
        shuffle = {"shuffle": self.shuffle.get_state()} if self.shuffle is not None else {}
        return {"epoch": epoch, "rng": rng_state(), **shuffle, "history": self.history.state()}

    # ------------------------------------------------------------------ the loop

    @contextlib.contextmanager
    def running(self, steps_per_epoch: int, progress: bool, flush_subnormals: bool = True) -> Iterator[Progress]:
        """Progress shown (by the main rank), validation off and (unless ``flush_subnormals=False``) subnormals
        flushed, for the loop's length."""
        self.bar = Progress(self.epochs_total * steps_per_epoch, self.start_epoch * steps_per_epoch,
                            self.epochs_total, progress and self.world.is_main)
        validation_off = pyro.validation_enabled(False)  # argument checks cost time in the hot loop
        validation_off.__enter__()
        # Adam's second-moment estimates decay into subnormal floats for parameters whose gradients vanish
        # (dead ReLUs); x86 arithmetic on subnormals is many times slower, which made a long binarized-MNIST
        # run 4x slower per step than a fresh one. Flushing them to zero costs nothing.
        flushes = flush_subnormals and torch.set_flush_denormal(True)
        try:
            yield self.bar
        finally:
            self.bar.close()
            validation_off.__exit__(None, None, None)
            if flushes:
                torch.set_flush_denormal(False)

    def epochs(self, num_data: int = 0, device: torch.device | None = None
               ) -> Iterator[tuple[int, torch.Tensor | None]]:
        """Each remaining epoch with its permutation of the rows (None without shuffling); under torchrun every
        rank reseeds from (seed, epoch), so its draws are the same after a resume on any number of ranks."""
        for epoch in range(self.start_epoch, self.epochs_total):
            order = None
            if self.shuffle is not None:
                order = torch.randperm(num_data, generator=self.shuffle).to(device)
            if self.world.active:
                torch.manual_seed(self.world.rank_seed(self.seed, epoch))
            yield epoch, order

    # ------------------------------------------------------------------ progress and records

    def step_done(self, step: int, epoch: int, **losses: float) -> None:
        """A step of the epoch (0-based) on the progress bar; every tenth shows the epoch and ``losses``."""
        self.bar.update()
        if step % 10 == 0:
            self.bar.step_info(epoch=epoch, **{k: f"{v:.3f}" for k, v in losses.items()})

    def add_record(self, record: dict[str, Any], **shown: str) -> None:
        """The epoch's record into the history, and onto the progress display: each ``label=key`` of ``shown``
        (the record's value to three decimals, ``-`` when None), then the seconds."""
        self.history.records.append(record)
        values = {label: "-" if record[key] is None else f"{record[key]:.3f}" for label, key in shown.items()}
        self.bar.epoch(record["epoch"], **values, seconds=f"{record['seconds']:.1f}")

    # ------------------------------------------------------------------ writing and stopping

    def save(self, state: Callable[[], dict[str, Any]], *weights: Any, metrics: bool = True) -> None:
        """The checkpoint (``state()``, built only when written), the metrics (unless ``metrics=False``) and, given
        modules, their weights by name (:func:`save_weights`), each written atomically."""
        if self.writes:
            self.run.save_checkpoint(state())
            if metrics:
                self.run.write_metrics(self.history.records)
            if weights:
                save_weights(self.run, *weights)

    def save_weights(self, model: Any, guide: Any = None) -> None:
        """The weights by name (:func:`save_weights`), by the rank that writes."""
        if self.writes:
            save_weights(self.run, model, guide)

    def non_finite(self, message: str, save: Callable[[], None] | None = None) -> NoReturn:
        """Stops the run at a non-finite loss or gradient: the history says so, ``save()`` (the trainer's last
        writes, if any) runs, and :class:`NonFiniteLossError` carries ``message`` and the history."""
        self.history.stop_reason = "non_finite"
        if save is not None:
            save()
        raise NonFiniteLossError(message, self.history)
