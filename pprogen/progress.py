"""Progress of pprogen's long loops, one convention for the package: a tqdm bar when stderr is a terminal;
without one (a log file, CI, a pipe), lines through :mod:`logging` now and then, so that a log holds what happened
and not a bar redrawn thousands of times. The library configures no handler: the command line shows these lines
on stderr (records marked ``progress``, shown without the ``pprogen:`` prefix of notes).

Training's display is :class:`pprogen.inference.progress.Progress` (a line per epoch); :class:`Sweep` serves a
loop over the dimensions of one draw (ancestral sampling of an autoregressive model: a line every tenth of the way).
This module imports nothing from pprogen, so that models and inference alike may use it.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

DELAY_SECONDS = 1.0  # a sweep quicker than this shows nothing: a sign of life is for the slow ones
FRACTION = 0.1  # a line every tenth of a sweep
PROGRESS = {"progress": True}  # ``extra`` of a progress record: the command line shows it as it is


def on_terminal() -> bool:
    """Whether stderr is a terminal (a bar can be redrawn there); elsewhere progress goes out as log lines."""
    return sys.stderr.isatty()


class Sweep:
    """``advance()`` per unit of work, ``close()`` at the end (or ``with Sweep(...) as sweep:``).

    On a terminal, a tqdm bar that appears after :data:`DELAY_SECONDS`; elsewhere ``logger.info`` lines such as
    ``sampling: 392/784 dimensions`` each time another tenth of ``total`` is done, from :data:`DELAY_SECONDS` on.
    ``advance`` costs a comparison until a line is due, so it may sit in a loop whose steps take microseconds.
    """

    def __init__(self, what: str, total: int, unit: str, logger: logging.Logger) -> None:
        self.what, self.total, self.unit, self.logger = what, int(total), unit, logger
        self.done = 0
        self.bar = None
        self.start = time.monotonic()
        self.tenths = 1
        self.next_line = self._mark()
        if on_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=what, unit=unit.split()[0], delay=DELAY_SECONDS, leave=False,
                            dynamic_ncols=True)

    def _mark(self) -> int:
        return max(1, round(self.total * FRACTION * self.tenths))

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)
        elif self.done >= self.next_line:
            self._line()

    def _line(self) -> None:
        if time.monotonic() - self.start >= DELAY_SECONDS:
            self.logger.info("%s: %d/%d %s", self.what, min(self.done, self.total), self.total, self.unit,
                             extra=PROGRESS)
        while self.next_line <= self.done:  # on to the next tenth not yet reached
            self.tenths += 1
            self.next_line = self._mark()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Sweep:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
