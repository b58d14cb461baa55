"""One-line errors for unknown names that suggest the close ones (shared by every layer)."""

from __future__ import annotations

import difflib
from typing import Iterable


def suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_name_error(what: str, name: str, choices: Iterable[str]) -> ValueError:
    """``ValueError("unknown model 'vea'; did you mean 'vae'?")``, or the full list when nothing is close."""
    choices = list(choices)
    hint = suggest(name, choices) or f"; choose one of {', '.join(sorted(choices))}"
    return ValueError(f"unknown {what} {name!r}{hint}")
