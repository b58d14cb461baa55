r"""Replayed training steps: a Pyro program's step at the cost of its arithmetic.

On a small network most of an SVI step is Python: effect handlers, plates (each builds a subsample site),
distribution objects and their broadcasting, the estimator's bookkeeping. Once a program has run, its structure
(sites, plates, distribution types, shapes) is usually fixed. :class:`StepReplay` records the loss an estimator
computes as a graph of tensor operations (``torch.fx``'s ``make_fx`` above autograd, so the backward pass is
PyTorch's own), drops operations that cannot change a value (expansions and broadcasts to the same shape,
multiplication or division by one, dead code), and replays that graph on later steps: the same operations in
the same order, drawing from the same random stream, so the loss and every gradient are bit for bit the
program's.

What keeps a replay honest:

- **Recorded once settled.** A key's first ``record_after`` steps (50) run the program; recording costs some
  tens of steps, so a short run never pays for it.
- **Recording leaves no trace.** It runs the program once more on the real modules: buffers it wrote (running
  statistics) are put back, and a program that changes its own Python attributes as it runs is refused.
- **A graph per key.** The key holds the shapes, dtypes and devices of the batch and its conditions, the
  data-plate scale, the estimator's settings (``beta`` under KL warm-up, particles, ...), grad mode, the
  modules' training flags and which parameters take gradients. Another key records another graph (the last,
  smaller batch of an epoch has its own); past ``MAX_GRAPHS`` the oldest goes. The modules' plain attributes
  and the identity of every parameter and buffer are compared at each check and at :meth:`refresh`.
- **Checked before use, and again every** ``check_every`` **steps.** A graph is first used on a step that runs
  both the program and the graph from the same random state and compares the loss, every gradient, every
  buffer and the random state after them, bit for bit. Any difference switches the replay off for good (the
  program's own result is the step's result), with the reason in :attr:`StepReplay.reason`.
- **What cannot be recorded is refused.** A program whose Python reads tensor values (``if x.sum() > 0``,
  ``.item()``, Pyro's argument validation) cannot be captured: recording raises and the general path runs.

The general path runs, with the reason recorded, for: estimators without a ``differentiable_loss`` (Pyro's
``TraceGraph_ELBO``), bf16 autocast, compiled networks, several ranks, a program that cannot be recorded, a
replay that differed from its program, modules whose attributes changed between checks, and (for those steps
only) while Pyro's argument validation is on. ``fast_path=False`` (``fit``) turns it off.

How a recorded graph is simplified and compiled into the function a replayed step calls is in
:mod:`pprogen.inference.recorded_graph`.
"""

from __future__ import annotations

from typing import Any, Callable

import pyro
import torch
from torch import nn

from pprogen.inference.recorded_graph import StaleGraph, fold_constants, lean_function, simplify

SIMPLE = (bool, int, float, str, type(None))
MAX_GRAPHS = 8
_VALUE_READ = "get value out of a tracing tensor"


