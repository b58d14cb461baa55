"""pprogen: a zoo of deep generative models written as Pyro programs, and the machinery to train and
evaluate any Pyro program."""

from pprogen.registry import create_model, list_models, register_model
from pprogen import models as _zoo  # noqa: E402,F401  (the zoo registers itself; the registry never imports it)

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "register_model", "__version__"]
