r"""Discrete Bayesian networks as Pyro programs: one ``Categorical`` site per node, in topological order.

.. math::

    p(x) = \prod_{v} p\big(x_v \mid x_{\mathrm{pa}(v)}\big)

The network comes from a plain spec (:mod:`pprogen.dag`). Each node's conditional distribution is

- ``cpd="table"``: a conditional probability table, ``cpt="fixed"`` (the spec's, as buffers),
  ``"learned"`` (parameters started at the spec's table, or uniform with ``init="uniform"`` or where the
  spec gives none, fitted by maximum likelihood) or
  ``"dirichlet"`` (``cpt_<node>`` latent sites with a symmetric Dirichlet prior, one per parent
  configuration, fitted by SVI with :class:`DirichletCPTGuide`);
- ``cpd="logistic"``: a softmax regression on the one-hot parents (dummy coded). With binary nodes and
  every earlier node as a parent (:func:`~pprogen.dag.fully_connected_spec`) this is FVSBN.

Data are ``(N, num_nodes)`` state indices in the spec's column order; ``NaN`` marks a missing value. A node
with missing entries becomes a site marked for parallel enumeration, with a factor ``<node>_evidence``
pinning the rows where it was observed, so ``TraceEnum_ELBO``
(``--elbo enum``, the card's default) sums them out exactly and ``log_prob`` is the exact marginal of what
was observed. Queries run on Pyro's enumeration: :meth:`BayesianNetwork.query` and ``marginals`` by
variable elimination (``TraceEnum_ELBO``), ``most_probable`` and conditional ``sample`` by
``infer_discrete``. ``fit_counts`` is the closed-form alternative for complete data: posterior-mean
tables under a Dirichlet prior.

References: Pearl, Probabilistic Reasoning in Intelligent Systems, 1988; Koller & Friedman, Probabilistic
Graphical Models, 2009 (ch. 17, parameter estimation); the sprinkler network is Murphy's BNT example
(P(Sprinkler = on | GrassWet = yes) = 0.4298, P(Rain = yes | GrassWet = yes) = 0.7079).
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from typing import Any, Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import TraceEnum_ELBO, infer_discrete
from pyro.nn import PyroModule
from pyro.ops.indexing import Vindex
from torch import nn

from pprogen.errors import suggest
from pprogen.nn import EmptyGuide
from pprogen.models.cpt_learning import CPTLearning, DirichletCPTGuide
from pprogen.dag import NETWORKS, SPRINKLER, parse_spec, render  # noqa: F401  (SPRINKLER: the public name)
from pprogen.registry import register_model

Evidence = Mapping[str, "int | str"]


class BayesianNetwork(CPTLearning, PyroModule):
    """A discrete Bayesian network; see the module docstring for ``cpd`` and ``cpt``."""

    accepts_missing = True  # NaN entries are summed out

    def __init__(self, spec: Mapping[str, Any] | str | os.PathLike, cpd: str = "table", cpt: str = "learned",
                 prior_concentration: float = 1.0, init: str = "spec") -> None:
        super().__init__()
        if cpd not in ("table", "logistic"):
            raise ValueError(f"unknown cpd {cpd!r}; choose 'table' or 'logistic'")
        if cpt not in ("fixed", "learned", "dirichlet"):
            raise ValueError(f"unknown cpt {cpt!r}; choose 'fixed', 'learned' or 'dirichlet'")
        if cpd == "logistic" and cpt != "learned":
            raise ValueError("logistic CPDs are always learned; drop cpt= or use cpd='table'")
        if init not in ("spec", "uniform"):
            raise ValueError(f"unknown init {init!r}; choose 'spec' (the spec's tables where given) or 'uniform'")
        if not prior_concentration > 0:
            raise ValueError(f"prior_concentration must be positive, got {prior_concentration}")
        spec = NETWORKS.get(spec, spec) if isinstance(spec, str) else spec
        self.nodes, self.order = parse_spec(spec, require_cpts=cpt == "fixed")
        self.names = [node.name for node in self.nodes]
        self.cpd, self.cpt_mode, self.prior_concentration = cpd, cpt, float(prior_concentration)
        self.x_shape = (len(self.nodes),)
        for i, node in enumerate(self.nodes):
            shape = self.table_shape(i)
            if cpd == "logistic":
                self.register_parameter(f"bias_{i}", nn.Parameter(torch.zeros(node.cardinality)))
                for j, p in enumerate(node.parents):  # one row per parent state but the first (dummy coding)
                    weight = torch.zeros(self.nodes[p].cardinality - 1, node.cardinality)
                    self.register_parameter(f"weight_{i}_{j}", nn.Parameter(weight))
            elif cpt == "fixed":
                self.register_buffer(f"log_cpt_{i}", node.cpt.float().log())
            elif cpt == "learned":
                given = node.cpt is not None and init == "spec"
                start = node.cpt.float() if given else torch.full(shape, 1.0 / shape[-1])
                self.register_parameter(f"log_cpt_{i}", nn.Parameter(start.clamp_min(1e-6).log()))

    # ------------------------------------------------------------------ the program

    def table_shape(self, i: int) -> tuple[int, ...]:
        node = self.nodes[i]
        return tuple(self.nodes[p].cardinality for p in node.parents) + (node.cardinality,)

    def _tables(self) -> list[torch.Tensor | None]:
        """Per node: log-probability table (table CPDs), sampled probabilities (dirichlet) or None."""
        if self.cpd == "logistic":
            return [None] * len(self.nodes)
        if self.cpt_mode == "dirichlet":
            tables = [None] * len(self.nodes)
            for i in self.order:
                shape = self.table_shape(i)
                prior = dist.Dirichlet(torch.full(shape, self.prior_concentration, device=self._like().device))
                tables[i] = pyro.sample(f"cpt_{self.names[i]}", prior.to_event(len(shape) - 1))
            return tables
        return [getattr(self, f"log_cpt_{i}") for i in range(len(self.nodes))]

    def _like(self) -> torch.Tensor:
        """A tensor with the network's device and dtype."""
        return next(itertools.chain(self.parameters(), self.buffers()), torch.empty(0))

    def _conditional(self, i: int, parent_values: list[torch.Tensor], tables: list) -> dist.Categorical:
        node = self.nodes[i]
        if self.cpd == "logistic":
            logits = getattr(self, f"bias_{i}")
            for j, (p, value) in enumerate(zip(node.parents, parent_values)):
                weight = getattr(self, f"weight_{i}_{j}")
                weight = torch.cat([weight.new_zeros(1, node.cardinality), weight])
                logits = logits + weight[value]
            return dist.Categorical(logits=logits)
        table = Vindex(tables[i])[(Ellipsis, *parent_values, slice(None))]
        if self.cpt_mode == "dirichlet":
            return dist.Categorical(probs=table)
        log_table = table - table.logsumexp(-1, keepdim=True) if self.cpt_mode == "learned" else table
        return dist.Categorical(logits=log_table)

    def default_guide(self) -> DirichletCPTGuide | EmptyGuide:
        return DirichletCPTGuide(self) if self.cpt_mode == "dirichlet" else EmptyGuide()

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        n = x.shape[0] if x is not None else (batch_size or 1)
        tables = self._tables()
        if x is not None:
            observed = ~torch.isnan(x)
            states = torch.where(observed, x, torch.zeros_like(x)).long()
        values: dict[int, torch.Tensor] = {}
        with pyro.plate("data", n):
            for i in self.order:
                fn = self._conditional(i, [values[p] for p in self.nodes[i].parents], tables)
                name = self.names[i]
                if x is None:
                    values[i] = pyro.sample(name, fn)
                elif bool(observed[:, i].all()):
                    values[i] = pyro.sample(name, fn, obs=states[:, i])
                else:
                    values[i] = self._partly_observed(name, fn, states[:, i], observed[:, i])
        if x is not None:
            return x
        return torch.stack([values[i] for i in range(len(self.nodes))], -1).float()

    @staticmethod
    def _partly_observed(name: str, fn: dist.Categorical, states: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """One enumerated site for a column with missing entries; a factor pins the observed rows.

        Pyro's ``obs_mask`` would leave the enumerated twin of an observed entry free (its factor masked to
        1), so summing it out would count that row once per state; the indicator factor keeps the sum exact.
        """
        value = pyro.sample(name, fn, infer={"enumerate": "parallel"})
        agrees = (value == states) | ~observed
        zero = fn.logits.new_zeros(())
        pyro.factor(f"{name}_evidence", torch.where(agrees, zero, zero - math.inf))
        return value

    # ------------------------------------------------------------------ exact evaluation

    @property
    def has_exact_log_prob(self) -> bool:
        """False with Dirichlet CPTs: p(x) then integrates over tables shared by every row."""
        return self.cpt_mode != "dirichlet"

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(observed entries) per row; ``NaN`` entries are summed out by enumeration."""
        self._check_point_network("log_prob")
        x = self.check_data(x)
        if not torch.isnan(x).any():
            states = x.long()
            tables = self._tables()
            return sum(self._conditional(i, [states[:, p] for p in self.nodes[i].parents], tables).log_prob(states[:, i])
                       for i in range(len(self.nodes)))
        with pyro.poutine.enum(first_available_dim=-2):
            trace = pyro.poutine.trace(self).get_trace(x)
        trace.compute_log_prob()
        total = torch.zeros(x.shape[0], device=x.device)
        for site in trace.nodes.values():
            if site["type"] == "sample":
                total = total + site["log_prob"]
        return total.reshape(-1, x.shape[0]).logsumexp(0)  # every enumerated dim sits left of the data plate

    def check_data(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as float state indices, or a one-line error naming the column at fault."""
        if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != len(self.nodes):
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"data must be (N, {len(self.nodes)}) state indices with columns {', '.join(self.names)}; got {shape}")
        x = x.to(self._like().dtype if self._like().is_floating_point() else torch.float32)
        present = ~torch.isnan(x)
        cards = torch.tensor([n.cardinality for n in self.nodes], device=x.device)
        bad = present & ((x < 0) | (x >= cards) | (x != x.round()))
        if bad.any():
            row, col = bad.nonzero()[0].tolist()
            raise ValueError(
                f"column {col} ({self.names[col]}) holds {x[row, col].item():g} in row {row}, but its states are "
                f"0..{cards[col].item() - 1}; encode states as integers (NaN for a missing value)"
            )
        return x

    def _evidence_row(self, evidence: Evidence | None, what: str) -> torch.Tensor:
        """One data row with the evidence filled in and every other node missing (NaN); refused when the
        network has no point tables or the evidence has probability 0."""
        self._check_point_network(what)
        like = self._like()
        row = torch.full((1, len(self.nodes)), math.nan, device=like.device, dtype=like.dtype)
        for name, value in (evidence or {}).items():
            i = self.node_index(name)
            row[0, i] = self.state_index(i, value)
        if not torch.isfinite(self._log_evidence(row)):
            raise ValueError(f"the evidence {dict(evidence or {})} has probability 0 under this network; it cannot be conditioned on")
        return row

    def node_index(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"unknown node {name!r}{suggest(name, self.names)}; nodes: {', '.join(self.names)}")
        return self.names.index(name)

    def state_index(self, i: int, value: int | str) -> int:
        node = self.nodes[i]
        if isinstance(value, str) and value in node.states:
            return node.states.index(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == int(value) and 0 <= value < node.cardinality:
            return int(value)
        raise ValueError(
            f"{node.name}={value!r} is not a state of {node.name}; use one of {', '.join(node.states)} "
            f"or 0..{node.cardinality - 1}"
        )

    def _log_evidence(self, row: torch.Tensor) -> torch.Tensor:
        """log p(evidence in ``row``) by variable elimination over the missing nodes (TraceEnum_ELBO)."""
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")  # all observed: fine
            return torch.tensor(-TraceEnum_ELBO(max_plate_nesting=1).loss(self, EmptyGuide(), row), device=row.device)

    @torch.no_grad()
    def query(self, targets: str | list[str], evidence: Evidence | None = None) -> torch.Tensor:
        """P(targets | evidence) as a table over the targets' states (one axis per target, in order)."""
        targets = [targets] if isinstance(targets, str) else list(targets)
        ids = [self.node_index(t) for t in targets]
        overlap = set(targets) & set(evidence or {})
        if overlap or len(set(ids)) != len(ids):
            raise ValueError(f"a target appears twice or also in the evidence ({', '.join(sorted(overlap)) or targets}); query each node once")
        base = self._evidence_row(evidence, "query")
        cards = [self.nodes[i].cardinality for i in ids]
        scores = []
        for config in itertools.product(*(range(c) for c in cards)):
            row = base.clone()
            row[0, ids] = torch.tensor(config, dtype=row.dtype, device=row.device)
            scores.append(self._log_evidence(row))
        return torch.softmax(torch.stack(scores), 0).reshape(cards)

    @torch.no_grad()
    def marginals(self, evidence: Evidence | None = None) -> dict[str, torch.Tensor]:
        """P(node | evidence) for every node, from one variable-elimination pass (evidence nodes one-hot)."""
        row = self._evidence_row(evidence, "marginals")
        # two copies of the row: Pyro's marginal contraction trips over a data plate of size 1
        found = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(self, EmptyGuide(), row.expand(2, -1))
        out = {}
        for i, name in enumerate(self.names):
            if torch.isnan(row[0, i]):
                out[name] = found[name].probs.reshape(2, -1)[0]
            else:
                out[name] = nn.functional.one_hot(row[0, i].long(), self.nodes[i].cardinality).float()
        return out

    @torch.no_grad()
    def most_probable(self, evidence: Evidence | None = None) -> dict[str, str]:
        """The most probable joint state of the unobserved nodes given the evidence (``infer_discrete``)."""
        states = self._decode(self._evidence_row(evidence, "most_probable"), temperature=0)[0]
        return {name: self.nodes[i].states[int(states[i])] for i, name in enumerate(self.names)}

    @torch.no_grad()
    def sample(self, n: int, evidence: Evidence | None = None) -> torch.Tensor:
        """``n`` rows of states: ancestral sampling, or exact posterior draws given ``evidence``."""
        if not evidence:
            return self(batch_size=n)
        return self._decode(self._evidence_row(evidence, "sample with evidence").expand(n, -1), temperature=1)

    @torch.no_grad()
    def impute(self, x: torch.Tensor, missing: torch.Tensor, num_completions: int = 8) -> tuple[torch.Tensor, dict]:
        """Exact draws of each row's missing states given its observed ones (``infer_discrete``)."""
        self._check_point_network("impute")
        rows = torch.where(missing, torch.full_like(x, math.nan), x)
        rows = self.check_data(rows).repeat_interleave(num_completions, 0)
        draws = self._decode(rows, temperature=1).reshape(x.shape[0], num_completions, -1)
        return draws, {"method": "exact (infer_discrete given the observed states)"}

    def _decode(self, rows: torch.Tensor, temperature: int) -> torch.Tensor:
        decoded = infer_discrete(self, first_available_dim=-2, temperature=temperature)
        trace = pyro.poutine.trace(decoded).get_trace(rows)
        return torch.stack([trace.nodes[name]["value"].reshape(-1).float() for name in self.names], -1)

    def _check_point_network(self, what: str) -> None:
        if self.cpt_mode == "dirichlet":
            raise ValueError(f"{what} needs point CPTs; call posterior_mean_network(guide) first")

    # ------------------------------------------------------------------ tables and learning

    @torch.no_grad()
    def cpts(self) -> list[torch.Tensor]:
        """Every node's full table p(node | parents), shape ``table_shape(i)`` (logistic CPDs evaluated)."""
        self._check_point_network("cpts")
        out, tables = [], self._tables()
        for i, node in enumerate(self.nodes):
            configs = torch.cartesian_prod(*[torch.arange(c) for c in self.table_shape(i)[:-1]]) if node.parents else None
            if configs is None:
                parent_values = []
            else:
                configs = configs.reshape(-1, len(node.parents)).to(self._like().device)
                parent_values = list(configs.T)
            probs = self._conditional(i, parent_values, tables).probs
            out.append(probs.reshape(self.table_shape(i)))
        return out

    def to_spec(self) -> dict[str, Any]:
        """The network with its current tables, as a JSON-ready spec."""
        return {node.name: {"states": list(node.states), "parents": [self.names[p] for p in node.parents],
                            "cpt": table.tolist()} for node, table in zip(self.nodes, self.cpts())}

    def fitted_network(self, guide: Any = None) -> "BayesianNetwork":
        """The network itself, or with Dirichlet CPTs the posterior-mean network under ``guide``."""
        return self.posterior_mean_network(guide) if self.cpt_mode == "dirichlet" else self

    def posterior_mean_network(self, guide: "DirichletCPTGuide") -> "BayesianNetwork":
        """A fixed network whose tables are the guide's posterior means (for queries after Bayesian fitting)."""
        spec = {node.name: {"states": list(node.states), "parents": [self.names[p] for p in node.parents],
                            "cpt": guide.mean(node.name).double().tolist()} for node in self.nodes}
        return BayesianNetwork(spec, cpt="fixed")

    def describe(self) -> str:
        tables = None if self.cpt_mode == "dirichlet" else [t.cpu() for t in self.cpts()]
        return render(self.nodes, self.order, tables)


def _network_details(name: str):
    def details() -> str:
        from pprogen.registry import create_model

        return create_model(name).describe()

    return details


_CARD = dict(kind="bayesnet", train_defaults={"elbo": "enum", "lr": 0.05, "patience": 10})


@register_model(
    default_data="sprinkler", details=_network_details("sprinkler"),
    reference="Pearl 1988; Murphy's BNT sprinkler example: P(Rain=yes | GrassWet=yes) = 0.7079",
    story="Cloudy -> {Sprinkler, Rain} -> GrassWet; one Categorical site per node, missing nodes enumerated",
    **_CARD,
)
def sprinkler(cpd: str = "table", cpt: str = "learned", prior_concentration: float = 1.0,
              init: str = "spec") -> BayesianNetwork:
    """The four-node sprinkler network; its textbook tables are the starting (or, with cpt='fixed', the fixed) CPTs."""
    return BayesianNetwork(SPRINKLER, cpd=cpd, cpt=cpt, prior_concentration=prior_concentration, init=init)


@register_model(
    default_data="sprinkler", details=_network_details("bayesnet"),
    reference="Koller & Friedman, Probabilistic Graphical Models, MIT Press 2009",
    story="p(x) = prod_v p(x_v | x_pa(v)) from a DAG + CPT spec (dict or JSON file); --set spec=net.json",
    **_CARD,
)
def bayesnet(spec: Any = "sprinkler", cpd: str = "table", cpt: str = "learned",
             prior_concentration: float = 1.0, init: str = "spec") -> BayesianNetwork:
    """Any discrete network: ``spec`` is a dict, a JSON string or file, or a built-in name ('sprinkler')."""
    return BayesianNetwork(spec, cpd=cpd, cpt=cpt, prior_concentration=prior_concentration, init=init)
