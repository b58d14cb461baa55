"""``fit``: SVI training of any Pyro model/guide pair on in-memory data, on the torch-native path.

The data stay on the device and minibatches are drawn by index. Sites inside the ``data`` plate are
scaled by N / batch so that each step's loss estimates the full-data negative ELBO; global sites are
left alone. A non-finite loss or gradient is caught before the optimizer applies it, so the parameters
are still the last good ones: training stops there with a message naming the step (and the site).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import nn

from pprogen.capabilities import capabilities
from pprogen.distributed import World, check_enough_data, collective, current, shard, shard_slice
from pprogen.inference.accel import autocast as autocast_context, check_autocast, compile_networks
from pprogen.inference.elbo import ELBOLoss
from pprogen.inference.estimators import make_elbo
from pprogen.inference.replay import StepReplay
from pprogen.inference.loop import EpochLoop, History  # noqa: F401  (History: its public home is here too)
from pprogen.runs import seed_everything
from pprogen.inference.checks import (
    OPTIMIZERS,
    check_data,
    check_hyperparameters,
    check_condition,
    ProgramPlan,
    check_model_fits_data,
    resolve_device,
)



class NonFiniteLossError(RuntimeError):
    """Training met a NaN/Inf loss or gradient; the parameters were left at the last good step."""

    def __init__(self, message: str, history: "History") -> None:
        super().__init__(message)
        self.history = history


class scale_data_plate(Messenger):
    """Multiplies the log-density of every site inside the ``data`` plate by ``scale``."""

    def __init__(self, scale: float, plate_name: str = "data") -> None:
        super().__init__()
        self.scale = scale
        self.plate_name = plate_name

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and any(
            f.name == self.plate_name for f in msg["cond_indep_stack"]
        ):
            msg["scale"] = msg["scale"] * self.scale


def make_optimizer(name: str, params, **kw: Any) -> torch.optim.Optimizer:
    """A torch optimizer; Adam and AdamW use the fused kernel when every parameter allows it.

    The fused kernel computes the same update as the default loop in one pass over the parameters
    (about 4x less optimizer time for a 1M-parameter VAE on a CPU).
    """
    cls = OPTIMIZERS[name]
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if name in ("adam", "adamw") and fusable:
        return cls(params, fused=True, **kw)
    return cls(params, **kw)


def _make_scheduler(optimizer, schedule: str, epochs: int, gamma: float):
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    if schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=gamma, patience=2)
    return None


def collect_parameters(loss_module: nn.Module, probe: torch.Tensor, **condition) -> list[nn.Parameter]:
    """The module's parameters, plus any ``pyro.param`` the loss depends on (user-written programs).

    The loss runs once first, so that lazily built guides (amortized, ``auto_*``) have their parameters.
    """
    native = _has_differentiable_loss(loss_module.elbo)
    with poutine.trace(param_only=True) as tracer:
        if native:
            loss = loss_module(probe, **condition)
        else:
            loss_module.elbo.loss(loss_module.model, loss_module.guide, probe, **condition)
    params = [p for p in loss_module.parameters() if p.requires_grad]
    seen = {id(p) for p in params}
    store = pyro.get_param_store()
    extra = []
    for name in tracer.trace.nodes:
        if name in store:
            unconstrained = store._params[name]
            if id(unconstrained) not in seen and unconstrained.requires_grad:
                seen.add(id(unconstrained))
                extra.append(unconstrained)
    if extra and native and loss.requires_grad:
        grads = torch.autograd.grad(loss, extra, allow_unused=True)
        extra = [p for p, g in zip(extra, grads) if g is not None]
    return params + extra


def _parameter_names(loss_module: nn.Module, params: list[nn.Parameter]) -> list[str]:
    """A name for each trained tensor: its module path (``model.decoder.0.weight``), its ``pyro.param`` name
    (``param_store.loc``), else its position."""
    names = {id(p): name for name, p in loss_module.named_parameters()}
    for name, p in pyro.get_param_store().named_parameters():
        names.setdefault(id(p), f"param_store.{name}")
    return [names.get(id(p), f"unnamed.{i}") for i, p in enumerate(params)]


class TrainStep:
    """One optimization step: loss, backward, finiteness check, optional clipping, update.

    Estimators with ``differentiable_loss`` train through the loss module; those without (Pyro's
    ``TraceGraph_ELBO``) through their ``loss_and_grads``. With several ranks (``world``), ``forward`` is the
    loss module wrapped in DistributedDataParallel, the gradients of parameters it cannot see
    (``synced_params``: ``pyro.param`` sites, the ``loss_and_grads`` path) are averaged by hand, and the
    loss is averaged too, so every rank takes the same decision on a non-finite step. ``autocast="bf16"`` runs
    the loss under bfloat16 autocast (:mod:`pprogen.inference.accel`); backward and the update stay outside it.
    ``scale`` multiplies the sites inside the per-datum plate ``plate_name``.

    On one rank, a step whose program has settled is replayed from a recorded graph of its loss
    (:mod:`pprogen.inference.replay`; ``fast_path=False`` turns that off, ``self.replay.reason`` says why it is
    off), and the loss and a finiteness check of the gradients are read from the device together, once per step.
    """

    def __init__(self, loss_module: nn.Module, params, optimizer, clip_norm: float | None = None,
                 forward: Callable | None = None, world: World | None = None, synced_params=(),
                 autocast: str | None = None, plate_name: str = "data", fast_path: bool = True,
                 compiled: bool = False, check_every: int = 200, record_after: int = 50) -> None:
        self.loss_module = loss_module
        self.plate_name = plate_name
        self.forward = forward or loss_module
        self.params = list(params)
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.native = _has_differentiable_loss(loss_module.elbo)
        self.world = world or World()
        self.hand_synced = list(synced_params) if self.native else self.params
        self.autocast = autocast
        self.replay = StepReplay(loss_module, self.params, check_every, record_after)
        off = _replay_off_reason(fast_path, self.native, autocast, compiled, self.world)
        if off is not None:
            self.replay.switch_off(off)

    def _loss(self, batch: torch.Tensor, scale: float, condition: dict) -> torch.Tensor:
        with scale_data_plate(scale, self.plate_name), autocast_context(self.autocast, batch.device):
            return self.forward(batch, **condition)

    def rerun(self, batch: torch.Tensor, scale: float = 1.0, **condition) -> None:
        """After a replayed step, the program once more on its batch (no gradients, the random streams left as
        they were), so that the estimator's per-site terms describe that batch: what a non-finite step's
        message names."""
        if self.native and self.replay.last_replayed:
            devices = [batch.device.index or 0] if batch.device.type == "cuda" else []
            buffers = list(self.loss_module.buffers())
            saved = [b.detach().clone() for b in buffers]  # running statistics stay as the step left them
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                try:
                    self._loss(batch, scale, condition)
                finally:
                    for b, v in zip(buffers, saved):
                        b.copy_(v)

    def _nonfinite(self) -> torch.Tensor:
        """``[1.0]`` on the device when a gradient holds a NaN or an infinity, else ``[0.0]`` (clipping first, which
        needs the norm: then a non-finite norm)."""
        if self.clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
            return torch.isfinite(norm).logical_not().float().reshape(1)
        return nonfinite_gradients([g for g in (p.grad for p in self.params) if g is not None])

    def __call__(self, batch: torch.Tensor, scale: float = 1.0, **condition) -> tuple[float, bool]:
        """Returns the loss and whether every gradient was finite; a non-finite loss or gradient is returned, never
        applied. ``condition`` holds the batch's per-datum keyword arguments (labels of a conditional model)."""
        self.optimizer.zero_grad(set_to_none=True)
        world = self.world
        if self.native and not world.active:
            loss, grads_done = self.replay.run(lambda b, c: self._loss(b, scale, c), batch, scale, condition)
            if not grads_done:
                loss.backward()
            bad = self._nonfinite()
            # the step's one host synchronisation: the loss and the gradients' check read together; a non-finite
            # either leaves the parameters as they were (its gradients are dropped by the next zero_grad)
            value, bad = torch.cat([loss.detach().reshape(1), bad.to(loss.device)]).tolist()
            finite = math.isfinite(value) and not bad
            if finite:
                self.optimizer.step()
            return value, finite
        with scale_data_plate(scale, self.plate_name):
            if self.native:  # several ranks: backward always, since DDP's all-reduce must run on every rank
                with autocast_context(self.autocast, batch.device):
                    value = loss = self.forward(batch, **condition)
                loss.backward()
            else:
                with autocast_context(self.autocast, batch.device):
                    value = self.loss_module.elbo.loss_and_grads(
                        self.loss_module.model, self.loss_module.guide, batch, **condition
                    )
                if not world.active and not math.isfinite(value):
                    return value, False
        if world.active:  # the mean loss over ranks: every rank takes the same decision
            world.mean_gradients(self.hand_synced)
            value = world.total(value, batch.device) / world.size
            if not math.isfinite(value):
                return value, False
        finite = not self._nonfinite().item()
        if finite:
            self.optimizer.step()
        return float(value), finite


