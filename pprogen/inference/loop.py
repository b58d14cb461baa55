"""The training loop's core, shared by SVI (:func:`~pprogen.inference.fit`) and the adversarial trainer.

What both do around their own steps lives here once: the epochs from where a resumed run stopped, the
shuffling generator (its state in the checkpoint, so a resumed run draws the same permutations), each rank's
reseeding under ``torchrun``, the progress bar (one line per epoch without a terminal), Pyro's argument
validation switched off and subnormal floats flushed to zero while the loop runs, and at each epoch's end the
atomic checkpoint and the metrics file. The trainers keep what differs: their steps, their optimizers and
their parts of the checkpoint.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

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


class EpochLoop:
    """``for epoch, order in loop.epochs(num_data, device)`` inside ``with loop.running(...)``; ``loop.save``
    at the end of each epoch. ``loop.history`` is the run's :class:`History`; ``loop.resume(state)``
    restores the loop's part of a checkpoint (random states, shuffle, history, epoch) and ``loop.state(epoch)``
    gives it, for the trainer to add its own parts to."""

    def __init__(self, epochs: int, seed: int | None, world: World, run: Any = None) -> None:
        self.epochs_total = epochs
        self.seed = seed
        self.world = world
        self.run = run
        self.writes = run is not None and world.is_main
        self.shuffle = torch.Generator().manual_seed(0 if seed is None else seed)
        self.history = History()
        self.start_epoch = 0
        self.bar: Progress | None = None

    def resume(self, state: dict[str, Any]) -> None:
        set_rng_state(state["rng"])
        self.shuffle.set_state(state["shuffle"])
        self.history = History(**state["history"])
        if self.history.stop_reason == "non_finite":  # the run goes on: it is no longer stopped
            self.history.stop_reason = "finished"
        self.start_epoch = state["epoch"]

    def state(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "rng": rng_state(), "shuffle": self.shuffle.get_state(),
                "history": self.history.state()}

    @contextlib.contextmanager
    def running(self, steps_per_epoch: int, progress: bool) -> Iterator[Progress]:
        """Progress shown (by the main rank), validation off and subnormals flushed, for the loop's length."""
        self.bar = Progress(self.epochs_total * steps_per_epoch, self.start_epoch * steps_per_epoch,
                            self.epochs_total, progress and self.world.is_main)
        validation_off = pyro.validation_enabled(False)  # argument checks cost time in the hot loop
        validation_off.__enter__()
        # Adam's second-moment estimates decay into subnormal floats for parameters whose gradients vanish
        # (dead ReLUs); x86 arithmetic on subnormals is many times slower, which made a long binarized-MNIST
        # run 4x slower per step than a fresh one. Flushing them to zero costs nothing.
        flushes = torch.set_flush_denormal(True)
        try:
            yield self.bar
        finally:
            self.bar.close()
            validation_off.__exit__(None, None, None)
            if flushes:
                torch.set_flush_denormal(False)

    def epochs(self, num_data: int, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
        """Each remaining epoch with its permutation of the rows; under torchrun every rank reseeds from
        (seed, epoch), so its draws are the same after a resume on any number of ranks."""
        for epoch in range(self.start_epoch, self.epochs_total):
            order = torch.randperm(num_data, generator=self.shuffle).to(device)
            if self.world.active:
                torch.manual_seed(self.world.rank_seed(self.seed, epoch))
            yield epoch, order

    def save(self, state: Callable[[], dict[str, Any]]) -> None:
        """The checkpoint (``state()``, built only when written) and the metrics, atomically."""
        if self.writes:
            self.run.save_checkpoint(state())
            self.run.write_metrics(self.history.records)
