"""``fit``: SVI training of any Pyro model/guide pair on in-memory data, on the torch-native path.

The data stay on the device and minibatches are drawn by index. Sites inside the ``data`` plate are
scaled by N / batch so that each step's loss estimates the full-data negative ELBO; global sites are
left alone. A non-finite loss or gradient is caught before the optimizer applies it, so the parameters
are still the last good ones: training stops there with a message naming the step (and the site).

``fit`` is the shared epoch loop (:mod:`pprogen.inference.loop`: resume, shuffling, progress, checkpoint and
metrics, the non-finite guard, early stopping) around an epoch of SVI steps. Its parts live by concept: the step
and what it is built from in :mod:`pprogen.inference.step`, the settings groups in
:mod:`pprogen.inference.settings`, SVI's part of the checkpoint in :mod:`pprogen.inference.checkpoints`, the
moving average in :mod:`pprogen.inference.averaging`; their names are importable from here too.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import torch
from torch import nn

from pprogen.capabilities import capabilities
from pprogen.distributed import World, check_enough_data, collective, current, shard, shard_slice
from pprogen.inference.accel import check_autocast, compile_networks
from pprogen.inference.averaging import ParameterAverage, warmed_up_decay  # noqa: F401  (importable from here)
from pprogen.inference.checkpoints import SVICheckpoint
from pprogen.inference.checks import (
    ProgramPlan,
    check_condition,
    check_data,
    check_hyperparameters,
    check_model_fits_data,
    resolve_device,
)
from pprogen.inference.loop import (  # noqa: F401  (History, NonFiniteLossError, save_weights: importable from here)
    EarlyStopping,
    EpochLoop,
    History,
    NonFiniteLossError,
    save_weights,
)
from pprogen.inference.settings import FLAT, GROUPS, Objective, Optim, Speed, Stopping, group_settings  # noqa: F401
from pprogen.inference.step import (  # noqa: F401  (the step's parts: importable from here, as they were)
    TrainStep,
    build_loss,
    collect_parameters,
    has_differentiable_loss,
    make_optimizer,
    nonfinite_gradients,
    parameter_names,
    scale_data_plate,
)
from pprogen.inference.unvectorized import unvectorized_loss
from pprogen.runs import seed_everything

_save_weights = save_weights  # the old private name (pprogen.engine used it), kept for now


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
    if not has_differentiable_loss(loss_module.elbo) or not inside:
        return loss_module, params
    ids = {id(p) for p in inside}
    loss = loss_module(probe[0], **probe[1])  # parameters the loss never reaches need DDP's unused search
    unused = any(g is None for g in torch.autograd.grad(loss, inside, allow_unused=True))
    wrapped = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=unused)
    return wrapped, [p for p in params if id(p) not in ids]


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


@dataclass
class _Inputs:
    """What ``fit`` trains on, on the device: the rows and their per-datum conditions (training and validation),
    the batch size per rank, the program's plan (:func:`~pprogen.inference.checks.check_model_fits_data`) and the
    device."""

    data: torch.Tensor
    condition: dict[str, torch.Tensor]
    valid_data: torch.Tensor | None
    valid_condition: dict[str, torch.Tensor] | None
    batch_size: int
    plan: ProgramPlan
    device: torch.device


def _check_inputs(model: Callable, data: torch.Tensor, valid_data: torch.Tensor | None, epochs: int, batch_size: int,
                  groups: dict[type, Any], world: World) -> None:
    """The settings and the data, refused in one line before anything runs."""
    optim, patience = groups[Optim], groups[Stopping].patience
    check_hyperparameters(
        epochs=epochs, batch_size=batch_size, num_particles=groups[Objective].num_particles, lr=optim.lr,
        weight_decay=optim.weight_decay, clip_norm=optim.clip_norm, patience=patience, optimizer=optim.optimizer,
        schedule=optim.schedule, ema=optim.ema,
    )
    missing_ok = capabilities(model).accepts_missing
    check_data(data, "training data", missing_ok)
    if valid_data is not None:
        check_data(valid_data, "validation data", missing_ok)
    if patience is not None and valid_data is None:
        raise ValueError("early stopping (patience) needs validation data; pass valid_data or patience=None")
    check_enough_data(data.shape[0], world)


def _on_device(model: Callable, guide: Callable, data: torch.Tensor, valid_data: torch.Tensor | None,
               condition: dict | None, valid_condition: dict | None, batch_size: int, device: torch.device,
               world: World, plate_name: str | None) -> _Inputs:
    """Model, guide and data moved to ``device``, the conditions checked, and the program probed for its plate."""
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
    return _Inputs(data, condition, valid_data, valid_condition, batch_size, plan, device)


class _SVI:
    """One ``fit`` on its epoch loop: the loss module, its trained tensors (:class:`SVICheckpoint`), optimizer,
    schedule, step and moving average; an epoch of minibatch steps, its validation, and the run's resume and end."""

    def __init__(self, model: Callable, guide: Callable, inputs: _Inputs, groups: dict[type, Any],
                 loop: EpochLoop, stopping: EarlyStopping) -> None:
        optim, objective, speed = groups[Optim], groups[Objective], groups[Speed]
        self.model, self.guide, self.inputs, self.loop, self.stopping = model, guide, inputs, loop, stopping
        self.world, self.schedule, self.autocast = loop.world, optim.schedule, speed.autocast
        self.beta, self.kl_warmup = objective.beta, objective.kl_warmup
        self.restore_best = groups[Stopping].restore_best
        plan, batch_size = inputs.plan, inputs.batch_size
        alpha = {} if objective.alpha is None else {"alpha": objective.alpha}
        own_rows = plan.mode == "program"  # the program is handed every row and picks its minibatch itself
        data, condition = inputs.data, inputs.condition
        probe = (data, condition) if own_rows else (data[:batch_size], {k: v[:batch_size] for k, v in condition.items()})
        loss_module = build_loss(model, guide, objective.elbo, objective.num_particles, objective.beta, **alpha)
        loss_module, self.particles = unvectorized_loss(loss_module, objective.elbo, objective.num_particles,
                                                        objective.beta, probe, **alpha)  # looped, if it must be
        self.loss_module = loss_module
        if getattr(loss_module.elbo, "plate_name", "") is None:
            loss_module.elbo.plate_name = plan.plate_name
        if self.kl_warmup and not hasattr(loss_module.elbo, "beta"):
            raise ValueError(f"kl_warmup anneals an estimator's beta, and {type(loss_module.elbo).__name__} has "
                             "none; use an estimator from make_elbo or kl_warmup=0")
        params = collect_parameters(loss_module, probe[0], **probe[1])
        if not params:
            raise ValueError("the model and guide have no trainable parameters: nothing to fit")
        if speed.compile:  # after collect_parameters: lazily built guides have their networks by now
            compile_networks(model, guide)
        forward, synced = loss_module, params
        buffers = dict(loss_module.named_buffers())  # mask indices, running statistics: part of the state
        if self.world.active:
            forward, synced = _data_parallel(loss_module, params, list(buffers.values()), probe, self.world,
                                             inputs.device)
        self.optimizer = make_optimizer(optim.optimizer, params, lr=optim.lr, weight_decay=optim.weight_decay)
        scheduler = self.scheduler = optim.scheduler(self.optimizer, loop.epochs_total)
        self.step = TrainStep(loss_module, params, self.optimizer, optim.clip_norm, forward, self.world, synced,
                              speed.autocast, plan.plate_name or "data", fast_path=speed.fast_path,
                              compiled=speed.compile)
        self.average = ParameterAverage(params, optim.ema) if optim.ema else None
        self.checkpoint = SVICheckpoint(parameter_names(loss_module, params), params, buffers, self.optimizer,
                                        scheduler, self.average, optim.lr)
        self._lay_out_steps(own_rows)

    def _lay_out_steps(self, own_rows: bool) -> None:
        """Steps an epoch, and whether each step takes every row in its own order (one minibatch of every row, or
        a program that picks its rows itself: a per-datum guide table stays aligned)."""
        num_data, plan, world = self.inputs.data.shape[0], self.inputs.plan, self.world
        self.num_data, self.global_batch = num_data, self.inputs.batch_size * world.size
        self.steps_per_epoch = math.ceil(num_data / self.global_batch)
        if 0 < num_data % self.global_batch < world.size:
            self.steps_per_epoch -= 1  # too few rows left for one per rank
        if own_rows:
            self.steps_per_epoch = math.ceil(num_data / plan.subsample_size)
        self.whole = own_rows or (not world.active and self.global_batch >= num_data)

    # ------------------------------------------------------------------ resume and end

    def resume(self, state: dict[str, Any], run: Any) -> bool:
        """The checkpoint's state back in place; True when the run stopped early and stays stopped under this
        patience (the best state is then handed back, with ``restore_best``)."""
        where = f"checkpoint in {run.path}" if run is not None else "the checkpoint"
        self.checkpoint.check(state["params"], where)
        self.checkpoint.load(state, self.schedule, self.loop.epochs_total)
        self.loop.resume(state)
        if not self.stopping.resume(state, self.loop.history):
            return False
        self.hand_back_best()
        return True

    def hand_back_best(self) -> bool:
        """The best validation epoch's state into the model and guide, where ``restore_best`` asks and one exists."""
        if self.restore_best and self.stopping.best_state is not None:
            self.checkpoint.restore(self.stopping.best_state)
            return True
        return False

    def finish(self) -> History:
        """The state the run leaves (the best epoch's, else the moving average, else the last), its weights by name,
        and how the steps ran."""
        if not self.hand_back_best() and self.average is not None:
            self.average.copy_to_parameters()
        self.loop.save_weights(self.model, self.guide)
        self.loop.history.fast_path = self.step.replay.summary() + (f"; {self.particles}" if self.particles else "")
        return self.loop.history

    def state(self, epoch: int) -> dict[str, Any]:
        return self.checkpoint.state(self.loop, epoch, self.stopping)

    # ------------------------------------------------------------------ an epoch

    def train_epoch(self, epoch: int, order: torch.Tensor) -> float:
        """The epoch's minibatch steps; returns the training loss per datum (the mean over the steps)."""
        self.loss_module.train()
        if self.kl_warmup:
            self.loss_module.elbo.beta = self.beta * min(1.0, (epoch + 1) / self.kl_warmup)
        self.step.replay.refresh()  # callbacks may have changed the program's attributes since the last epoch
        epoch_loss = 0.0
        for i in range(self.steps_per_epoch):
            index, scale = self._minibatch(i, order)
            batch = self.inputs.data[index]
            condition = {k: v[index] for k, v in self.inputs.condition.items()}
            with collective("the gradient all-reduce", self.world):
                value, finite = self.step(batch, scale, **condition)
            if not finite:
                self._stop(epoch, i, value, batch, scale, condition)
            if self.average is not None:
                self.average.update()
            epoch_loss += value
            self.loop.step_done(i, epoch + 1, loss=value / self.num_data)
        self.loss_module.eval()
        return epoch_loss / self.steps_per_epoch / self.num_data

    def _minibatch(self, i: int, order: torch.Tensor) -> tuple[slice | torch.Tensor, float]:
        """Step ``i``'s rows (this rank's share of the global batch) and the data-plate scale."""
        if self.whole:
            return slice(None), 1.0
        rows = order[i * self.global_batch : (i + 1) * self.global_batch]
        scale = self.num_data * self.world.size / rows.shape[0] if self.inputs.plan.scales else 1.0
        return shard(rows, self.world), scale

    def _stop(self, epoch: int, i: int, value: float, batch: torch.Tensor, scale: float, condition: dict) -> NoReturn:
        """The non-finite guard: the step's program run once more (so the message can name the site), the
        checkpoint and weights of the last good step written, and :class:`NonFiniteLossError` raised."""
        what = "loss" if not math.isfinite(value) else "gradient"
        self.step.rerun(batch, scale, **condition)
        message = (
            f"non-finite {what} at epoch {epoch + 1}, step {i + 1} "
            f"(global step {epoch * self.steps_per_epoch + i + 1}){_site_hint(self.loss_module, batch)}; "
            "parameters were left at the last good step. Lower the learning rate, set "
            "clip_norm, " + ("train without bf16 autocast, " if self.autocast else "") + "or check the data"
        )
        loop = self.loop
        loop.non_finite(message, lambda: loop.save(lambda: self.state(epoch), self.model, self.guide, metrics=False))

    def validate(self, epoch: int) -> float | None:
        """The validation loss per datum (None without validation data), scored at the final beta and with the
        moving average in the parameters; early stopping observes it."""
        inputs = self.inputs
        if inputs.valid_data is None:
            return None
        if self.kl_warmup:  # scored at the final beta, so that epochs compare and the loss is the bound
            self.loss_module.elbo.beta = self.beta
        with self.average.swapped() if self.average is not None else nullcontext():  # the average is scored, kept
            loss = evaluate_loss(self.loss_module, inputs.valid_data, max(inputs.batch_size, 512),
                                 inputs.valid_condition, self.world, inputs.plan)
            self.stopping.observe(self.loop.history, epoch + 1, loss, self.checkpoint.snapshot)
        return loss

    def step_schedule(self, record: dict[str, Any]) -> None:
        if self.scheduler is None:
            return
        if self.schedule == "plateau":
            self.scheduler.step(record["valid_loss"] if record["valid_loss"] is not None else record["train_loss"])
        else:
            self.scheduler.step()


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

    The settings come in four groups: ``optim`` (:class:`Optim`: the optimizer, its rate and schedule, clipping
    and averaging), ``objective`` (:class:`Objective`: elbo, num_particles, beta, kl_warmup, alpha),
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
    ``num_particles > 1`` on a program that breaks with them in a plate (``locs[assignment]``) runs them one at a
    time, as ``History.fast_path`` says (:mod:`pprogen.inference.unvectorized`).
    """
    groups = group_settings(optim, objective, stopping, speed, settings)
    world = current() if world is None else world
    if hasattr(data, "train"):
        valid_data = data.valid if valid_data is None else valid_data
        data = data.train
    _check_inputs(model, data, valid_data, epochs, batch_size, groups, world)
    device = resolve_device(device)
    check_autocast(groups[Speed].autocast, device)
    if seed is not None:
        seed_everything(seed)
    inputs = _on_device(model, guide, data, valid_data, condition, valid_condition, batch_size, device, world,
                        plate_name)
    loop, early = EpochLoop(epochs, seed, world, run), EarlyStopping(groups[Stopping].patience)
    svi = _SVI(model, guide, inputs, groups, loop, early)
    if resume and svi.resume(loop.checkpoint(resume), run):
        return loop.history  # it stopped early and stays stopped
    with loop.running(svi.steps_per_epoch, progress):
        for epoch, order in loop.epochs(svi.num_data, device):
            started = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": svi.train_epoch(epoch, order),
                                      "valid_loss": None, "lr": svi.optimizer.param_groups[0]["lr"]}
            record["valid_loss"] = svi.validate(epoch)
            record["seconds"] = time.perf_counter() - started
            svi.step_schedule(record)
            if early.stopped:
                loop.history.stop_reason = "early_stopping"
            loop.add_record(record, train="train_loss", valid="valid_loss")
            loop.save(lambda: svi.state(epoch + 1))
            if callback is not None:
                callback(epoch + 1, record)
            if early.stopped:
                break
    return svi.finish()
