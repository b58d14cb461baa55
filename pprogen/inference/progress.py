"""Progress of a training loop: a tqdm bar on a terminal; without one (a log file, CI, a pipe), one log line per
epoch (``logging``, this module's logger; the command line shows it on stderr), so that a log holds what happened
and not a bar redrawn thousands of times. The convention is :mod:`pprogen.progress`'s."""

from __future__ import annotations

import logging
from typing import Any

from pprogen.progress import PROGRESS, on_terminal

logger = logging.getLogger(__name__)  # no handler here: the command line decides what is shown


class Progress:
    """``update()`` per step, ``step_info(...)`` now and then, ``epoch(...)`` once an epoch, ``close()``."""

    def __init__(self, total: int, initial: int, epochs: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.epochs = epochs
        self.tty = enabled and on_terminal()
        self.lines = enabled and not self.tty
        self.bar = tqdm(total=total, initial=initial, disable=not self.tty, unit="step", dynamic_ncols=True,
                        leave=False)

    def update(self) -> None:
        self.bar.update(1)

    def step_info(self, **values: Any) -> None:
        self.bar.set_postfix(**values, refresh=False)

    def epoch(self, epoch: int, **values: Any) -> None:
        if self.lines:
            text = ", ".join(f"{k} {v}" for k, v in values.items())
            logger.info("epoch %d/%d: %s", epoch, self.epochs, text, extra=PROGRESS)
        else:
            self.bar.set_postfix(epoch=epoch, **values)

    def close(self) -> None:
        self.bar.close()
