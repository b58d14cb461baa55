"""Network specifications: the plain dict (or JSON file) a user writes for a discrete Bayesian network.

A spec maps each node, in the order of the data's columns, to its parents, its states and, optionally,
its conditional probability table::

    {
        "Cloudy":    {"states": ["no", "yes"], "parents": [],         "cpt": [0.5, 0.5]},
        "Sprinkler": {"states": ["off", "on"], "parents": ["Cloudy"], "cpt": [[0.5, 0.5], [0.9, 0.1]]},
        ...
    }

``cpt[i_1]...[i_k]`` is the row ``p(node | parent_1 = i_1, ..., parent_k = i_k)`` over the node's states,
so the table's shape is ``(states of parent_1, ..., states of parent_k, states of node)``. ``states``
may be a list of names or a count (default: the table's last axis, else 2). :func:`parse_spec` checks
everything a user can get wrong — unknown parents, cycles, shapes, rows that do not sum to 1 — and
returns :class:`Node` records in the spec's order with a topological order beside them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from pprogen.errors import suggest

RESERVED = ("data",)
ROW_TOLERANCE = 1e-4


class SpecError(ValueError):
    """A network specification that does not describe a valid discrete Bayesian network."""


@dataclass(frozen=True)
class Node:
    name: str
    parents: tuple[int, ...]  # indices into the spec's node list
    states: tuple[str, ...]
    cpt: torch.Tensor | None  # float64, shape (*parent cardinalities, cardinality)

    @property
    def cardinality(self) -> int:
        return len(self.states)


def load_spec(spec: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A spec dict from a dict, a JSON string or a JSON file."""
    if isinstance(spec, Mapping):
        return dict(spec)
    text = str(spec)
    if text.lstrip().startswith("{"):
        source, raw = "the JSON string", text
    else:
        path = Path(text)
        if not path.is_file():
            raise SpecError(f"network spec {text!r} is neither a dict, a JSON string nor an existing JSON file")
        source, raw = str(path), path.read_text()
    try:
        loaded = json.loads(raw)
    except json.JSONDecodeError as err:
        raise SpecError(f"{source} is not valid JSON ({err.msg} at line {err.lineno}); fix the file") from None
    if not isinstance(loaded, dict):
        raise SpecError(f"{source} must hold a JSON object mapping node names to {{parents, states, cpt}}")
    return loaded


def parse_spec(spec: Mapping[str, Any] | str | os.PathLike, require_cpts: bool = False) -> tuple[list[Node], list[int]]:
    """Validated nodes in the spec's order and a topological order of their indices."""
    raw = load_spec(spec)
    if not raw:
        raise SpecError("the network spec has no nodes; map at least one node name to {parents, states, cpt}")
    names = list(raw)
    index = {name: i for i, name in enumerate(names)}
    parents = []
    for name, entry in raw.items():
        if not isinstance(name, str) or not name or name in RESERVED or name.startswith("cpt_"):
            raise SpecError(f"node name {name!r} is not allowed; use a non-empty name other than 'data' and not starting with 'cpt_'")
        if not isinstance(entry, Mapping):
            raise SpecError(f"node {name!r} must map to a dict with 'parents', 'states' and 'cpt', got {type(entry).__name__}")
        unknown = set(entry) - {"parents", "states", "cpt"}
        if unknown:
            key = sorted(unknown)[0]
            raise SpecError(f"node {name!r} has an unknown field {key!r}{suggest(key, ['parents', 'states', 'cpt'])}; fields: parents, states, cpt")
        node_parents = list(entry.get("parents", []))
        for parent in node_parents:
            if parent not in index:
                raise SpecError(f"node {name!r} lists parent {parent!r}, which is not a node{suggest(str(parent), names)}; add it to the spec")
        if len(set(node_parents)) != len(node_parents) or name in node_parents:
            raise SpecError(f"node {name!r} lists a parent twice or itself; each parent appears once")
        parents.append(tuple(index[p] for p in node_parents))
    order = _topological_order(names, parents)
    nodes = []
    for i, (name, entry) in enumerate(raw.items()):
        nodes.append(_parse_node(name, entry, parents[i], require_cpts))
    for node in nodes:  # parents' cardinalities are only known once every node is parsed
        if node.cpt is not None:
            _check_cpt(node, nodes)
    return nodes, order


def _topological_order(names: list[str], parents: list[tuple[int, ...]]) -> list[int]:
    remaining = {i: set(p) for i, p in enumerate(parents)}
    order = []
    while remaining:
        ready = sorted(i for i, ps in remaining.items() if not ps)
        if not ready:
            cycle = _find_cycle(remaining)
            path = " -> ".join(names[i] for i in cycle)
            raise SpecError(f"the network has a cycle {path}; a Bayesian network must be a DAG: remove one of these edges")
        for i in ready:
            order.append(i)
            del remaining[i]
        for ps in remaining.values():
            ps.difference_update(ready)
    return order


def _find_cycle(remaining: dict[int, set[int]]) -> list[int]:
    """A cycle among nodes that all still wait on a parent: walk parent links until a node repeats."""
    path, seen = [], {}
    node = min(remaining)
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(remaining[node])
    cycle = path[seen[node]:] + [node]
    return cycle[::-1]  # parent -> child