class StepReplay:
    """Records and replays one loss module's steps; see the module docstring.

    ``run(general, batch, scale, condition)`` returns ``(loss, grads_done)``: the loss tensor of this step and
    whether the parameters' ``.grad`` already hold its gradients (a checking step computes them itself).
    ``general(batch, condition)`` computes the loss the ordinary way (under the data-plate scale ``scale``):
    the reference, and what is recorded.
    """

    def __init__(self, loss_module: nn.Module, params: list[torch.Tensor], check_every: int = 200,
                 record_after: int = 50) -> None:
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
        if not isinstance(record_after, int) or record_after < 1:
            raise ValueError(f"record_after must be a positive integer, got {record_after!r}")
        self.record_after = record_after  # steps of a key run by the program before it is recorded
        self.loss_module = loss_module
        self.params = list(params)
        self.check_every = check_every
        self.reason: str | None = None  # why the replay is off; None while it is on
        self.graphs: dict[tuple, Any] = {}
        self.seen: dict[tuple, int] = {}
        self.replayed = 0  # steps taken by replaying a graph
        self.checked = 0  # steps that compared the graph against the program
        self._since_check: dict[tuple, int] = {}
        self._modules = list(loss_module.modules())
        self._recorded_with: tuple = ()
        self.last_replayed = False  # whether the last step ran a graph (the estimator's last_terms are older)

    def summary(self) -> str:
        """One line: how many steps were replayed and checked, or why the replay is off."""
        if self.reason is not None:
            done = f" after {self.replayed} replayed steps" if self.replayed else ""
            return f"general path{done}: {self.reason}"
        return f"replayed {self.replayed} steps ({self.checked} checked against the program)"

    @property
    def active(self) -> bool:
        return self.reason is None

    def switch_off(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.graphs.clear()

    # -- the key ------------------------------------------------------------------------------------------------
    def _fingerprint(self) -> tuple:
        """The modules' plain attributes and the identity of every tensor they hold: compared on checking steps
        and by :meth:`refresh` (the per-step key holds only the training flags, which are cheap to read)."""
        parts: list = []
        for module in self._modules:
            parts.extend(v for v in module.__dict__.values() if type(v) in SIMPLE)
            parts.extend(id(t) for t in module._parameters.values())
            parts.extend(id(t) for t in module._buffers.values())
        parts.extend(id(p) for p in self.params)
        return tuple(parts)

    def refresh(self) -> None:
        """Drop the recorded graphs if a module's plain attributes or tensors changed since they were recorded
        (``fit`` calls it at each epoch's start, after callbacks and KL warm-up have had their say)."""
        if self.graphs and self._fingerprint() != self._recorded_with:
            self.graphs.clear()
            self.seen.clear()

    def _key(self, batch: torch.Tensor, scale: float, condition: dict) -> tuple:
        tensors = [batch, *condition.values()]
        if any(not torch.is_tensor(t) for t in tensors):
            return ()
        return (
            scale, tuple(condition), torch.is_grad_enabled(),
            tuple((tuple(t.shape), t.dtype, t.device, t.requires_grad) for t in tensors),
            _settings(getattr(self.loss_module, "elbo", None)),
            tuple([m.training for m in self._modules]),
            tuple([p.requires_grad for p in self.params]),
        )

    # -- a step -------------------------------------------------------------------------------------------------
    def run(self, general: Callable[[], torch.Tensor], batch: torch.Tensor, scale: float,
            condition: dict[str, torch.Tensor]) -> tuple[torch.Tensor, bool]:
        self.last_replayed = False
        if self.reason is not None or pyro.poutine.util.is_validation_enabled():  # validation reads values
            return general(batch, condition), False
        key = self._key(batch, scale, condition)
        if not key:
            self.switch_off("a condition that is not a tensor")
            return general(batch, condition), False
        graph = self.graphs.get(key)
        if graph is not None:
            since = self._since_check[key] = self._since_check[key] + 1
            if since < self.check_every:
                grad_mode = torch.is_grad_enabled()
                try:
                    loss = graph(batch, *condition.values())
                except StaleGraph:  # a folded buffer changed: record again on the key's next step
                    del self.graphs[key]
                    self.seen[key] = self.record_after
                    return general(batch, condition), False
                except RuntimeError:  # a recorded value check failed: the program raises its own error
                    torch.set_grad_enabled(grad_mode)  # the graph may have stopped inside a no_grad stretch
                    loss = general(batch, condition)
                    self.switch_off("the recorded step failed where the program runs")
                    return loss, False
                self.replayed += 1
                self.last_replayed = True
                return loss, False
            self._since_check[key] = 0
            if self._fingerprint() != self._recorded_with:  # changed mid-epoch, between fit's refreshes
                loss = general(batch, condition)
                self.switch_off("the modules' Python attributes or tensors changed between checks (the program, "
                                "or code outside fit, changes state a graph cannot hold)")
                return loss, False
            return self._checked_step(graph, general, batch, condition, key)
        runs = self.seen[key] = self.seen.get(key, 0) + 1
        if runs <= self.record_after:  # lazily built state settles; a short run never pays for a recording
            return general(batch, condition), False
        if len(self.graphs) >= MAX_GRAPHS:  # KL warm-up's betas, shapes that come and go: the oldest goes
            oldest = next(iter(self.graphs))
            del self.graphs[oldest]
        graph = self._record(general, batch, condition)
        if graph is None:
            return general(batch, condition), False
        self._since_check[key] = 0
        return self._checked_step(graph, general, batch, condition, key)

    def _record(self, general: Callable, batch: torch.Tensor, condition: dict):
        from torch.fx.experimental.proxy_tensor import make_fx

        names = list(condition)

        def program(x, *values):
            return general(x, dict(zip(names, values)))

        devices = [batch.device.index or 0] if batch.device.type == "cuda" else []
        buffers = list(self.loss_module.buffers())
        saved_buffers = [b.detach().clone() for b in buffers]
        saved_attributes = [(m, {k: v for k, v in m.__dict__.items() if type(v) in SIMPLE}) for m in self._modules]
        before = self._fingerprint()
        grad_mode = torch.is_grad_enabled()
        try:
            with torch.random.fork_rng(devices=devices):  # recording draws nothing from the training stream
                gm = make_fx(program, pre_dispatch=True)(batch, *condition.values())
        except Exception as err:
            gm, failure = None, err
        finally:  # recording ran the program on the real modules: undo what it wrote (running statistics, ...)
            torch.set_grad_enabled(grad_mode)
            with torch.no_grad():
                for b, v in zip(buffers, saved_buffers):
                    if not _same(b.detach(), v):
                        b.copy_(v)
            changed = self._fingerprint() != before
            for module, attributes in saved_attributes:
                module.__dict__.update(attributes)
        if gm is not None and changed:
            self.switch_off("the program changes its own Python attributes as it runs (a graph cannot hold that)")
            return None
        if gm is None:
            err = failure  # the program does something a graph cannot hold: the general path runs
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if _VALUE_READ in str(err):
                self.switch_off("the program reads tensor values in Python (data-dependent control flow, "
                                ".item(), or argument validation)")
            else:
                self.switch_off(f"the program could not be recorded ({type(err).__name__}: {text[:120]})")
            return None
        simplify(gm)
        if not self.graphs:
            self._recorded_with = self._fingerprint()
        held = {id(t) for t in self.loss_module.buffers()} | {id(p) for p in self.params}
        held |= {id(t) for t in pyro.get_param_store()._params.values()}
        return lean_function(gm, held)

    def _checked_step(self, graph, general: Callable, batch: torch.Tensor, condition: dict, key: tuple):
        """One step by the program and by the graph from the same state, compared bit for bit."""
        self.checked += 1
        buffers = [b for b in self.loss_module.buffers()]
        start_buffers = [b.detach().clone() for b in buffers]
        start_rng = _rng_state(batch.device)
        loss = general(batch, condition)
        grads = _grads(loss, self.params)
        end_buffers = [b.detach().clone() for b in buffers]
        end_rng = _rng_state(batch.device)
        # by value: batch norm writes its running statistics without bumping their versions
        written = [not _same(b.detach(), v) for b, v in zip(buffers, start_buffers)]
        _restore(buffers, start_buffers, start_rng, batch.device, written)
        grad_mode = torch.is_grad_enabled()
        try:
            replayed = graph(batch, *condition.values())
            replayed_grads = _grads(replayed, self.params)
        except StaleGraph:  # a folded buffer was written since the recording: record again, keep the replay on
            self.graphs.pop(key, None)
            self.seen[key] = self.record_after
            _restore(buffers, end_buffers, end_rng, batch.device, written)
            _set_grads(self.params, grads)
            return loss.detach(), True
        except Exception as err:
            torch.set_grad_enabled(grad_mode)
            replayed, replayed_grads = None, None
            failure = f"the recorded step fails where the program runs ({type(err).__name__})"
        else:
            failure = _difference(loss, replayed, grads, replayed_grads, buffers, end_buffers,
                                  end_rng, _rng_state(batch.device))
        if failure is not None:
            self.switch_off(failure)
            _restore(buffers, end_buffers, end_rng, batch.device, written)
            _set_grads(self.params, grads)
            return loss.detach(), True
        self.graphs[key] = graph
        _set_grads(self.params, replayed_grads)
        return replayed.detach(), True


def _settings(elbo: Any) -> tuple:
    """An estimator's plain settings (and those of the estimator it wraps)."""
    if elbo is None:
        return ()
    found = [(k, v) for k, v in vars(elbo).items() if type(v) in SIMPLE]
    inner = getattr(elbo, "elbo", None)
    if inner is not None and inner is not elbo:
        found.extend((f"elbo.{k}", v) for k, v in vars(inner).items() if type(v) in SIMPLE)
    return tuple(found)


def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """The loss's gradient for each parameter that takes one (a frozen parameter gets None, as backward leaves it)."""
    live = [p for p in params if p.requires_grad]
    if not loss.requires_grad or not live:
        return [None] * len(params)
    found = iter(torch.autograd.grad(loss, live, allow_unused=True))
    return [next(found) if p.requires_grad else None for p in params]


def _set_grads(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
    for p, g in zip(params, grads):
        p.grad = g


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Bit for bit, NaN in the same places counting as equal."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def _difference(loss, replayed, grads, replayed_grads, buffers, end_buffers, end_rng, replay_rng) -> str | None:
    if not _same(loss.detach(), replayed.detach()):
        return "the recorded step's loss differs from the program's (it depends on Python state that changed)"
    if not all(_same(g, h) for g, h in zip(grads, replayed_grads)):
        return ("the recorded step's gradients differ from the program's (gradient hooks, or Python state the "
                "graph cannot hold)")
    if not all(_same(b.detach(), e) for b, e in zip(buffers, end_buffers)):
        return "the recorded step updates buffers differently from the program"
    if not all(_same(a, b) for a, b in zip(end_rng, replay_rng)):
        return "the recorded step draws a different amount of randomness than the program"
    return None


def _rng_state(device: torch.device) -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def _restore(buffers, values, rng, device: torch.device, written: list[bool]) -> None:
    with torch.no_grad():
        for b, v, w in zip(buffers, values, written):
            if w:
                b.copy_(v)
    torch.set_rng_state(rng[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(rng[1], device)


__all__ = ["MAX_GRAPHS", "SIMPLE", "StaleGraph", "StepReplay", "fold_constants", "lean_function", "simplify"]
