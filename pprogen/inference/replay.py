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
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import pyro
import torch
from torch import nn

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


# -- simplification: only rewrites that leave every value and gradient bit for bit as they were -------------------
_aten = torch.ops.aten


def _shape(node) -> tuple | None:
    value = node.meta.get("val") if hasattr(node, "meta") else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _dtype(node):
    value = node.meta.get("val") if hasattr(node, "meta") else None
    return value.dtype if isinstance(value, torch.Tensor) else None


def _written(node) -> bool:
    """Whether any user writes into ``node``'s result in place (then it must stay a tensor of its own)."""
    for user in node.users:
        target = getattr(user.target, "_schema", None)
        if target is not None and any(a.alias_info is not None and a.alias_info.is_write for a in target.arguments):
            return True
    return False


def _no_gradient(node, gm) -> bool:
    """A constant that no gradient reaches (a buffer, a tensor made inside the program, a batch that takes none:
    the key holds the inputs' ``requires_grad``)."""
    if node.op == "placeholder":
        value = node.meta.get("val")
        return isinstance(value, torch.Tensor) and not value.requires_grad
    if node.op != "get_attr":
        return False
    value = getattr(gm, node.target, None)
    return isinstance(value, torch.Tensor) and not value.requires_grad


def _bypassable(source, node, gm) -> bool:
    """Whether ``node`` (which returns ``source``'s values unchanged) can hand ``source`` on instead. Only when
    ``source`` feeds nothing else, or takes no gradient: a tensor with several consumers sums their gradients
    in the order autograd meets them, and taking a node out of the graph could change that order (and the sum's
    last bit)."""
    if _shape(source) is None or _shape(source) != _shape(node) or _dtype(source) != _dtype(node) or _written(node):
        return False
    return len(source.users) == 1 or _no_gradient(source, gm)


def _is_identity(node, gm) -> Any:
    """The node ``node`` returns unchanged (and may be replaced by), or None."""
    if node.op != "call_function" or not node.args:
        return None
    target, args = node.target, node.args
    if target in (_aten.expand.default, _aten.reshape.default, _aten.view.default):
        return args[0] if _bypassable(args[0], node, gm) else None
    if target in (_aten.mul.Tensor, _aten.div.Tensor) and len(args) == 2 and not node.kwargs:
        source, other = args
        if type(other) in (int, float) and other == 1 and isinstance(source, torch.fx.Node) \
                and _bypassable(source, node, gm):
            return source
    return None


def _keeps(node) -> bool:
    """Dead or not, a node stays when it writes in place, returns nothing (a recorded value check) or draws
    random numbers (the stream must advance as the program's does)."""
    if node.is_impure():
        return True
    schema = getattr(node.target, "_schema", None)
    if schema is not None and not schema.returns:  # run for its effect alone: an assertion
        return True
    tags = getattr(node.target, "tags", ())
    return torch.Tag.nondeterministic_seeded in tags


def simplify(gm) -> None:
    """Drop no-op views and arithmetic, broadcasts of same-shaped tensors, and dead code from a recorded graph,
    where that changes neither a value nor the order in which autograd sums a gradient."""
    graph = gm.graph
    for node in list(graph.nodes):
        source = _is_identity(node, gm)
        if source is not None:
            node.replace_all_uses_with(source)
            graph.erase_node(node)
            continue
        if node.op == "call_function" and node.target is _aten.broadcast_tensors.default:
            inputs = node.args[0]
            shapes = {_shape(i) for i in inputs}
            users = list(node.users)
            if len(shapes) == 1 and None not in shapes and all(u.target is operator.getitem for u in users) \
                    and not any(_written(u) for u in users) \
                    and all(len(i.users) == 1 or _no_gradient(i, gm) for i in inputs):
                for user in users:
                    user.replace_all_uses_with(inputs[user.args[1]])
                    graph.erase_node(user)
                graph.erase_node(node)
    for node in list(graph.nodes):  # a fresh copy of a constant that only gets detached in place is dead
        if node.op == "call_function" and node.target is _aten.lift_fresh_copy.default:
            users = list(node.users)
            if all(u.target is _aten.detach_.default and not u.users for u in users):
                for user in users:
                    graph.erase_node(user)
                graph.erase_node(node)
    graph.eliminate_dead_code(is_impure_node=_keeps)
    graph.lint()
    gm.recompile()


class StaleGraph(RuntimeError):
    """A constant the graph folded (a buffer) was written to since: the graph must be recorded again."""


_FACTORIES = {_aten.empty.memory_format, _aten.empty_like.default, _aten.zeros.default, _aten.zeros_like.default,
              _aten.ones.default, _aten.ones_like.default, _aten.full.default, _aten.full_like.default}


def _writes_only_fresh_tensors(nodes) -> bool:
    """Whether every in-place write of the graph goes into a tensor it allocated itself (a random draw's buffer)."""
    for node in nodes:
        schema = getattr(node.target, "_schema", None)
        if schema is None:
            continue
        for spec, arg in zip(schema.arguments, node.args):
            if spec.alias_info is not None and spec.alias_info.is_write:
                if not (isinstance(arg, torch.fx.Node) and arg.op == "call_function" and arg.target in _FACTORIES):
                    return False
    return True