def _parse_node(name: str, entry: Mapping[str, Any], parent_ids: tuple[int, ...], require_cpt: bool) -> Node:
    cpt = entry.get("cpt")
    table = None
    if cpt is not None:
        try:
            table = torch.as_tensor(cpt, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise SpecError(f"the CPT of {name!r} is not a rectangular array of numbers ({err}); write nested lists") from None
    elif require_cpt:
        raise SpecError(f"node {name!r} has no 'cpt'; fixed CPTs need a table for every node (or use cpt='learned')")
    states = entry.get("states")
    if states is None:
        count = table.shape[-1] if table is not None and table.dim() > 0 else 2
        states = [str(k) for k in range(count)]
    elif isinstance(states, int) and not isinstance(states, bool):
        states = [str(k) for k in range(states)]
    states = tuple(str(s) for s in states)
    if len(states) < 2 or len(set(states)) != len(states):
        raise SpecError(f"node {name!r} needs at least two distinct states, got {list(states)}")
    return Node(name, parent_ids, states, table)


def _check_cpt(node: Node, nodes: list[Node]) -> None:
    expected = tuple(nodes[p].cardinality for p in node.parents) + (node.cardinality,)
    if tuple(node.cpt.shape) != expected:
        parents = ", ".join(f"{nodes[p].name}: {nodes[p].cardinality}" for p in node.parents) or "none"
        raise SpecError(
            f"the CPT of {node.name!r} has shape {tuple(node.cpt.shape)} but its parents ({parents}) and "
            f"{node.cardinality} states need {expected}; give one row per parent configuration"
        )
    if not torch.isfinite(node.cpt).all() or (node.cpt < 0).any():
        raise SpecError(f"the CPT of {node.name!r} has a negative or non-finite entry; probabilities lie in [0, 1]")
    sums = node.cpt.sum(-1)
    bad = ((sums - 1).abs() > ROW_TOLERANCE).nonzero()
    if len(bad):
        config = bad[0].tolist()
        where = ", ".join(f"{nodes[p].name}={nodes[p].states[v]}" for p, v in zip(node.parents, config)) or "no parents"
        raise SpecError(
            f"the CPT row of {node.name!r} for {where} sums to {sums[tuple(config)].item():.6g}, not 1; "
            "each row is a distribution over the node's states"
        )


SPRINKLER = {
    "Cloudy": {"states": ["no", "yes"], "parents": [], "cpt": [0.5, 0.5]},
    "Sprinkler": {"states": ["off", "on"], "parents": ["Cloudy"], "cpt": [[0.5, 0.5], [0.9, 0.1]]},
    "Rain": {"states": ["no", "yes"], "parents": ["Cloudy"], "cpt": [[0.8, 0.2], [0.2, 0.8]]},
    "GrassWet": {"states": ["no", "yes"], "parents": ["Sprinkler", "Rain"],
                 "cpt": [[[1.0, 0.0], [0.1, 0.9]], [[0.1, 0.9], [0.01, 0.99]]]},
}
NETWORKS = {"sprinkler": SPRINKLER}


def ancestral_sample(spec: Mapping[str, Any] | str | os.PathLike, n: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` rows of state indices ``(n, nodes)`` (float, in the spec's node order) drawn parents first from a
    spec whose every node has a CPT: the data a network generates, without building the model."""
    nodes, order = parse_spec(NETWORKS.get(spec, spec) if isinstance(spec, str) else spec, require_cpts=True)
    out = torch.zeros(n, len(nodes), dtype=torch.long)
    for i in order:
        node = nodes[i]
        probs = node.cpt[tuple(out[:, p] for p in node.parents)] if node.parents else node.cpt.expand(n, -1)
        out[:, i] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return out.float()


def fully_connected_spec(num_nodes: int, states: int = 2) -> dict[str, Any]:
    """Nodes ``x0..x{D-1}``, each with every earlier node as a parent (the FVSBN graph)."""
    return {f"x{i}": {"parents": [f"x{j}" for j in range(i)], "states": states} for i in range(num_nodes)}


def render(nodes: list[Node], order: list[int], tables: list[torch.Tensor] | None) -> str:
    """The network as text: edges, then each node's table one parent configuration per line."""
    edges = [f"{nodes[p].name} -> {n.name}" for n in nodes for p in n.parents]
    lines = [f"{len(nodes)} nodes, {len(edges)} edges: " + (", ".join(edges) or "none")]
    for i in order:
        node = nodes[i]
        parents = ", ".join(nodes[p].name for p in node.parents) or "-"
        lines.append(f"{node.name}  (parents: {parents}; states: {', '.join(node.states)})")
        if tables is None:
            continue
        table = tables[i].reshape(-1, node.cardinality)
        cards = [nodes[p].cardinality for p in node.parents]
        if table.shape[0] > 64:
            lines.append(f"  {table.shape[0]} parent configurations (not shown)")
            continue
        for row, probs in enumerate(table.tolist()):
            config, rest = [], row
            for p, card in zip(reversed(node.parents), reversed(cards)):
                config.append(f"{nodes[p].name}={nodes[p].states[rest % card]}")
                rest //= card
            label = " ".join(reversed(config)) or "prior"
            cells = "  ".join(f"{s} {v:.3f}" for s, v in zip(node.states, probs))
            lines.append(f"  {label:28s} {cells}")
    return "\n".join(lines)