_ONES: dict[torch.device, torch.Tensor] = {}  # the check's scale, 1.0, once per device (the kernel reads it only)


def nonfinite_gradients(grads: list[torch.Tensor]) -> torch.Tensor:
    """A one-element tensor, 1.0 when any of ``grads`` holds a NaN or an infinity and 0.0 otherwise, computed on the
    device without a host read. One pass over the gradients with AMP's check kernel (which multiplies them by
    exactly 1.0): a fifth of the cost of their norm on a small network's gradients, 0.7 of it on a 1.3M-parameter
    VAE's; sparse gradients go through their values."""
    if not grads:
        return torch.zeros(1)
    device = grads[0].device
    found = torch.zeros(1, device=device, dtype=torch.float32)  # the kernel's types, whatever the default dtype
    one = _ONES.get(device)
    if one is None:
        one = _ONES[device] = torch.ones(1, device=device, dtype=torch.float32)
    groups: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        if g.is_sparse:
            g = g.coalesce().values()
        groups.setdefault((g.device, g.dtype), []).append(g)
    for (where, _), tensors in groups.items():
        if where == device:
            torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, one)
        else:
            flag = torch.zeros(1, device=where, dtype=torch.float32)
            torch._amp_foreach_non_finite_check_and_unscale_(tensors, flag, torch.ones_like(flag))
            found = found + flag.to(device)
    return found


