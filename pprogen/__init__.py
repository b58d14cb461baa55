"""pprogen: a zoo of deep generative models written as Pyro programs, and the machinery to train and
evaluate any Pyro program."""

from pprogen.registry import create_model, list_models, register_model
from pprogen.version import __version__
from pprogen import models as _zoo  # noqa: E402,F401  (the zoo registers itself; the registry never imports it)

from pprogen.engine.loaded import load  # noqa: E402  (the run in a folder, with evaluate and sample)

__all__ = ["create_model", "list_models", "register_model", "load", "__version__"]
