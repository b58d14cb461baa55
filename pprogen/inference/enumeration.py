r"""Discrete latents summed out exactly, per particle and datum, as Pyro's ``TraceEnum_ELBO`` sums them.

A model site marked ``infer={"enumerate": "parallel"}`` and left out of the guide is enumerated by Pyro's
``poutine.enum``: its value holds every state along a dimension of its own, left of the plates, and every site
downstream carries that dimension in its log-density. The log-densities of those sites multiply into one factor
whose enumerated dimensions are summed out,

.. math::

    \log p(x_n, z_n) = \log \sum_{c} \prod_{s} p_s(\cdot \mid c), \qquad c = (c_1, c_2, \dots),

by a sum-product contraction (Pyro's ``contract_to_tensor`` in the log semiring) that keeps the particle and
data dimensions. Inside ``pyro.markov`` Pyro recycles the enumerated dimensions (the state at time t and t + 2
may share one), so the dimensions are named by the unique id Pyro gives each enumerated variable
(``_dim_to_id``), not by their position: a hidden Markov model's chain is then summed by variable elimination
in time linear in its length (the forward algorithm), where summing over positions would treat two states as
one.

Plates other than the particles and the data (a ``words`` plate nested in ``documents``, as in LDA) are
multiplied out after the variables inside them are summed, each entry on its own; for the joint estimate the data
plate is too. A label the guide enumerates has its dimension allocated by the guide's run, to the right of the
model's, as in Pyro's ``TraceEnum_ELBO``; the guide's densities of the sites drawn once per value of it divide the
product (``divided``), so that each value contributes :math:`p(x, y, z_y) / q(z_y \mid x, y)`.
"""

from __future__ import annotations

from collections import OrderedDict

import opt_einsum
import torch
from pyro.ops.contract import contract_to_tensor
from pyro.ops.packed import pack

from pprogen.inference.tracing import PARTICLES, masked_log_prob


def _symbols(site: dict, plate_symbols: dict[str, str]) -> dict[int, str]:
    """Each batch dimension of a site's log-density named: plates by name (even symbols), enumerated variables by
    Pyro's id (odd symbols), as Pyro's ``Trace.symbolize_dims`` names them."""
    dim_to_symbol = {}
    for frame in site["cond_indep_stack"]:
        if frame.vectorized:
            if frame.name not in plate_symbols:
                plate_symbols[frame.name] = opt_einsum.get_symbol(2 * len(plate_symbols))
            dim_to_symbol[frame.dim] = plate_symbols[frame.name]
    for dim, id_ in site["infer"].get("_dim_to_id", {}).items():
        dim_to_symbol[dim] = opt_einsum.get_symbol(1 + 2 * id_)
    return dim_to_symbol


def sum_enumerated(sites: list[dict], plate_name: str, joint: bool, divided: list[dict] = ()) -> torch.Tensor:
    """The enumerated dimensions of ``sites`` (every site whose log-density carries one) summed out ->
    ``(K|1, B|1)``: particles by data points, or ``(K|1, 1)`` for the joint (the data plate multiplied out too).
    The densities of ``divided`` (guide sites drawn once per value of a label the guide enumerates) divide the
    product instead of multiplying it."""
    plate_symbols: dict[str, str] = {}
    tree: OrderedDict = OrderedDict()
    sum_dims: set[str] = set()
    for site, sign in [(s, 1.0) for s in sites] + [(s, -1.0) for s in divided]:
        dim_to_symbol = _symbols(site, plate_symbols)
        try:
            term = pack(sign * masked_log_prob(site), dim_to_symbol)
        except ValueError as err:
            raise ValueError(
                f"site {site['name']!r} has a log-density of shape {tuple(masked_log_prob(site).shape)} whose dims "
                "are neither plates nor enumerated variables; declare every batch dimension with pyro.plate (or "
                ".to_event for event dimensions)"
            ) from err
        sum_dims.update(s for s in term._pyro_dims if s not in plate_symbols.values())
        ordinal = frozenset(plate_symbols[f.name] for f in site["cond_indep_stack"] if f.vectorized)
        tree.setdefault(ordinal, []).append(term)
    # a target plate no term varies along is left out (the particle plate sits outside the enumeration handler,
    # which draws the enumerated values before that plate can broadcast them): the result broadcasts along it
    present = {symbol for terms in tree.values() for term in terms for symbol in term._pyro_dims}
    kept = [plate_symbols[name] for name in (PARTICLES, None if joint else plate_name) if name in plate_symbols]
    total = contract_to_tensor(tree, sum_dims, frozenset(symbol for symbol in kept if symbol in present))
    dims = total._pyro_dims
    order = [plate_symbols[name] for name in (PARTICLES, plate_name) if name in plate_symbols]
    present = [s for s in order if s in dims]
    out = total.permute([dims.index(s) for s in present]) if present else total.reshape(())
    shape = [out.shape[present.index(s)] if s in present else 1 for s in (plate_symbols.get(PARTICLES),
                                                                          plate_symbols.get(plate_name))]
    if joint:
        shape[1] = 1
    return out.reshape(shape)
