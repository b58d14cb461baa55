"""``AdversarialTrainer``: GAN training for any generator written as a Pyro program, with its own losses.

What the trainer needs from a model (the zoo's GANs offer all of it; a user's program needs the first):

- ``model.discriminator``: an ``nn.Module``; every other trainable parameter of ``model`` belongs to the
  generator side.
- either ``model(num_samples=B, **condition)`` returning ``B`` fakes (a Pyro program that draws ``z`` at a
  ``"z"`` site and returns G(z)), or ``model.adversarial_terms(real, generator_step, **condition)`` returning
  ``(pairs, extra)``: ``pairs`` a list of :class:`CriticPair` (a critic, real and fake inputs of the same
  shape, the critic's keyword arguments) and ``extra`` a dict of extra generator losses (cycle consistency,
  identity, L1), which is empty on discriminator steps. Translation models (CycleGAN, pix2pix) have several
  pairs.
- for the moving average: ``model.generator`` and ``model.generator_ema`` (same structure);
  ``model.schedule(progress)`` when the architecture changes during training (progressive growing:
  ``progress`` runs from 0 to 1 over the run).

The losses and penalties on the critic's outputs are in :mod:`pprogen.inference.gan_losses`.

``AdversarialTrainer.fit`` runs on the epoch loop SVI and EM share (:mod:`pprogen.inference.loop`: resume,
shuffling, progress, the checkpoint, metrics and weights each epoch, the non-finite guard); what is its own is the
step (``critic_steps`` discriminator updates, then one generator update), the two optimizers, the linear schedule
and progressive growing's plan, and the generator's moving average.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch import nn

from pprogen.capabilities import capabilities
from pprogen.distributed import World, check_enough_data, collective, current, shard
from pprogen.errors import unknown_name_error
from pprogen.inference.checks import check_condition, check_data, resolve_device
from pprogen.inference.gan_losses import (  # noqa: F401  (importable from here too)
    LOSSES,
    discriminator_loss,
    ema_update,
    generator_loss,
    gradient_penalty,
    r1_from_output,
    r1_penalty,
)
from pprogen.inference.accel import autocast as autocast_context, check_autocast, compile_networks
from pprogen.inference.averaging import warmed_up_decay
from pprogen.inference.loop import EpochLoop, History
from pprogen.inference.step import make_optimizer
from pprogen.nn import CriticPair, apply_spectral_norm
from pprogen.runs import seed_everything

SCHEDULES = ("constant", "linear")


def default_terms(model: Callable, real: torch.Tensor, generator_step: bool, **condition):
    """The plain GAN: ``model(num_samples=B, **condition)`` makes the fakes, ``model.discriminator`` judges."""
    fake = model(num_samples=real.shape[0], **condition)
    return [CriticPair(model.discriminator, real, fake, condition)], {}


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise unknown_name_error("GAN loss", loss, LOSSES)


def _checked_settings(model: nn.Module, loss: str, schedule: str, critic_steps: int, batch_size: int, lr_g: float,
                      lr_d: float, gp_weight: float | None, r1_weight: float, ema: float | str | None
                      ) -> tuple[float, float | None]:
    """The trainer's settings refused in one line when they make no sense for ``model``; returns the gradient
    penalty's weight and the moving average's decay with their defaults filled in."""
    _check_loss(loss)
    if schedule not in SCHEDULES:
        raise unknown_name_error("GAN learning-rate schedule", schedule, SCHEDULES)
    for key, value in (("critic_steps", critic_steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    for key, value in (("lr_g", lr_g), ("lr_d", lr_d)):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    gp_weight = (10.0 if loss == "wgan_gp" else 0.0) if gp_weight is None else gp_weight
    if gp_weight < 0 or r1_weight < 0:
        raise ValueError(f"penalty weights must be >= 0, got gp_weight={gp_weight}, r1_weight={r1_weight}")
    has_average = (isinstance(getattr(model, "generator_ema", None), nn.Module)
                   and isinstance(getattr(model, "generator", None), nn.Module))
    if ema == "auto":  # the average where the model has somewhere to keep it
        ema = 0.999 if has_average else None
    if ema is not None and not (isinstance(ema, (int, float)) and 0 <= ema < 1):
        raise ValueError(f"ema is the moving average's decay, in [0, 1) (or None for off), got {ema!r}")
    if not (capabilities(model).adversarial and isinstance(model.discriminator, nn.Module)):
        raise TypeError(f"{type(model).__name__} has no discriminator module; the adversarial trainer needs "
                        "model.discriminator (see pprogen.inference.adversarial)")
    if ema is not None and not has_average:
        raise TypeError(f"{type(model).__name__} has no generator_ema module to average into; pass ema=None "
                        "or give the model generator and generator_ema modules")
    return gp_weight, ema


class _Side(nn.Module):
    """One side of the game for DistributedDataParallel: it holds the side's module (or bare parameters),
    and ``forward(loss_fn)`` computes that side's losses, so DDP averages the gradients they give."""

    def __init__(self, held: nn.Module | list[nn.Parameter]) -> None:
        super().__init__()
        self.held = held if isinstance(held, nn.Module) else nn.ParameterList(held)

    def forward(self, loss_fn: Callable):
        return loss_fn()


