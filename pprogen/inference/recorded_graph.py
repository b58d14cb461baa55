r"""What a recorded training step becomes before it is replayed: a simplified graph, run as one plain function.

:class:`~pprogen.inference.replay.StepReplay` records an estimator's loss as a graph of tensor operations
(``torch.fx``'s ``make_fx``). This file turns that graph into what a replayed step runs, without changing one bit
of a value or a gradient:

- :func:`simplify` drops views, expansions and broadcasts to the same shape, multiplication or division by one,
  and dead code, only where autograd still sums every gradient in the same order, and never an in-place write, a
  recorded value check or a random draw (the random stream must advance as the program's does);
- :func:`fold_constants` evaluates once what depends on constants alone (tensors the program makes itself; never
  a parameter, a module's buffer or a ``pyro.param``), guarded by the version counters of the constants it read:
  a write to one raises :class:`StaleGraph`, and the step is recorded again;
- :func:`lean_function` writes the graph as one Python function that calls each operator's C++ entry point
  directly, binds parameters and buffers by reference (so it reads live values) and frees intermediates as soon
  as they are used up.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch

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
