"""Progress of a training loop: a tqdm bar on a terminal; without one (a log file, CI, a pipe), one line per
epoch, so that a log holds what happened and not a bar redrawn thousands of times."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """``update()`` per step, ``step_info(...)`` now and then, ``epoch(...)`` once an epoch, ``close()``."""

    def __init__(self, total: int, initial: int, epochs: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.epochs = epochs
        self.tty = enabled and sys.stderr.isatty()
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
            print(f"epoch {epoch}/{self.epochs}: {text}", file=sys.stderr, flush=True)
        else:
            self.bar.set_postfix(epoch=epoch, **values)

    def close(self) -> None:
        self.bar.close()