class AdversarialTrainer:
    """Alternating discriminator and generator updates for a GAN-like model (see the module docstring).

    ``loss`` is one of ``minimax``, ``nonsaturating``, ``wgan_gp``, ``hinge``, ``lsgan``; ``critic_steps``
    discriminator updates (each on a fresh minibatch) precede every generator update; ``lr_g`` and ``lr_d``
    are separate (two time-scale updates); ``gp_weight`` (10 by default for ``wgan_gp``, else 0) and
    ``r1_weight`` switch the penalties on; ``spectral_norm`` puts spectral normalization on the
    discriminator's layers; ``ema`` is the decay of the moving average of the generator's weights (None:
    off; by default 0.999 when the model has ``generator`` and ``generator_ema`` modules, else off), warmed up as ``min(ema, (1 + t) / (10 + t))`` after ``t`` updates unless ``ema_warmup=False`` (an
    average with a 1000-step memory would otherwise still be mostly the initial weights after a short run);
    ``schedule="linear"`` decays both learning rates to 0 over the run. ``fit`` returns a
    :class:`~pprogen.inference.loop.History` whose records hold the epoch means of ``d_loss``, ``g_loss``
    and each extra term. ``autocast="bf16"`` computes both sides' losses under bfloat16 autocast (the losses
    themselves, the penalties' norms and the moving average stay float32) and ``compile=True`` compiles
    generator and discriminator with ``torch.compile`` (:mod:`pprogen.inference.accel`).
    """

    def __init__(self, model: nn.Module, loss: str = "nonsaturating", critic_steps: int = 1,
                 lr_g: float = 2e-4, lr_d: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
                 gp_weight: float | None = None, r1_weight: float = 0.0, spectral_norm: bool = False,
                 ema: float | str | None = "auto", ema_warmup: bool = True, schedule: str = "constant", batch_size: int = 64,
                 device: str | torch.device = "auto", seed: int | None = 0, progress: bool = True,
                 world: World | None = None, autocast: str | None = None, compile: bool = False) -> None:
        gp_weight, ema = _checked_settings(model, loss, schedule, critic_steps, batch_size, lr_g, lr_d, gp_weight,
                                           r1_weight, ema)
        self.model = model
        self.loss = loss
        self.critic_steps = critic_steps
        self.lr_g, self.lr_d, self.betas = lr_g, lr_d, tuple(betas)
        self.gp_weight, self.r1_weight = float(gp_weight), float(r1_weight)
        self.ema = ema
        self.ema_warmup = ema_warmup
        self.ema_updates = 0
        self.schedule = schedule
        self.batch_size = batch_size
        self.device = resolve_device(device)
        check_autocast(autocast, self.device)
        self.autocast = autocast
        self.seed = seed
        self.progress = progress
        if spectral_norm:
            apply_spectral_norm(model.discriminator)
        if compile:
            compile_networks(model)
        self.terms = getattr(model, "adversarial_terms", None) or (lambda real, step, **c: default_terms(model, real, step, **c))
        d_ids = {id(p) for p in model.discriminator.parameters()}
        ema_ids = {id(p) for p in model.generator_ema.parameters()} if ema is not None else set()
        self.d_params = [p for p in model.discriminator.parameters() if p.requires_grad]
        self.g_params = [p for p in model.parameters() if p.requires_grad and id(p) not in d_ids | ema_ids]
        if not self.d_params or not self.g_params:
            raise ValueError("the model needs trainable parameters on both sides (generator and discriminator)")
        self.opt_d = make_optimizer("adam", self.d_params, lr=lr_d, betas=self.betas)  # fused where it can be
        self.opt_g = make_optimizer("adam", self.g_params, lr=lr_g, betas=self.betas)
        self.world = current() if world is None else world
        self._sides = None  # (discriminator, generator) in DistributedDataParallel, made by fit

    def _data_parallel(self) -> None:
        """Each side in its own DistributedDataParallel, which averages exactly that side's gradients over the
        ranks (after every rank has taken rank 0's weights). Holding the side's module lets DDP also share
        rank 0's buffers (batch-norm statistics, spectral-norm vectors)."""
        from torch.nn.parallel import DistributedDataParallel

        model, device = self.model, self.device
        generator = getattr(model, "generator", None)
        g_ids = {id(p) for p in self.g_params}
        g_side = generator if isinstance(generator, nn.Module) and {
            id(p) for p in generator.parameters() if p.requires_grad} == g_ids else self.g_params
        self.world.broadcast_tensors(list(model.parameters()) + list(model.buffers()))
        ids = [device.index] if device.type == "cuda" else None
        grows = callable(getattr(model, "schedule", None))  # progressive growing: later stages unused for a while
        self._sides = tuple(DistributedDataParallel(_Side(side), device_ids=ids, find_unused_parameters=grows)
                            for side in (model.discriminator, g_side))

    def _run(self, side: int, loss_fn: Callable):
        """``loss_fn()`` (the losses of one side), through that side's DDP when several ranks train, under
        autocast when asked for (backward runs outside it, in ``_apply``)."""
        with autocast_context(self.autocast, self.device):
            return loss_fn() if self._sides is None else self._sides[side](loss_fn)

    # ------------------------------------------------------------------ one step

    def _critic_loss(self, pairs: list[CriticPair]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, parts = 0.0, {}
        for pair in pairs:
            # with R1 the real batch carries gradients, so the critic's real output serves the loss and R1 both
            real = pair.real.detach().requires_grad_(True) if self.r1_weight else pair.real
            real_out = pair.critic(real, **pair.condition)
            fake_out = pair.critic(pair.fake.detach(), **pair.condition)
            value = discriminator_loss(self.loss, real_out, fake_out)
            if self.gp_weight:
                penalty = gradient_penalty(pair.critic, pair.real, pair.fake, pair.condition)
                value = value + self.gp_weight * penalty
                parts[f"gp_{pair.name}"] = penalty.detach()
            if self.r1_weight:
                penalty = r1_from_output(real_out, real)
                value = value + 0.5 * self.r1_weight * penalty
                parts[f"r1_{pair.name}"] = penalty.detach()
            total = total + value
        return total, parts

    def _apply(self, loss: torch.Tensor, optimizer, params, reported: dict[str, torch.Tensor] | None = None
               ) -> tuple[float, float, dict[str, float]]:
        """Backward and update unless the loss or the gradient is non-finite: then nothing is applied. Returns the
        loss, the gradient norm and the ``reported`` tensors as numbers. On one rank everything is read from the device at once, one synchronisation per update (a
        non-finite loss's backward runs, and its gradients are dropped by the next zero_grad). With several
        ranks backward always runs (DDP's all-reduce needs every rank) and the loss is averaged, so all ranks
        take the same decision."""
        world = self.world
        reported = reported or {}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if world.active:
            value = world.total(loss) / world.size
            norm = norm.item()
            numbers = {k: v.item() for k, v in reported.items()}
        else:
            read = [loss.detach().float().reshape(()), norm.float().to(loss.device)]
            read += [v.float().reshape(()).to(loss.device) for v in reported.values()]
            values = torch.stack(read).tolist()
            value, norm = values[0], values[1]
            numbers = dict(zip(reported, values[2:]))
        if math.isfinite(value) and math.isfinite(norm):
            optimizer.step()
        return value, norm, numbers

    def _all_ranks(self, ok: bool) -> bool:
        """``ok`` on every rank (one small all-reduce when several ranks train)."""
        return self.world.total(float(not ok), self.device) == 0

    def _generator_loss(self, real: torch.Tensor, condition: dict):
        pairs, extra = self.terms(real, True, **condition)
        g_loss = sum(generator_loss(self.loss, pair.critic(pair.fake, **pair.condition)) for pair in pairs)
        return g_loss, extra, g_loss + sum(extra.values()) if extra else g_loss

    def step(self, batches: list[tuple[torch.Tensor, dict]]) -> dict[str, float]:
        """``critic_steps`` discriminator updates (one per batch given) and one generator update (on the
        last batch). Returns the losses; a non-finite one is reported, never applied. On one rank each update
        reads its numbers from the device once, after the fakes' finiteness."""
        out: dict[str, float] = {}
        for real, condition in batches:
            with torch.no_grad(), autocast_context(self.autocast, self.device):
                pairs, _ = self.terms(real, False, **condition)
            # checked before the critic sees them (its spectral-norm or batch-norm state must not take NaN fakes)
            if not self._all_ranks(all(bool(torch.isfinite(pair.fake).all()) for pair in pairs)):
                out["fake"] = math.nan  # the generator has diverged: say so, rather than blame the critic
                return out
            d_loss, parts = self._run(0, lambda: self._critic_loss(pairs))
            out["d_loss"], out["d_grad_norm"], numbers = self._apply(d_loss, self.opt_d, self.d_params, parts)
            out.update(numbers)
            if not (math.isfinite(out["d_loss"]) and math.isfinite(out["d_grad_norm"])):
                return out
        real, condition = batches[-1]
        for p in self.d_params:
            p.requires_grad_(False)  # the generator step needs no gradients for D's weights
        try:
            g_loss, extra, total = self._run(1, lambda: self._generator_loss(real, condition))
        finally:
            for p in self.d_params:
                p.requires_grad_(True)
        reported = {"g_adv": g_loss.detach(), **{k: v.detach() for k, v in extra.items()}}
        out["g_loss"], out["g_grad_norm"], numbers = self._apply(total, self.opt_g, self.g_params, reported)
        out.update(numbers)
        updated = math.isfinite(out["g_loss"]) and math.isfinite(out["g_grad_norm"])
        if self.ema is not None and updated and self.world.is_main:  # the average lives on rank 0
            t = self.ema_updates
            decay = warmed_up_decay(self.ema, t) if self.ema_warmup else self.ema
            ema_update(self.model.generator_ema, self.model.generator, decay)
            self.ema_updates += 1
        return out

    # ------------------------------------------------------------------ training loop

    def _state(self, epoch: int, loop: EpochLoop, schedulers) -> dict[str, Any]:
        return {
            **loop.state(epoch),
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "opt_d": self.opt_d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "schedulers": [s.state_dict() for s in schedulers],
            "ema_updates": self.ema_updates,
            **self._plan_state,
        }

    def _plan(self, state: dict[str, Any] | None, epochs: int, steps_per_epoch: int,
              grows: bool) -> tuple[int, Callable[[int], float]]:
        """The steps progressive growing is laid over, and the linear schedule's learning-rate factor per step
        (a straight line from ``factor`` at the end of epoch ``anchor`` to 0 at the run's last step). A fresh run
        plans both over its ``epochs``. A run resumed with other epochs keeps its growth plan (extra epochs train
        at full resolution) and decays the learning rate from where it stands to 0 at the new end; a decay that
        already reached 0, or fewer epochs than the growth plan needs, is refused. Plans are kept in epochs, so a
        run resumed on another number of ranks (other steps an epoch) keeps them too."""
        if state is None or "planned_epochs" not in state:  # a fresh run (or a checkpoint from before plans were kept)
            growth, anchor = epochs, (0, 1.0)
        else:
            growth, anchor = state["growth_epochs"], tuple(state["lr_anchor"])
            if grows and epochs < growth:
                raise ValueError(
                    f"this run grows its resolution over {growth} epochs; --epochs {epochs} would stop it before full "
                    f"resolution: resume with --epochs {growth} or more")
            planned, done = state["planned_epochs"], state["epoch"]
            if epochs != planned and self.schedule == "linear" and epochs > done:
                factor = anchor[1] * max(0.0, (planned - done) / max(1, planned - anchor[0]))  # where the decay stands
                if factor == 0.0:
                    raise ValueError(
                        f"this run's linear schedule ended at epoch {planned} with the learning rate at 0: more epochs "
                        f"would not move the weights; start a new run or keep --epochs at {planned}")
                anchor = (done, factor)
        self._plan_state = {"planned_epochs": epochs, "growth_epochs": growth, "lr_anchor": list(anchor)}
        start, factor = anchor
        total, span = epochs * steps_per_epoch, max(1, epochs - start) * steps_per_epoch
        return growth * steps_per_epoch, lambda t: factor * max(0.0, (total - t) / span)

    def fit(self, data: torch.Tensor, epochs: int = 10, condition: dict[str, torch.Tensor] | None = None,
            run: Any = None, resume: bool | dict[str, Any] = False, callback: Callable[[int, dict], None] | None = None) -> History:
        """Train on ``data`` ``(N, ...)`` (or a data set's ``train`` split) for ``epochs`` (each epoch: ``N / (batch_size * critic_steps)``
        generator updates). ``condition`` holds per-datum keyword arguments (``{"y": labels}`` for a
        conditional GAN). With a ``run``, every epoch writes metrics, an atomic checkpoint and the model's weights,
        and ``resume`` continues from it exactly (``resume`` may be the checkpoint already read). Under ``torchrun``
        ``batch_size`` is per rank, each rank takes its share of every global batch, both sides train in
        DistributedDataParallel, and only rank 0 keeps the moving average and writes (see
        :mod:`pprogen.distributed`). ``callback(epoch, record)`` runs after each epoch (the CLI draws the epoch's
        sample grid there) and may add entries to ``record``.

        A non-finite loss or gradient in either network stops training with
        :class:`~pprogen.inference.loop.NonFiniteLossError` before the update is applied; the checkpoint
        on disk stays the last complete epoch's.
        """
        data, condition = self._prepare(data, epochs, condition)
        world, num_data = self.world, data.shape[0]
        if world.active and self._sides is None:
            self._data_parallel()
        feed = _Feed(data, condition, min(self.batch_size, num_data // world.size) * world.size, self.critic_steps,
                     world)
        loop = EpochLoop(epochs, self.seed, world, run)
        state = loop.checkpoint(resume) if resume else None
        growth_steps, decay = self._plan(state, epochs, feed.steps_per_epoch, callable(getattr(self.model, "schedule",
                                                                                                None)))
        schedulers = []
        if self.schedule == "linear":
            schedulers = [torch.optim.lr_scheduler.LambdaLR(o, decay) for o in (self.opt_d, self.opt_g)]
        if state is not None:
            self._resume(state, loop, schedulers, feed.steps_per_epoch)
        with loop.running(feed.steps_per_epoch, self.progress):
            for epoch, order in loop.epochs(num_data, self.device):
                record = self._train_epoch(loop, epoch, order, feed, schedulers, growth_steps)
                self.model.eval()
                if callback is not None:
                    with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                        callback(epoch + 1, record)
                loop.add_record(record, d="d_loss", g="g_loss")
                # the weights by name each epoch: a GAN has no best epoch to wait for
                loop.save(lambda: self._state(epoch + 1, loop, schedulers), self.model)
        self.model.eval()
        return loop.history

    def _prepare(self, data: torch.Tensor, epochs: int, condition: dict | None) -> tuple[torch.Tensor, dict]:
        """The training rows and their conditions checked and on the device, the model there too, the seed set."""
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        pairing = getattr(data, "pairing", None)  # a Dataset: its training split, and whether its domains pair up
        data = data.train if hasattr(data, "train") else data
        check_data(data, "training data")
        condition = check_condition(condition, data, "training data")
        check_shapes = getattr(self.model, "check_data", None)
        if callable(check_shapes):
            check_shapes(data, pairing=pairing, **condition)
        check_enough_data(data.shape[0], self.world)
        if self.seed is not None:
            seed_everything(self.seed)
        self.model.to(self.device)
        return data.to(self.device), {k: v.to(self.device) for k, v in condition.items()}

    def _resume(self, state: dict[str, Any], loop: EpochLoop, schedulers: list, steps_per_epoch: int) -> None:
        """The checkpoint's model, optimizers, schedules, loop state and moving-average count back in place."""
        self.model.load_state_dict(state["model"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.opt_g.load_state_dict(state["opt_g"])
        for s, s_state in zip(schedulers, state["schedulers"]):
            s.load_state_dict(s_state)
            s.last_epoch = state["epoch"] * steps_per_epoch  # counted in this run's steps (ranks may differ)
        loop.resume(state)
        self.ema_updates = state.get("ema_updates", 10**9)  # older checkpoints: past the warm-up

    def _train_epoch(self, loop: EpochLoop, epoch: int, order: torch.Tensor, feed: "_Feed", schedulers: list,
                     growth_steps: int) -> dict[str, Any]:
        """The epoch's steps; returns its record: the means of the step's numbers, the learning rates, the seconds."""
        self.model.train()
        started = time.perf_counter()
        schedule = getattr(self.model, "schedule", None)
        sums: dict[str, float] = {}
        for i in range(feed.steps_per_epoch):
            if callable(schedule):
                schedule((epoch * feed.steps_per_epoch + i) / growth_steps)
            batches = feed.batches(order, i)
            with collective("the gradient all-reduce", self.world):
                out = self.step(batches)
            self._guard(loop, out, epoch, i, feed.steps_per_epoch)
            for s in schedulers:
                s.step()
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + value
            loop.step_done(i, epoch + 1, d=out["d_loss"], g=out["g_loss"])
        return {"epoch": epoch + 1, **{k: v / feed.steps_per_epoch for k, v in sums.items()},
                "lr_g": self.opt_g.param_groups[0]["lr"], "lr_d": self.opt_d.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started}

    def _guard(self, loop: EpochLoop, out: dict[str, float], epoch: int, i: int, steps_per_epoch: int) -> None:
        """The non-finite guard: a step that reported a non-finite number (and applied nothing) stops the run,
        naming the culprit; the checkpoint on disk stays the last complete epoch's."""
        bad = [k for k in ("fake", "d_loss", "d_grad_norm", "g_loss", "g_grad_norm") if k in out and not math.isfinite(out[k])]
        if not bad:
            return
        what = {"fake": "generator output", "d_loss": "discriminator loss", "g_loss": "generator loss",
                "d_grad_norm": "discriminator gradient", "g_grad_norm": "generator gradient"}[bad[0]]
        loop.non_finite(
            f"non-finite {what} at epoch {epoch + 1}, step {i + 1} (global step "
            f"{epoch * steps_per_epoch + i + 1}); the update was not applied and the last "
            "checkpoint is the last complete epoch. Lower lr_g / lr_d, use a regularized loss "
            "(wgan_gp, hinge with spectral_norm, r1_weight), "
            + ("train without bf16 autocast, " if self.autocast else "") + "or check the data")


class _Feed:
    """How an epoch's rows reach the steps: each step takes ``critic_steps`` consecutive global batches of the
    epoch's permutation (one per discriminator update), this rank's share of each."""

    def __init__(self, data: torch.Tensor, condition: dict[str, torch.Tensor], global_batch: int, critic_steps: int,
                 world: World) -> None:
        self.data, self.condition, self.global_batch, self.critic_steps, self.world = (
            data, condition, global_batch, critic_steps, world)
        self.steps_per_epoch = max(1, data.shape[0] // (global_batch * critic_steps))

    def batches(self, order: torch.Tensor, i: int) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        out = []
        for k in range(self.critic_steps):
            index = shard(order[(i * self.critic_steps + k) * self.global_batch:][:self.global_batch], self.world)
            out.append((self.data[index], {key: v[index] for key, v in self.condition.items()}))
        return out
