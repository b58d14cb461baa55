"""Checks run before any training or evaluation starts: settings, data, device, model-data fit.

Each failure is a one-line ``ValueError``/``TypeError`` that names the problem and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch

from pprogen.distributed import resolve_device  # noqa: F401  (re-exported: checks is where callers look)
from pprogen.errors import unknown_name_error
from pprogen.inference.tracing import (
    FunsorBackendError,
    SiteCollector,
    check_plate_sizes,
    direct_call,
    find_data_plate,
    masked_log_prob,
    sandbox,
)

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
SCHEDULES = ("constant", "cosine", "exponential", "plateau")


def check_hyperparameters(**hp: Any) -> None:
    """One-line errors for settings that make no sense, raised before any work starts."""
    positive_ints = ("epochs", "batch_size", "num_particles")
    for key in positive_ints:
        value = hp.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if not (isinstance(hp["lr"], (int, float)) and hp["lr"] > 0 and math.isfinite(hp["lr"])):
        raise ValueError(f"learning rate must be a positive number, got {hp['lr']!r}")
    wd = hp.get("weight_decay", 0.0)
    if not (isinstance(wd, (int, float)) and wd >= 0 and math.isfinite(wd)):
        raise ValueError(f"weight_decay must be a non-negative number (0 turns it off), got {wd!r}")
    ema = hp.get("ema", 0.0)
    if not (isinstance(ema, (int, float)) and 0 <= ema < 1):
        raise ValueError(f"ema is the decay of the parameters' moving average, in [0, 1) (0 turns it off), got {ema!r}")
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


@dataclass
class ProgramPlan:
    """How ``fit`` hands data to a program, from :func:`check_model_fits_data`'s probe.

    ``mode`` is ``"rows"`` (``fit`` cuts minibatches of rows and scales the per-datum plate by N / batch),
    ``"program"`` (the program subsamples its plate from whatever it is handed,
    ``pyro.plate(name, len(x), subsample_size=B)``: it is handed all rows every step and Pyro scales) or
    ``"indices"`` (it is handed a minibatch and subsamples with indices it takes as an argument,
    ``pyro.plate(name, N, subsample=idx)``: Pyro scales). ``plate_name`` is ``None`` for a program without
    plates (then every site is global and nothing is scaled)."""

    plate_name: str | None
    mode: str = "rows"
    subsample_size: int | None = None
    full_size: int | None = None

    @property
    def scales(self) -> bool:
        return self.mode == "rows" and self.plate_name is not None


def check_model_fits_data(model: Callable, guide: Callable, data: torch.Tensor, *, batch_size: int | None = None,
                          plate_name: str | None = None, valid_data: torch.Tensor | None = None,
                          valid_condition: dict | None = None, **condition) -> ProgramPlan:
    """Shape and support checks of the data against the model's observed sites, and the program's
    :class:`ProgramPlan` (``condition``: per-datum keyword arguments such as labels).

    The program runs in a sandbox (copies of model and guide, a throw-away param store): on the first
    minibatch of ``batch_size`` rows, then on one row fewer when ``fit`` will hand it minibatches (a guide
    whose parameters are sized by the rows it is handed cannot be trained on minibatches of rows), then on
    ``valid_data``. Every failure is a one-line error that says whether the model or the guide failed; a plate of
    constant size (eight schools' ``pyro.plate("J", 8)``) handed other rows is named as the cause.
    """
    expected = getattr(model, "x_shape", None)
    if expected is not None and tuple(data.shape[1:]) != tuple(expected):
        raise ValueError(
            f"data of shape {tuple(data.shape[1:])} per example does not fit the model, which expects "
            f"{tuple(expected)}; build the model for this data (e.g. x_dim / x_shape) or pick other data"
        )
    n = data.shape[0]
    rows = min(n, batch_size or n)
    with sandbox(model, guide) as (model_copy, guide_copy), pyro.validation_enabled(False):
        try:
            guide_sites, model_sites, probe = _run_rows(model_copy, guide_copy, data, rows, condition)
        except _ProgramError as err:
            if rows == n:
                raise err.refusal(data) from None
            try:  # a program that picks its own rows from the whole data set
                guide_sites, model_sites, probe = _run_rows(model_copy, guide_copy, data, n, condition)
            except _ProgramError:
                raise err.refusal(data) from None
            frame = find_data_plate(guide_sites + model_sites, n, plate_name)
            if frame is None or not frame.size < (frame.full_size or frame.size):
                constant = _constant_plate(model_copy, data, n, condition)
                if constant is not None:
                    raise ValueError(f"{constant}, so it cannot take minibatches of {rows} of the {n} rows; fit full "
                                     f"batch (batch_size >= {n}) or {_SIZE_BY_DATA}") from None
                raise err.refusal(data) from None
            rows = n
        frame = find_data_plate(guide_sites + model_sites, rows, plate_name)
        plan = ProgramPlan(None if frame is None else frame.name)
        if frame is not None and frame.size < (frame.full_size or frame.size):
            if frame.full_size == rows:
                if rows < n:  # it subsamples whatever it is handed: hand it everything
                    guide_sites, model_sites, probe = _run_rows(model_copy, guide_copy, data, n, condition)
                    frame = find_data_plate(guide_sites + model_sites, n, frame.name)
                    rows = n
                plan = ProgramPlan(frame.name, "program", frame.size)
            else:
                plan = ProgramPlan(frame.name, "indices", frame.size, frame.full_size)
        elif rows > 1 and (rows < n or valid_data is not None):
            try:
                _run_rows(model_copy, guide_copy, data, rows - 1, condition)
            except _ProgramError as err:
                constant = _constant_plate(model_copy, data, rows, condition)
                if constant is not None and rows < n:
                    raise ValueError(f"{constant}, so it cannot take minibatches of the {n} rows; fit full batch "
                                     f"(batch_size >= {n}) or {_SIZE_BY_DATA}") from None
                if constant is not None:
                    raise ValueError(f"{constant}, so it cannot score validation data of {valid_data.shape[0]} rows; "
                                     f"drop valid_data, hand it {rows} rows, or {_SIZE_BY_DATA}") from None
                part = err.part if err.part == "guide" or not _runs_alone(model_copy, data, rows - 1, condition) \
                    else "guide"  # the model fails only on the guide's values
                if rows < n:
                    raise ValueError(
                        f"the {part} runs on a batch of {rows} rows but not on {rows - 1} ({err.first}): its "
                        f"parameters are sized by the rows it is handed (a per-datum table, or an autoguide over "
                        f"per-datum latents); fit it full batch (batch_size >= {n}) or size its tables by the "
                        "whole data set and index them with a subsampled plate: pyro.plate(name, N, subsample_size=B)"
                    ) from None
                raise ValueError(
                    f"the {part}'s parameters are sized by the rows it is handed ({err.first} on {rows - 1} rows): "
                    "it scores only the rows it was fitted to, so it cannot score validation data: drop "
                    "valid_data or use an amortized guide"
                ) from None
        if valid_data is not None and plan.mode != "indices":
            try:
                _run_rows(model_copy, guide_copy, valid_data, min(valid_data.shape[0], rows), valid_condition or {})
            except _ProgramError as err:
                raise ValueError(
                    f"the {err.part} trains on the training rows but fails on the validation data ({err.first}); "
                    "a guide with per-datum parameters scores only the rows it was fitted to: drop valid_data "
                    "or use an amortized guide"
                ) from None
    _check_support(model_sites, probe, data)
    return plan


_SIZE_BY_DATA = "size the plate by the data (pyro.plate(name, len(x)), per-row constants passed as condition)"


def _constant_plate(model: Callable, data: torch.Tensor, rows: int, condition: dict) -> str | None:
    """Says which plate keeps ``rows`` entries when the model is handed one row fewer (eight schools'
    ``pyro.plate("J", 8)``), or None: a constant-size plate scores exactly that many rows."""
    sizes = []
    for count in (rows, rows - 1):
        try:
            with SiteCollector() as run:
                direct_call(model)(data[:count], **{k: v[:count] for k, v in condition.items()})
        except Exception:  # noqa: BLE001  (it fails otherwise: not this cause)
            return None
        sizes.append({f.name: f.size for site in run.sites for f in site["cond_indep_stack"] if f.vectorized})
    constant = [name for name, size in sizes[0].items() if size == rows and sizes[1].get(name) == rows]
    if rows < 2 or not constant:
        return None
    return (f"plate {constant[0]!r} has {rows} entries whatever the rows handed to the program (a constant-size "
            f"plate, pyro.plate({constant[0]!r}, {rows})): it scores exactly {rows} rows")


class _ProgramError(Exception):
    def __init__(self, part: str, err: Exception, rows: int) -> None:
        super().__init__(str(err))
        self.part = part
        self.rows = rows
        self.first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__

    def refusal(self, data: torch.Tensor) -> ValueError:
        if self.part == "model":
            fix = "check that the model is built for this data"
        else:
            fix = "check the guide: its sites, their shapes and the parameters it creates"
        return ValueError(
            f"the {self.part} fails on a batch of {self.rows} rows of shape {tuple(data.shape[1:])} ({self.first}); {fix}"
        )


def _run_rows(model: Callable, guide: Callable, data: torch.Tensor, rows: int, condition: dict):
    """One guide-then-model run on the first ``rows`` rows -> ``(guide sites, model sites, the rows)``; a
    failure names the part that failed."""
    x = data[:rows]
    kw = {k: v[:rows] for k, v in condition.items()}
    try:
        with SiteCollector() as guide_run:
            direct_call(guide)(x, **kw)
        for site in guide_run.sites:
            masked_log_prob(site)
    except FunsorBackendError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError, AssertionError) as err:
        raise _ProgramError("guide", err, rows) from None
    try:
        with SiteCollector(guide_run.values()) as model_run:
            direct_call(model)(x, **kw)
        for site in model_run.sites:  # shapes that only clash in the densities
            masked_log_prob(site)
    except FunsorBackendError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError, AssertionError) as err:
        raise _ProgramError("model", err, rows) from None
    try:
        check_plate_sizes(guide_run.sites, model_run.sites)
    except FunsorBackendError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError, AssertionError) as err:
        raise _ProgramError("guide", err, rows) from None
    return guide_run.sites, model_run.sites, x


def _runs_alone(model: Callable, data: torch.Tensor, rows: int, condition: dict) -> bool:
    """Whether the model runs on the first ``rows`` rows with its latents drawn from its own prior."""
    try:
        with SiteCollector() as run:
            direct_call(model)(data[:rows], **{k: v[:rows] for k, v in condition.items()})
        for site in run.sites:
            masked_log_prob(site)
    except FunsorBackendError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError, AssertionError):
        return False
    return True


def _check_support(model_sites: list[dict], probe: torch.Tensor, data: torch.Tensor) -> None:
    for site in model_sites:
        if not site["is_observed"] or site["value"] is not probe:
            continue
        support = site["fn"].support
        try:
            ok = support.check(data)
        except (RuntimeError, NotImplementedError):
            continue
        if not bool(torch.as_tensor(ok).all()):
            raise ValueError(
                f"data values lie outside the support of observed site {site['name']!r} ({support}); "
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