def _replay_off_reason(fast_path: bool, native: bool, autocast: str | None, compiled: bool, world: World) -> str | None:
    """Why a step cannot be replayed (:mod:`pprogen.inference.replay`), or None."""
    if not fast_path:
        return "switched off (fast_path=False)"
    if not native:
        return "the estimator computes its own gradients (no differentiable_loss)"
    if autocast is not None:
        return f"{autocast} autocast"
    if compiled:
        return "compiled networks (torch.compile)"
    if world.active:
        return "several ranks (DistributedDataParallel)"
    return None


def _has_differentiable_loss(elbo: Any) -> bool:
    return callable(getattr(elbo, "differentiable_loss", None))


def build_loss(model: Callable, guide: Callable, elbo: Any = "analytic", num_particles: int = 1, beta: float = 1.0,
               **elbo_kw: Any):
    estimator = make_elbo(elbo, num_particles=num_particles, beta=beta, **elbo_kw) if isinstance(elbo, str) else elbo
    if hasattr(estimator, "loss") and (hasattr(estimator, "differentiable_loss") or hasattr(estimator, "loss_and_grads")):
        return ELBOLoss(estimator, model, guide)
    raise TypeError(f"elbo must be an estimator name or an ELBO object, got {type(elbo).__name__}")


@torch.no_grad()
def evaluate_loss(loss_module: nn.Module, data: torch.Tensor, batch_size: int,
                  condition: dict[str, torch.Tensor] | None = None, world: World | None = None,
                  plan: ProgramPlan | None = None) -> float:
    """The estimator's negative ELBO per datum over ``data`` (no gradients); with several ranks each
    evaluates its share of the rows and the sums are added up. A program that subsamples its plate itself
    (``plan.mode == "program"``) is handed all rows ``ceil(N / B)`` times and the mean of its own estimates
    is taken."""
    world = world or World()
    if plan is not None and plan.mode == "program":  # each call an unbiased estimate of the whole loss
        calls = math.ceil(data.shape[0] / plan.subsample_size)
        total = sum(loss_module.elbo.loss(loss_module.model, loss_module.guide, data, **(condition or {}))
                    for _ in range(calls))
        return total / calls / data.shape[0]
    mine = shard_slice(data.shape[0], world)
    total = 0.0
    for start in range(mine.start, mine.stop, batch_size):
        rows = slice(start, min(start + batch_size, mine.stop))
        kw = {k: v[rows] for k, v in (condition or {}).items()}
        if plan is not None and plan.mode == "indices":  # Pyro scaled the batch to the plate's full size
            with scale_data_plate((rows.stop - rows.start) / plan.full_size, plan.plate_name):
                total += loss_module.elbo.loss(loss_module.model, loss_module.guide, data[rows], **kw)
            continue
        total += loss_module.elbo.loss(loss_module.model, loss_module.guide, data[rows], **kw)
    return world.total(total, data.device) / data.shape[0]


def _data_parallel(loss_module: nn.Module, params: list, buffers: list, probe, world: World, device):
    """The loss module in DistributedDataParallel, after every rank has taken rank 0's parameters and buffers
    (lazily built guides exist by now: :func:`collect_parameters` ran the loss). Returns the forward to
    train through and the parameters whose gradients must be averaged by hand."""
    from torch.nn.parallel import DistributedDataParallel

    world.broadcast_tensors(params + buffers)
    inside = [p for p in loss_module.parameters() if p.requires_grad]
    if not _has_differentiable_loss(loss_module.elbo) or not inside:
        return loss_module, params
    ids = {id(p) for p in inside}
    loss = loss_module(probe[0], **probe[1])  # parameters the loss never reaches need DDP's unused search
    unused = any(g is None for g in torch.autograd.grad(loss, inside, allow_unused=True))
    wrapped = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=unused)
    return wrapped, [p for p in params if id(p) not in ids]