def fold_constants(gm, nodes, held: set[int] = frozenset()) -> tuple[dict, list[tuple[torch.Tensor, int]]]:
    """The nodes computed from constants alone (tensors the program makes itself, ``torch.tensor(...)`` and the
    like; never a parameter, a module's buffer or a ``pyro.param`` in ``held``), evaluated once, and the constants
    they read with their version counters, which the replayed step checks (:class:`StaleGraph` when one was
    written to)."""
    if not _writes_only_fresh_tensors(nodes):
        return {}, []
    values: dict[Any, Any] = {}
    for node in nodes:
        if node.op == "get_attr":
            value = getattr(gm, node.target)
            # only tensors the program makes itself: a module's buffer can be written where no version shows it
            # (``.data``, batch norm's running statistics)
            if isinstance(value, torch.Tensor) and not value.requires_grad and id(value) not in held:
                values[node] = value
        elif node.op == "call_function" and node.all_input_nodes and not _keeps(node) \
                and all(i in values for i in node.all_input_nodes):
            args = torch.fx.node.map_arg(node.args, values.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, values.__getitem__)
            with torch.no_grad():
                values[node] = node.target(*args, **kwargs)
    folded = {node: value for node, value in values.items() if node.op == "call_function"}
    read = {node for node in folded for node in node.all_input_nodes if node.op == "get_attr"}
    return folded, [(values[node], values[node]._version) for node in read]


def lean_function(gm, held: set[int] = frozenset()) -> Callable:
    """The recorded graph as one plain Python function that calls each operator's C++ entry point directly.

    ``GraphModule.forward`` calls every operator through its Python ``OpOverload`` wrapper and flattens its inputs
    through a pytree spec; at some fifty operators a step that is a tenth of a small network's step. Constants
    (parameters, buffers, devices, dtypes) are bound by reference, so the function reads live parameters; what
    depends on constants alone is computed once (:func:`fold_constants`) behind a check of their versions."""
    bound: dict[str, Any] = {"StaleGraph": StaleGraph}
    names: dict[Any, str] = {}

    def constant(value: Any) -> str:
        name = f"_k{len(bound)}"
        bound[name] = value
        return name

    def argument(value: Any) -> str:
        if isinstance(value, torch.fx.Node):
            return names[value]
        if isinstance(value, (list, tuple)):
            inner = ", ".join(argument(v) for v in value)
            return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
        if type(value) in (int, bool, str, type(None)) or (type(value) is float and math.isfinite(value)):
            return repr(value)
        return constant(value)

    nodes = list(gm.graph.nodes)
    folded, guards = fold_constants(gm, nodes, held)
    needed = {node for node in nodes if node not in folded and node.op != "get_attr"}
    needed |= {i for node in list(needed) for i in node.all_input_nodes}  # folded or constant inputs they read
    last_use: dict[Any, int] = {}
    for i, node in enumerate(nodes):
        if node in needed:
            for used in node.all_input_nodes:
                last_use[used] = i
    position = {node: i for i, node in enumerate(nodes)}
    freed: dict[int, list[str]] = {}
    for node, i in last_use.items():
        if node.op != "placeholder" and nodes[i].op != "output":
            freed.setdefault(i, []).append(f"v{position[node]}")
    inputs, lines = [], []
    if guards:
        checks = " or ".join(f"{constant(t)}._version != {version}" for t, version in guards)
        lines.append(f"if {checks}:")
        lines.append("    raise StaleGraph('a constant the replayed step folded was written to')")
    for i, node in enumerate(nodes):
        name = names[node] = f"v{i}"
        if node.op == "placeholder":
            inputs.append(name)
        elif node not in needed:
            continue
        elif node in folded:
            lines.append(f"{name} = {constant(folded[node])}")
        elif node.op == "get_attr":
            lines.append(f"{name} = {constant(getattr(gm, node.target))}")
        elif node.op == "call_function":
            target = node.target._op if isinstance(node.target, torch._ops.OpOverload) else node.target
            args = [argument(a) for a in node.args] + [f"{k}={argument(v)}" for k, v in node.kwargs.items()]
            lines.append(f"{name} = {constant(target)}({', '.join(args)})")
            if i in freed:  # intermediates go as soon as they are used up, as in the program
                lines.append(f"del {', '.join(freed[i])}")
        elif node.op == "output":
            lines.append(f"return {argument(node.args[0])}")
        else:
            raise ValueError(f"a recorded graph holds a {node.op!r} node, which a replay does not run")
    source = f"def replayed_step({', '.join(inputs)}):\n" + "\n".join(f"    {line}" for line in lines) + "\n"
    exec(compile(source, "<pprogen replayed step>", "exec"), bound)
    return bound["replayed_step"]
