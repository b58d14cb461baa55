"""Memory a run would take, estimated from shapes before anything is built or drawn, and refused in one line
beyond a limit: by default the machine's physical memory, raised or lowered with the environment variable
``PPROGEN_MAX_BYTES`` (a number of bytes, e.g. ``PPROGEN_MAX_BYTES=200e9``).

The estimates are lower bounds (the weights, or the tensors of one shape that a step must hold): a request past
them cannot fit; one under them may still need more."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from pprogen.registry import create_model

ENV = "PPROGEN_MAX_BYTES"
FLOAT = 4  # bytes of a float32


def limit_bytes() -> float:
    """The limit: ``PPROGEN_MAX_BYTES`` when set, else the machine's physical memory."""
    text = os.environ.get(ENV)
    if text:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{ENV}={text!r} is not a number of bytes; set it to e.g. 64e9 or unset it") from None
        if not value > 0:
            raise ValueError(f"{ENV}={text!r} must be a positive number of bytes")
        return value
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 64e9


def size(nbytes: float) -> str:
    """``nbytes`` in human units."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} bytes"


def check(what: str, nbytes: float, fix: str) -> None:
    """Refuse ``what`` in one line when it needs more than the limit."""
    limit = limit_bytes()
    if nbytes > limit:
        raise ValueError(f"{what} needs at least {size(nbytes)}, more than this machine's {size(limit)}; {fix}, or "
                         f"raise the limit with {ENV}=BYTES")


def model_elements(name: str, model_args: dict[str, Any]) -> int | None:
    """The number of parameter and buffer entries of the model ``name`` with ``model_args``, counted on PyTorch's
    meta device (nothing is allocated); None for models that cannot be built there (they compute at build)."""
    try:
        with torch.device("meta"):
            model = create_model(name, **model_args)
    except (ValueError, TypeError):
        raise
    except Exception:  # a model that computes with its tensors while it is built: no estimate
        return None
    if not isinstance(model, torch.nn.Module):
        return None
    return sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())


def check_model(config: dict[str, Any]) -> None:
    """A new run's model: its weights, their gradients and an optimizer's two moments (4 copies) must fit."""
    elements = model_elements(config["model"], config["model_args"])
    if elements is not None:
        given = ", ".join(f"{k}={v}" for k, v in config["model_args"].items())
        check(f"{config['model']} ({given}: {elements:.3g} weights) with its gradients and optimizer state",
              4 * FLOAT * elements, "choose smaller sizes with --set")


def check_rows(what: str, rows: int, shape: tuple[int, ...], fix: str) -> None:
    """``rows`` examples of ``shape`` in float32 must fit."""
    check(what, FLOAT * rows * math.prod(shape), fix)