def _settings(optim, objective, stopping, speed, flat: dict[str, Any]) -> dict[type, Any]:
    """The four groups of ``fit``'s settings, each given as its object or left at its defaults, with any
    setting also given by its own name (``lr=1e-2``) put in its group."""
    given = {Optim: optim, Objective: objective, Stopping: stopping, Speed: speed}
    for group, value in given.items():
        if value is not None and not isinstance(value, group):
            raise TypeError(f"fit's {group.__name__.lower()}= expects pprogen.inference.{group.__name__}, got "
                            f"{type(value).__name__}")
    unknown = sorted(set(flat) - set(FLAT))
    if unknown:
        raise TypeError(f"fit() got an unexpected keyword argument {unknown[0]!r}")
    out = {}
    for group, value in given.items():
        mine = {k: v for k, v in flat.items() if FLAT[k] is group}
        if value is not None and mine:
            raise TypeError(f"fit() got {sorted(mine)[0]}= and {group.__name__.lower()}=: give the setting in one "
                            f"place, e.g. {group.__name__.lower()}={group.__name__}(..., {sorted(mine)[0]}=...)")
        out[group] = replace(value if value is not None else group(), **mine)
    return out


def _values(group) -> tuple:
    """A settings group's values in field order, as given (``astuple`` would deep-copy an ELBO object)."""
    return tuple(getattr(group, f.name) for f in fields(group))


def _continue_schedule(opt, scheduler, schedule: str, state: dict[str, Any], lr: float, epochs: int) -> None:
    """A resumed run's learning rate continues where it was: a new ``lr`` rescales the schedule from here on
    (the checkpoint's optimizer would otherwise keep the old one), and a cosine schedule stretched to more
    epochs decays from its current rate to the new end instead of starting a second cycle."""
    saved = state.get("lr")
    if saved is None and state.get("optimizer", {}).get("param_groups"):  # older checkpoints: the optimizer's
        group = state["optimizer"]["param_groups"][0]
        saved = group.get("initial_lr", group.get("lr"))
    if saved is not None and saved != lr:
        ratio = lr / saved
        for group in opt.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [b * ratio for b in scheduler.base_lrs]
    if schedule == "cosine" and scheduler.T_max != epochs:
        if state["epoch"] >= scheduler.T_max and epochs > state["epoch"]:
            raise ValueError(
                f"this run's cosine schedule ended at epoch {scheduler.T_max} with the learning rate at "
                f"{scheduler.eta_min:g}: more epochs would not move the weights; start a new run (its weights can "
                "seed the new one) or keep --epochs at " + str(scheduler.T_max)
            )
        scheduler.T_max = epochs


def _site_hint(loss_module: nn.Module, batch: torch.Tensor | None = None) -> str:
    """Where a non-finite loss came from: the site, and the layer when the model can say
    (``model.locate_nonfinite(batch)``, which flows offer)."""
    terms = getattr(getattr(loss_module, "elbo", None), "last_terms", {}) or {}
    bad = [name for name, term in terms.items() if not torch.isfinite(term).all()]
    hint = f" at site {bad[0]!r}" if bad else ""
    locate = getattr(loss_module.model, "locate_nonfinite", None)
    if callable(locate) and batch is not None:
        try:
            layer = locate(batch)
        except Exception:  # a diagnostic must never mask the error it explains
            layer = None
        if layer:
            hint += f" (first non-finite value from the data side: {layer})"
    return hint


@dataclass(frozen=True)
class Optim:
    """How ``fit`` steps: the optimizer (``adam``, ``adamw``, ``sgd``, ``rmsprop``, ``adagrad``), its learning rate and
    weight decay, the schedule (``constant``, ``cosine``, ``exponential`` or ``plateau``, with ``lr_gamma``),
    gradient-norm clipping, and ``ema``, the decay of a moving average of the parameters (Polyak averaging,
    :class:`ParameterAverage`; 0 turns it off)."""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    lr_gamma: float = 0.5
    clip_norm: float | None = None
    ema: float = 0.0


@dataclass(frozen=True)
class Objective:
    """What ``fit`` maximizes: the ELBO estimator (a name for :func:`make_elbo` or an ELBO object), its
    particles, the KL weight ``beta`` (ramped up over ``kl_warmup`` epochs) and a Rényi ``alpha``."""

    elbo: Any = "analytic"
    num_particles: int = 1
    beta: float = 1.0
    kl_warmup: int = 0
    alpha: float | None = None


