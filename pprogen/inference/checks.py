"""Checks run before any training or evaluation starts: settings, data, device, model-data fit.

Each failure is a one-line ``ValueError``/``TypeError`` that names the problem and the fix.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pyro
import torch
from pyro import poutine

from pprogen.errors import unknown_name_error

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}
SCHEDULES = ("constant", "cosine", "exponential", "plateau")


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return device


def check_hyperparameters(**hp: Any) -> None:
    """One-line errors for settings that make no sense, raised before any work starts."""
    positive_ints = ("epochs", "batch_size", "num_particles")
    for key in positive_ints:
        value = hp.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if not (isinstance(hp["lr"], (int, float)) and hp["lr"] > 0 and math.isfinite(hp["lr"])):
        raise ValueError(f"learning rate must be a positive number, got {hp['lr']!r}")
    if hp.get("clip_norm") is not None and not hp["clip_norm"] > 0:
        raise ValueError(f"clip_norm must be positive (or None to turn clipping off), got {hp['clip_norm']!r}")
    if hp.get("patience") is not None and (not isinstance(hp["patience"], int) or hp["patience"] < 1):
        raise ValueError(f"patience must be a positive integer (or None), got {hp['patience']!r}")
    if hp["optimizer"] not in OPTIMIZERS:
        raise unknown_name_error("optimizer", hp["optimizer"], OPTIMIZERS)
    if hp["schedule"] not in SCHEDULES:
        raise unknown_name_error("learning-rate schedule", hp["schedule"], SCHEDULES)


def check_data(data: torch.Tensor, what: str = "data", missing_ok: bool = False) -> None:
    """Type, emptiness and finiteness; ``missing_ok`` lets NaN through (models that sum missing values out)."""
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape (N, ...), got {type(data).__name__}")
    if data.ndim == 0 or data.shape[0] == 0:
        raise ValueError(f"{what} is empty: it needs at least one example along its first dimension")
    if not data.is_floating_point():
        return
    bad = torch.isinf(data) if missing_ok else ~torch.isfinite(data)
    if bad.any():
        bad = bad.reshape(data.shape[0], -1).any(1).nonzero()[:, 0]
        raise ValueError(
            f"{what} holds {'Inf' if missing_ok else 'NaN or Inf'} in {len(bad)} example(s) (first at index "
            f"{int(bad[0])}); clean or drop them before training"
            + ("" if missing_ok else " (only models that sum out missing values, like bayesnet, take NaN)")
        )


def check_model_fits_data(model: Callable, guide: Callable, data: torch.Tensor, **condition) -> None:
    """Shape and support checks of the data against the model's observed sites (``condition``: per-datum
    keyword arguments such as labels)."""
    expected = getattr(model, "x_shape", None)
    if expected is not None and tuple(data.shape[1:]) != tuple(expected):
        raise ValueError(
            f"data of shape {tuple(data.shape[1:])} per example does not fit the model, which expects "
            f"{tuple(expected)}; build the model for this data (e.g. x_dim / x_shape) or pick other data"
        )
    probe = data[: min(8, data.shape[0])]
    kw = {k: v[: probe.shape[0]] for k, v in condition.items()}
    try:
        with torch.no_grad(), pyro.validation_enabled(False):
            guide_trace = poutine.trace(guide).get_trace(probe, **kw)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(probe, **kw)
    except (RuntimeError, ValueError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"the model or guide fails on data of shape {tuple(data.shape[1:])} per example ({first}); "
            "check that the model is built for this data"
        ) from None
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or site["value"] is not probe:
            continue
        support = site["fn"].support
        try:
            ok = support.check(data)
        except (RuntimeError, NotImplementedError):
            continue
        if not bool(torch.as_tensor(ok).all()):
            raise ValueError(
                f"data values lie outside the support of observed site {name!r} ({support}); "
                "use data that fits the likelihood (e.g. a binarized data set for a Bernoulli decoder) "
                "or another likelihood"
            )


def check_condition(condition: dict[str, torch.Tensor] | None, data: torch.Tensor, what: str) -> dict:
    """Per-datum keyword arguments must be tensors with one row per example."""
    condition = dict(condition or {})
    for key, value in condition.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != data.shape[0]:
            rows = value.shape[0] if isinstance(value, torch.Tensor) and value.dim() else "no"
            raise ValueError(f"{what}: condition {key!r} must hold one row per example ({data.shape[0]}), got {rows}")
    return condition