@dataclass(frozen=True)
class Stopping:
    """Early stopping on the validation loss after ``patience`` epochs without a better one (None: off);
    ``restore_best`` leaves the best epoch's state in the model and guide."""

    patience: int | None = None
    restore_best: bool = True


@dataclass(frozen=True)
class Speed:
    """bfloat16 autocast (``autocast="bf16"``), ``torch.compile`` of the networks (``compile=True``) and the
    replayed steps (``fast_path``, on by default: :mod:`pprogen.inference.replay`)."""

    autocast: str | None = None
    compile: bool = False
    fast_path: bool = True


GROUPS = (Optim, Objective, Stopping, Speed)
FLAT = {f.name: group for group in GROUPS for f in fields(group)}  # fit(lr=...) is fit(optim=Optim(lr=...))


def fit(
    model: Callable,
    guide: Callable,
    data: Any,
    *,
    valid_data: torch.Tensor | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    optim: Optim | None = None,
    objective: Objective | None = None,
    stopping: Stopping | None = None,
    speed: Speed | None = None,
    device: str | torch.device = "auto",
    seed: int | None = 0,
    progress: bool = True,
    run: Any = None,
    resume: bool | dict[str, Any] = False,
    callback: Callable[[int, dict], None] | None = None,
    condition: dict[str, torch.Tensor] | None = None,
    valid_condition: dict[str, torch.Tensor] | None = None,
    world: World | None = None,
    plate_name: str | None = None,
    **settings: Any,
) -> History:
    """Fit ``model``/``guide`` to ``data`` (a tensor ``(N, ...)`` or a dataset with ``train``/``valid``).

    The settings come in four groups: ``optim`` (:class:`Optim`: optimizer, lr, weight_decay, schedule,
    lr_gamma, clip_norm, ema), ``objective`` (:class:`Objective`: elbo, num_particles, beta, kl_warmup, alpha),
    ``stopping`` (:class:`Stopping`: patience, restore_best) and ``speed`` (:class:`Speed`: autocast, compile).
    Any of their settings may also be given by name (``fit(..., lr=1e-2, patience=5)``), which sets it in its
    group.

    Each epoch draws a fresh permutation, takes minibatches by index, and evaluates the validation
    loss (negative ELBO per datum) when validation data exist; ``patience`` stops early on it and
    ``restore_best`` leaves the best validation state in the model and guide. With ``ema`` (a decay such as 0.999),
    the validation loss, early stopping and the weights left at the end are those of the moving average of the
    parameters (:class:`ParameterAverage`), which a checkpoint keeps. ``kl_warmup`` ramps the
    KL weight linearly from ``beta / kl_warmup`` to ``beta`` over that many epochs (estimators with a
    ``beta``: ``trace``, ``stl``). With a ``run``
    (:class:`pprogen.runs.Run`), each epoch writes metrics and an atomic checkpoint, and ``resume``
    continues from it exactly (``resume`` may be the checkpoint already read with ``run.load_checkpoint()``);
    at the end (or at a non-finite loss) the run's ``model.safetensors`` and ``guide.safetensors`` get the
    weights left in the model and guide. ``condition`` (and ``valid_condition``) map keyword names to per-datum
    tensors, sliced with each minibatch and passed to model and guide: the labels of a conditional
    model, ``condition={"y": labels}``. Returns the :class:`History`.

    Launched by ``torchrun`` (``world``: :func:`pprogen.distributed.init`; by default the process group
    already set up), ``batch_size`` is per rank: each step's global batch of ``batch_size x ranks`` rows is
    cut from the epoch's shared permutation and split among the ranks, the loss module trains inside
    DistributedDataParallel, and only rank 0 writes to ``run`` (see :mod:`pprogen.distributed`). A final
    remainder of the epoch smaller than the number of ranks is left out.

    ``autocast="bf16"`` trains under bfloat16 autocast (validation stays float32) and ``compile=True``
    compiles the model's and guide's networks with ``torch.compile``; see :mod:`pprogen.inference.accel`.

    ``plate_name`` names the per-datum plate; by default it is found by a sandboxed probe on the first
    minibatch: the plate whose size (full size, when subsampled) is the number of rows handed to the program.
    A program that subsamples that plate itself (``pyro.plate(name, len(x), subsample_size=B)``, per-datum
    guide tables indexed by it) is handed all rows each step, ``ceil(N / B)`` steps an epoch, and Pyro
    scales it; one that takes its indices as an argument (``pyro.plate(name, N, subsample=idx)``, the
    indices in ``condition``) gets minibatches of rows and Pyro's scale. A guide whose parameters are sized
    by the rows it is handed (a per-datum table, an autoguide over per-datum latents) trains full batch only.
    """
    groups = _settings(optim, objective, stopping, speed, settings)
    optimizer, lr, weight_decay, schedule, lr_gamma, clip_norm, ema = _values(groups[Optim])
    elbo, num_particles, beta, kl_warmup, alpha = _values(groups[Objective])
    patience, restore_best = _values(groups[Stopping])
    autocast, compile, fast_path = _values(groups[Speed])
    world = current() if world is None else world
    if hasattr(data, "train"):
        valid_data = data.valid if valid_data is None else valid_data
        data = data.train
    check_hyperparameters(
        epochs=epochs, batch_size=batch_size, num_particles=num_particles, lr=lr, weight_decay=weight_decay,
        clip_norm=clip_norm, patience=patience, optimizer=optimizer, schedule=schedule, lr_gamma=lr_gamma, ema=ema,
    )
    missing_ok = capabilities(model).accepts_missing
    check_data(data, "training data", missing_ok)
    if valid_data is not None:
        check_data(valid_data, "validation data", missing_ok)
    if patience is not None and valid_data is None:
        raise ValueError("early stopping (patience) needs validation data; pass valid_data or patience=None")
    check_enough_data(data.shape[0], world)
    device = resolve_device(device)
    check_autocast(autocast, device)
    if seed is not None:
        seed_everything(seed)

    for part in (model, guide):
        if isinstance(part, nn.Module):
            part.to(device)
    condition = {k: v.to(device) for k, v in check_condition(condition, data, "training data").items()}
    if valid_data is not None:
        valid_condition = check_condition(valid_condition, valid_data, "validation data")
        if set(valid_condition) != set(condition):
            raise ValueError(f"validation data need the same condition as the training data ({sorted(condition)}), "
                             f"got {sorted(valid_condition)}")
        valid_condition = {k: v.to(device) for k, v in valid_condition.items()}
    data = data.to(device)
    valid_data = valid_data.to(device) if valid_data is not None else None
    num_data = data.shape[0]
    batch_size = min(batch_size, num_data // world.size)
    plan = check_model_fits_data(model, guide, data, batch_size=batch_size, plate_name=plate_name,
                                 valid_data=valid_data, valid_condition=valid_condition, **condition)
    if plan.plate_name is None and batch_size < num_data:
        raise ValueError(
            f"the program has no plate, so a minibatch of {batch_size} rows cannot be scaled to the {num_data} rows; "
            "put its per-datum sites inside pyro.plate('data', len(x)) or fit full batch "
            f"(batch_size >= {num_data})"
        )
    if plan.mode == "program" and world.active:
        raise ValueError(
            f"plate {plan.plate_name!r} subsamples itself; distributed training shards rows among ranks: cut the "
            "minibatches with fit's batch_size (pyro.plate(name, len(x))) or train on one process"
        )

    loss_module = build_loss(model, guide, elbo, num_particles, beta, **({} if alpha is None else {"alpha": alpha}))
    if getattr(loss_module.elbo, "plate_name", "") is None:
        loss_module.elbo.plate_name = plan.plate_name
    if kl_warmup and not hasattr(loss_module.elbo, "beta"):
        raise ValueError(f"kl_warmup anneals an estimator's beta, and {type(loss_module.elbo).__name__} has none; "
                         "use an estimator from make_elbo or kl_warmup=0")
    own_rows = plan.mode == "program"  # the program is handed every row and picks its minibatch itself
    probe = (data, condition) if own_rows else (data[:batch_size], {k: v[:batch_size] for k, v in condition.items()})
    params = collect_parameters(loss_module, probe[0], **probe[1])
    if not params:
        raise ValueError("the model and guide have no trainable parameters: nothing to fit")
    if compile:  # after collect_parameters: lazily built guides have their networks by now
        compile_networks(model, guide)
    forward, synced = loss_module, params
    buffers = dict(loss_module.named_buffers())  # mask indices, running statistics: part of the state
    if world.active:
        forward, synced = _data_parallel(loss_module, params, list(buffers.values()), probe, world, device)
    opt = make_optimizer(optimizer, params, lr=lr, weight_decay=weight_decay)
    scheduler = _make_scheduler(opt, schedule, epochs, lr_gamma)
    step = TrainStep(loss_module, params, opt, clip_norm, forward, world, synced, autocast,
                     plan.plate_name or "data", fast_path=fast_path, compiled=compile)
    average = ParameterAverage(params, ema) if ema else None
    loop = EpochLoop(epochs, seed, world, run)
    history = loop.history
    best_state = None
    bad_epochs = 0

    keys = [f"p.{name}" for name in _parameter_names(loss_module, params)]  # the checkpoint's, by name

    def snapshot() -> dict[str, torch.Tensor]:
        state = {key: p.detach().clone() for key, p in zip(keys, params)}
        state.update({f"b.{name}": b.detach().clone() for name, b in buffers.items()})
        return state

    def restore(state: dict[str, torch.Tensor]) -> None:
        named = any(k.startswith("p.") for k in state)  # older checkpoints hold them by position
        with torch.no_grad():
            for i, (key, p) in enumerate(zip(keys, params)):
                p.copy_(state[key] if named else state[f"p{i}"])
            for name, b in buffers.items():
                if f"b.{name}" in state:
                    b.copy_(state[f"b.{name}"])

    def checkpoint_state(epoch: int) -> dict[str, Any]:
        return {
            **loop.state(epoch),
            "params": snapshot(),
            "optimizer": opt.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "best_state": best_state or {},
            "average": average.state(keys) if average is not None else {},
            "bad_epochs": bad_epochs,
            "lr": lr,
        }

    if resume:
        state = resume if isinstance(resume, dict) else world.load_checkpoint(run)  # a checkpoint already read
        saved = [k for k in state["params"] if k.startswith("p")]
        where = f"checkpoint in {run.path}" if run is not None else "the checkpoint"
        if any(k.startswith("p.") for k in saved) and saved != keys:
            theirs, ours = set(saved) - set(keys), set(keys) - set(saved)
            what = (f"holds {sorted(theirs)[0][2:]!r}, which this model and guide lack" if theirs else
                    f"lacks {sorted(ours)[0][2:]!r}" if ours else "holds the parameters in another order")
            raise ValueError(f"{where} {what}; resume with the configuration the run was started with")
        for key, p in zip(keys, params):
            if key in state["params"] and state["params"][key].shape != p.shape:
                raise ValueError(f"{where} holds {key[2:]!r} of shape {tuple(state['params'][key].shape)} where this "
                                 f"model has {tuple(p.shape)}; resume with the configuration the run was started with")
        if len(saved) != len(params):
            raise ValueError(
                f"{where} holds {len(saved)} parameter tensors but this model "
                f"and guide have {len(params)}; resume with the configuration the run was started with"
            )
        restore(state["params"])
        if average is not None:  # a checkpoint without one (trained without ema): the average starts here
            average.load(state.get("average") or {}, keys)
        opt.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"]:
            scheduler.load_state_dict(state["scheduler"])
        _continue_schedule(opt, scheduler, schedule, state, lr, epochs)
        loop.resume(state)
        history = loop.history
        best_state = state["best_state"] or None
        bad_epochs = state["bad_epochs"]
        if history.stop_reason == "early_stopping":
            if patience is not None and bad_epochs >= patience:  # still stopped: hand back the best state
                if restore_best and best_state is not None:
                    restore(best_state)
                return history
            history.stop_reason = "finished"  # a larger patience (or none) continues the run

    global_batch = batch_size * world.size
    steps_per_epoch = math.ceil(num_data / global_batch)
    if 0 < num_data % global_batch < world.size:
        steps_per_epoch -= 1  # too few rows left for one per rank
    if own_rows:
        steps_per_epoch = math.ceil(num_data / plan.subsample_size)
    # one minibatch of every row: hand them in their own order (a per-datum guide table stays aligned)
    whole = own_rows or (not world.active and global_batch >= num_data)
    writes = loop.writes
    with loop.running(steps_per_epoch, progress) as bar:
        for epoch, order in loop.epochs(num_data, device):
            loss_module.train()
            if kl_warmup:
                loss_module.elbo.beta = beta * min(1.0, (epoch + 1) / kl_warmup)
            step.replay.refresh()  # callbacks may have changed the program's attributes since the last epoch
            started = time.perf_counter()
            epoch_loss = 0.0
            for i in range(steps_per_epoch):
                if whole:
                    index = slice(None)
                    scale = 1.0
                else:
                    rows = order[i * global_batch : (i + 1) * global_batch]
                    index = shard(rows, world)
                    scale = num_data * world.size / rows.shape[0] if plan.scales else 1.0
                with collective("the gradient all-reduce", world):
                    value, finite = step(data[index], scale, **{k: v[index] for k, v in condition.items()})
                if not finite:
                    what = "loss" if not math.isfinite(value) else "gradient"
                    step.rerun(data[index], scale, **{k: v[index] for k, v in condition.items()})
                    history.stop_reason = "non_finite"
                    message = (
                        f"non-finite {what} at epoch {epoch + 1}, step {i + 1} "
                        f"(global step {epoch * steps_per_epoch + i + 1}){_site_hint(loss_module, data[index])}; "
                        "parameters were left at the last good step. Lower the learning rate, set "
                        "clip_norm, " + ("train without bf16 autocast, " if autocast else "") + "or check the data"
                    )
                    if writes:
                        run.save_checkpoint(checkpoint_state(epoch))
                        _save_weights(run, model, guide)
                    raise NonFiniteLossError(message, history)
                if average is not None:
                    average.update()
                epoch_loss += value
                bar.update()
                if i % 10 == 0:
                    bar.step_info(epoch=epoch + 1, loss=f"{value / num_data:.3f}")
            loss_module.eval()
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": epoch_loss / steps_per_epoch / num_data,
                "valid_loss": None,
                "lr": opt.param_groups[0]["lr"],
            }
            if valid_data is not None:
                if kl_warmup:  # scored at the final beta, so that epochs compare and the loss is the bound
                    loss_module.elbo.beta = beta
                with average.swapped() if average is not None else nullcontext():  # the average is scored, kept
                    record["valid_loss"] = evaluate_loss(loss_module, valid_data, max(batch_size, 512),
                                                         valid_condition, world, plan)
                    if record["valid_loss"] < history.best_valid_loss:
                        history.best_valid_loss = record["valid_loss"]
                        history.best_epoch = epoch + 1
                        best_state = snapshot()
                        bad_epochs = 0
                    else:
                        bad_epochs += 1
            record["seconds"] = time.perf_counter() - started
            history.records.append(record)
            if scheduler is not None:
                if schedule == "plateau":
                    scheduler.step(record["valid_loss"] if record["valid_loss"] is not None else record["train_loss"])
                else:
                    scheduler.step()
            stop = patience is not None and bad_epochs >= patience
            if stop:
                history.stop_reason = "early_stopping"
            bar.epoch(
                epoch + 1, train=f"{record['train_loss']:.3f}",
                valid="-" if record["valid_loss"] is None else f"{record['valid_loss']:.3f}",
                seconds=f"{record['seconds']:.1f}",
            )
            loop.save(lambda: checkpoint_state(epoch + 1))
            if callback is not None:
                callback(epoch + 1, record)
            if stop:
                break
    if restore_best and best_state is not None:
        restore(best_state)
    elif average is not None:
        average.copy_to_parameters()
    if writes:
        _save_weights(run, model, guide)
    history.fast_path = step.replay.summary()
    return history


def warmed_up_decay(decay: float, updates: int) -> float:
    """A moving average's decay after ``updates`` updates: ``min(decay, (1 + t) / (10 + t))``, so that the first
    steps do not drag the starting weights along (SVI's :class:`ParameterAverage`, the GAN generator's average)."""
    return min(decay, (1 + updates) / (10 + updates))


class ParameterAverage:
    """Polyak averaging: an exponential moving average of ``params``, updated after every applied step with the
    decay :func:`warmed_up_decay` (the adversarial trainer's warm-up). ``fit(ema=...)`` scores the average on the validation data,
    early-stops on it and leaves it (or its best epoch) in the model and guide; the training loss is the
    trained parameters'."""

    def __init__(self, params: list[torch.Tensor], decay: float) -> None:
        self.params, self.decay, self.updates = list(params), decay, 0
        self.live = [p.detach() for p in self.params]  # views of the parameters' storage, which steps update in place
        self.average = [p.clone() for p in self.live]

    def update(self) -> None:
        torch._foreach_lerp_(self.average, self.live, 1.0 - warmed_up_decay(self.decay, self.updates))
        self.updates += 1

    @contextmanager
    def swapped(self):
        """The average in the parameters inside the block, the trained values back after it (bit for bit)."""
        trained = [p.detach().clone() for p in self.params]
        self.copy_to_parameters()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, trained):
                    p.copy_(t)

    def copy_to_parameters(self) -> None:
        with torch.no_grad():
            for p, a in zip(self.params, self.average):
                p.copy_(a)

    def state(self, keys: list[str]) -> dict[str, Any]:
        return {"updates": self.updates, **{key: a.clone() for key, a in zip(keys, self.average)}}

    def load(self, state: dict[str, Any], keys: list[str]) -> None:
        """The average a checkpoint holds; an empty one restarts the average from the parameters as they are."""
        if not state:
            self.average, self.updates = [p.clone() for p in self.live], 0
            return
        self.updates = state["updates"]
        with torch.no_grad():
            for key, a in zip(keys, self.average):
                a.copy_(state[key])


def _save_weights(run, model, guide) -> None:
    """The weights by name, where the run's readers look for them (the checkpoint holds them by position)."""
    run.save_weights("model", model)
    run.save_weights("guide", guide)
