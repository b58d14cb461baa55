r"""Fully observed autoregressive models of binary vectors: FVSBN, NADE, MADE and an LSTM.

.. math::

    p(x) = \prod_{i=1}^{D} \mathrm{Bernoulli}\big(x_{o_i} \mid \sigma(f_i(x_{o_{<i}}))\big)

for an ordering :math:`o` of the D dimensions. Each model is a Pyro program observing ``x`` at one site
with an :class:`AutoregressiveBernoulli` distribution (exact ``log_prob``, ancestral ``sample``), so SVI
with the empty guide is maximum likelihood and the same trainer serves them.

- ``fvsbn``: :math:`f_i = b_i + \sum_{j<i} W_{ij} x_j` (logistic regressions; Frey 1998);
- ``nade``: :math:`h_i = \sigma(c + W_{:,<i} x_{<i})`, :math:`f_i = b_i + V_i h_i`, the :math:`O(DH)`
  recurrence swept in blocks of dimensions by :func:`nade_logits`, a custom autograd function that recomputes
  hidden units in the backward pass (Larochelle & Murray, AISTATS 2011); ``eonade`` trains it on random
  orderings and averages orderings at evaluation (Uria, Murray & Larochelle, ICML 2014);
- ``made``: a masked MLP with any number of hidden layers; ``num_masks`` connectivity patterns (and input
  orderings with ``order_agnostic``) are cycled during training and averaged as an ensemble at evaluation;
  masks and orderings are buffers, so they survive save/load (Germain et al., ICML 2015, arXiv:1502.03509);
- ``rnn_ar``: an LSTM reads :math:`x_{<i}` and predicts :math:`x_i`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional, Sequence

import pyro
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import constraints

from pprogen.nn import EmptyGuide
from pprogen.progress import Sweep
from pprogen.registry import register_model

logger = logging.getLogger(__name__)  # no handler here: the command line decides what is shown


class AutoregressiveBernoulli(TorchDistribution):
    """Binary arrays with autoregressive logits; an equal-weight mixture over several orderings/nets.

    ``orders[k]`` lists flat indices into the event (row-major) in the order net ``k`` generates them.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, nets: Sequence[Callable[[torch.Tensor], torch.Tensor]], orders: torch.Tensor,
                 batch_shape: Sequence[int] = torch.Size(), validate_args: bool | None = None,
                 event_shape: Sequence[int] | None = None) -> None:
        self.nets = list(nets)
        self.orders = orders  # (len(nets), numel of the event)
        event_shape = torch.Size(event_shape if event_shape is not None else (orders.shape[-1],))
        super().__init__(torch.Size(batch_shape), event_shape, validate_args=validate_args)

    @property
    def support(self):
        return constraints.independent(constraints.boolean, len(self.event_shape))

    def expand(
        self, batch_shape: Sequence[int], _instance: AutoregressiveBernoulli | None = None
    ) -> AutoregressiveBernoulli:
        return AutoregressiveBernoulli(self.nets, self.orders, batch_shape, self._validate_args, self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        event_dims = tuple(range(-len(self.event_shape), 0))
        parts = [
            -F.binary_cross_entropy_with_logits(net(value), value, reduction="none").sum(event_dims)
            for net in self.nets
        ]
        log_p = parts[0] if len(parts) == 1 else torch.logsumexp(torch.stack(parts), 0) - math.log(len(parts))
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))

    @torch.no_grad()
    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        event = tuple(self.event_shape)
        flat = torch.zeros((math.prod(shape[: len(shape) - len(event)]), math.prod(event)), device=self.orders.device)
        component = torch.randint(len(self.nets), (flat.shape[0],), device=flat.device)
        with self._sweep("sampling", component) as sweep:
            for k, net in enumerate(self.nets):
                rows = (component == k).nonzero()[:, 0]
                if len(rows) == 0:
                    continue
                xs = flat[rows]
                for i in self.orders[k].tolist():
                    logits = net(xs.reshape((-1,) + event)).reshape(len(rows), -1)
                    xs[:, i] = torch.bernoulli(torch.sigmoid(logits[:, i]))
                    sweep.advance()
                flat[rows] = xs
        return flat.reshape(shape)

    def _sweep(self, what: str, component: torch.Tensor) -> Sweep:
        """Progress over the dimensions of the orderings that draw rows (``component``: each row's net)."""
        used, dims = len(component.unique()), self.orders.shape[-1]
        unit = f"dimensions ({dims} in each of {used} orderings)" if used > 1 else "dimensions"
        return Sweep(what, used * dims, unit, logger)


    @torch.no_grad()
    def complete(self, x: torch.Tensor, missing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One completion per row: the missing entries drawn in each net's order from their conditionals, the
        observed ones kept (ancestral sampling with the observed entries clamped; one net per row, uniformly).
        Returns ``(completions, log_weight)`` with ``log_weight = log p(x) - log q(x_mis)``, ``q`` the mixture over
        nets of this proposal: constant across completions of a row when every observed entry comes before every
        missing one in a single order (the draws are then exact), an importance weight otherwise."""
        event = tuple(self.event_shape)
        n = x.shape[0]
        flat = torch.where(missing, torch.zeros_like(x), x).reshape(n, -1).clone()
        miss = missing.reshape(n, -1)
        component = torch.randint(len(self.nets), (n,), device=flat.device)
        with self._sweep("imputing", component) as sweep:
            for k, net in enumerate(self.nets):
                rows = (component == k).nonzero()[:, 0]
                if len(rows) == 0:
                    continue
                xs, ms = flat[rows], miss[rows]
                for i in self.orders[k].tolist():
                    sweep.advance()
                    todo = ms[:, i]
                    if not todo.any():
                        continue
                    logits = net(xs.reshape((-1,) + event)).reshape(len(rows), -1)[:, i]
                    xs[:, i] = torch.where(todo, torch.bernoulli(torch.sigmoid(logits)), xs[:, i])
                flat[rows] = xs
        full = flat.reshape(x.shape)
        log_p, log_q = [], []
        for net in self.nets:
            per_dim = -F.binary_cross_entropy_with_logits(net(full), full, reduction="none").reshape(n, -1)
            log_p.append(per_dim.sum(-1))
            log_q.append((per_dim * miss).sum(-1))
        return full, torch.stack(log_p).logsumexp(0) - torch.stack(log_q).logsumexp(0)

    def observed_first(self, missing: torch.Tensor) -> bool:
        """Whether every row's observed entries all come before its missing ones in the (single) order."""
        if len(self.nets) != 1:
            return False
        in_order = missing.reshape(missing.shape[0], -1)[:, self.orders[0]]
        # once missing, missing to the end: the running maximum of the missing flags equals the flags
        return bool((in_order.int().cummax(-1).values == in_order.int()).all())


class AutoregressiveModel(PyroModule):
    """Shared story: ``x`` observed at one site inside the ``data`` plate; subclasses give the logits."""

    def __init__(self, x_dim: int) -> None:
        super().__init__()
        if not isinstance(x_dim, int) or x_dim < 1:
            raise ValueError(f"x_dim must be a positive integer, got {x_dim!r}")
        self.x_shape = (x_dim,)
        self.register_buffer("order", torch.arange(x_dim).unsqueeze(0))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def distribution(self) -> AutoregressiveBernoulli:
        return AutoregressiveBernoulli([self.logits], self.order)

    def default_guide(self) -> EmptyGuide:
        return EmptyGuide()

    def forward(self, x: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
        n = x.shape[0] if x is not None else (batch_size or 1)
        with pyro.plate("data", n):
            return pyro.sample("x", self.distribution(), obs=x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per row."""
        return self.distribution().log_prob(x)

    def sample(self, n: int) -> torch.Tensor:
        return self.distribution().sample((n,))

    @torch.no_grad()
    def impute(self, x: torch.Tensor, missing: torch.Tensor, num_completions: int = 8, num_particles: int = 256,
               **condition: Any) -> tuple[torch.Tensor, dict]:
        """Draws of the missing entries given the observed ones: ancestral completion (exact) when the observed
        entries come first in the model's order; otherwise ``num_particles`` clamped ancestral completions per
        row, importance-resampled by p(x) / q(x_mis) (their effective sample size is reported: a small one means
        the completions are few distinct particles). Returns ``(completions (N, S, *shape), info)``."""
        d = self.distribution(**condition) if condition else self.distribution()
        exact = d.observed_first(missing)
        particles = num_completions if exact else num_particles
        reps = {k: v.repeat_interleave(particles, 0) for k, v in condition.items()}
        d = self.distribution(**reps) if condition else d
        full, log_w = d.complete(x.repeat_interleave(particles, 0), missing.repeat_interleave(particles, 0))
        full = full.reshape(x.shape[0], particles, *x.shape[1:])
        if exact:
            return full, {"method": "ancestral completion (the observed entries come first in the model's order)"}
        w = torch.softmax(log_w.reshape(x.shape[0], particles).double(), -1)
        pick = torch.multinomial(w.float(), num_completions, replacement=True)
        ess = 1 / w.pow(2).sum(-1)
        chosen = full[torch.arange(x.shape[0], device=x.device)[:, None], pick]
        return chosen, {"method": f"importance resampling of {particles} clamped ancestral completions per row",
                        "ess": ess.float()}


class FVSBN(AutoregressiveModel):
    def __init__(self, x_dim: int) -> None:
        super().__init__(x_dim)
        self.weight = nn.Parameter(torch.zeros(x_dim, x_dim))
        self.bias = nn.Parameter(torch.zeros(x_dim))
        self.register_buffer("mask", torch.ones(x_dim, x_dim).tril(-1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def nade_logits(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, v: torch.Tensor, b: torch.Tensor,
                u: torch.Tensor | None = None, block: int = 32) -> torch.Tensor:
    r"""NADE's D conditionals' logits for rows ``x`` (..., D), in the order of the columns.

    :math:`a_i = c + \sum_{j<i} (W_{:,j} x_j + U_{:,j})`, :math:`\mathrm{logit}_i = b_i + V_i \sigma(a_i)`
    (``u``, the observed-input weights of order-agnostic NADE, is optional). Written as one cumulative sum this
    materialises several (B, H, D) tensors and reads them again; here the dimensions are swept in blocks of
    ``block``, carrying the running activation from one block to the next, so only a (block, B, H) slab is ever
    alive, and the backward pass recomputes each block's hidden units from the stored running activations
    (B, H per block) instead of keeping them: the same sums, at cache speed.
    """
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    logits_t, _ = _nade_sweep(flat, w, c, v, b, u, block)
    return logits_t.t().reshape(lead + (x.shape[-1],))


def _nade_hidden(x_t, w_t, u_t, start):
    """One block's hidden units (k, B, H) from the running activation ``start`` (B, H), and the running activation
    after the block: a_i = a_{i-1} + x_{i-1} W_{:,i-1} (+ U_{:,i-1}), one rank-one update per dimension into a
    slab that stays in cache."""
    k = x_t.shape[0]
    activation = start.new_empty((k,) + start.shape)
    activation[0] = start
    previous = activation[0]
    for j in range(1, k + 1):
        previous = torch.addr(previous, x_t[j - 1], w_t[j - 1], out=activation[j] if j < k else None)
        if u_t is not None:
            previous.add_(u_t[j - 1])
    return activation.sigmoid_(), previous


# One operator to torch (``pprogen::nade_sweep``), with its own backward: autograd, ``make_fx`` (the replayed
# steps) and ``torch.compile`` see a single node instead of the sweep's thousands of small operations.
@torch.library.custom_op("pprogen::nade_sweep", mutates_args=())
def _nade_sweep(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, v: torch.Tensor, b: torch.Tensor,
                u: Optional[torch.Tensor], block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits transposed (D, B) and the running activation at each block's start (blocks, B, H)."""
    rows, dims = x.shape
    x_t, w_t = x.t(), w.t()  # (D, B), (D, H): a block is a slice of rows
    u_t = u.t() if u is not None else None
    starts = x.new_empty((math.ceil(dims / block), rows, c.shape[0]))
    logits = x.new_empty((dims, rows))
    running = c.expand(rows, -1)
    for i, s in enumerate(range(0, dims, block)):
        e = min(s + block, dims)
        starts[i] = running
        hidden, running = _nade_hidden(x_t[s:e], w_t[s:e], None if u_t is None else u_t[s:e], running)
        logits[s:e] = torch.bmm(hidden, v[s:e, :, None])[..., 0] + b[s:e, None]
    return logits, starts


@_nade_sweep.register_fake
def _(x, w, c, v, b, u, block):
    rows, dims = x.shape
    return x.new_empty((dims, rows)), x.new_empty((math.ceil(dims / block), rows, c.shape[0]))


def _nade_setup(ctx, inputs, output):
    x, w, c, v, b, u, block = inputs
    ctx.block = block
    ctx.save_for_backward(x, w, c, v, u, output[1])


def _nade_backward(ctx, grad, _grad_starts):
    """Each block's hidden units recomputed from its stored start, then swept from the last block to the first,
    carrying the sum of d loss / d a over the dimensions already passed (what every earlier input feeds)."""
    x, w, c, v, u, starts = ctx.saved_tensors
    block = ctx.block
    dims = x.shape[1]
    x_t, w_t = x.t(), w.t()
    u_t = u.t() if u is not None else None
    grad_w_t, grad_v = torch.zeros_like(w_t), torch.zeros_like(v)
    grad_u_t = torch.zeros_like(u_t) if u is not None else None
    grad_x_t = torch.zeros_like(x_t) if ctx.needs_input_grad[0] else None
    later = torch.zeros_like(starts[0])  # d loss / d a summed over the dimensions after this block
    for i in reversed(range(len(starts))):
        s = i * block
        e = min(s + block, dims)
        hidden, _ = _nade_hidden(x_t[s:e], w_t[s:e], None if u_t is None else u_t[s:e], starts[i])
        g = grad[s:e, :, None]  # (k, B, 1)
        grad_v[s:e] = torch.bmm(g.transpose(1, 2), hidden)[:, 0]
        grad_a = torch.ops.aten.sigmoid_backward(g * v[s:e, None, :], hidden)  # (k, B, H)
        # after[j]: d loss / d (x_j's contribution), the sum of grad_a over every dimension after j
        after = torch.empty_like(grad_a)
        after[-1] = later
        for j in range(e - s - 2, -1, -1):
            torch.add(after[j + 1], grad_a[j + 1], out=after[j])
        later = after[0] + grad_a[0]
        grad_w_t[s:e] = torch.bmm(x_t[s:e, None, :], after)[:, 0]
        if grad_u_t is not None:
            grad_u_t[s:e] = after.sum(1)
        if grad_x_t is not None:
            grad_x_t[s:e] = torch.bmm(after, w_t[s:e, :, None])[..., 0]
    return (None if grad_x_t is None else grad_x_t.t(), grad_w_t.t(), later.sum(0), grad_v, grad.sum(1),
            None if grad_u_t is None else grad_u_t.t(), None)


_nade_sweep.register_autograd(_nade_backward, setup_context=_nade_setup)


class NADE(AutoregressiveModel):
    """NADE; with ``order_agnostic`` each training step draws a fresh ordering of the dimensions and the hidden
    layer also sees which inputs are observed (weights ``u``: Uria, Murray & Larochelle 2014), and evaluation
    averages p(x) over ``num_orders`` fixed orderings (EoNADE, the first of them the natural one)."""

    def __init__(self, x_dim: int, hidden_dim: int = 500, order_agnostic: bool = False, num_orders: int = 1,
                 seed: int = 0, block: int = 32) -> None:
        super().__init__(x_dim)
        if not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive integer, got {hidden_dim!r}")
        if not isinstance(num_orders, int) or num_orders < 1:
            raise ValueError(f"num_orders must be a positive integer, got {num_orders!r}")
        if num_orders > 1 and not order_agnostic:
            raise ValueError("num_orders > 1 averages orderings a NADE was not trained on; set order_agnostic=True "
                             "(EoNADE) or num_orders=1")
        self.w = nn.Parameter(torch.randn(hidden_dim, x_dim) / math.sqrt(x_dim))
        self.c = nn.Parameter(torch.zeros(hidden_dim))
        self.v = nn.Parameter(torch.randn(x_dim, hidden_dim) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(x_dim))
        self.u = nn.Parameter(torch.zeros(hidden_dim, x_dim)) if order_agnostic else None
        self.order_agnostic = order_agnostic
        self.block = block
        g = torch.Generator().manual_seed(seed)
        orders = [torch.arange(x_dim)] + [torch.randperm(x_dim, generator=g) for _ in range(num_orders - 1)]
        self.order = torch.stack(orders)

    def _net(self, order: torch.Tensor | None) -> Callable:
        def logits(x: torch.Tensor) -> torch.Tensor:
            if order is None:
                return nade_logits(x, self.w, self.c, self.v, self.b, self.u, self.block)
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.shape[0], device=order.device)
            out = nade_logits(x[..., order], self.w[:, order], self.c, self.v[order], self.b[order],
                              None if self.u is None else self.u[:, order], self.block)
            return out[..., inverse]

        return logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(None)(x)

    def distribution(self) -> AutoregressiveBernoulli:
        if self.order_agnostic and self.training:  # a fresh ordering every step, from the training stream
            order = torch.randperm(self.x_shape[0], device=self.order.device)
            return AutoregressiveBernoulli([self._net(order)], order[None])
        nets = [self._net(None if k == 0 else self.order[k]) for k in range(self.order.shape[0])]
        return AutoregressiveBernoulli(nets, self.order)


class MADE(AutoregressiveModel):
    def __init__(
        self, x_dim: int, hidden_dims: Sequence[int] = (500,), num_masks: int = 1, order_agnostic: bool = False,
        seed: int = 0, natural_order: bool = True, direct: bool = False,
    ) -> None:
        super().__init__(x_dim)
        if num_masks < 1 or not hidden_dims or any(h < 1 for h in hidden_dims):
            raise ValueError(f"MADE needs num_masks >= 1 and positive hidden_dims, got {num_masks}, {list(hidden_dims)}")
        sizes = [x_dim, *hidden_dims, x_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        masks, orders = self._draw_masks(x_dim, list(hidden_dims), num_masks, order_agnostic, seed, natural_order)
        for i, layer_masks in enumerate(masks):
            self.register_buffer(f"masks_{i}", layer_masks)
        self.order = orders
        self.direct = None
        if direct:  # x_j -> logit_i for every j before i in the mask's ordering: an FVSBN inside the MADE
            self.direct = nn.Linear(x_dim, x_dim, bias=False)
            nn.init.zeros_(self.direct.weight)
            position = torch.empty_like(orders)
            position.scatter_(1, orders, torch.arange(x_dim).expand_as(orders).contiguous())
            self.register_buffer("masks_direct", (position[:, None, :] < position[:, :, None]).float())
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _draw_masks(x_dim, hidden_dims, num_masks, order_agnostic, seed, natural_order=True):
        g = torch.Generator().manual_seed(seed)
        per_layer = [[] for _ in range(len(hidden_dims) + 1)]
        orders = []
        for k in range(num_masks):
            drawn = (order_agnostic and k > 0) or not natural_order
            order = torch.randperm(x_dim, generator=g) if drawn else torch.arange(x_dim)
            orders.append(order)
            degrees = [torch.empty(x_dim, dtype=torch.long)]
            degrees[0][order] = torch.arange(x_dim)  # m[0]: the position of each input in the ordering
            for width in hidden_dims:
                low = int(degrees[-1].min()) if x_dim > 1 else 0
                degrees.append(torch.randint(low, max(x_dim - 1, low + 1), (width,), generator=g))
            for layer in range(len(hidden_dims)):
                per_layer[layer].append((degrees[layer][None, :] <= degrees[layer + 1][:, None]).float())
            per_layer[-1].append((degrees[-1][None, :] < degrees[0][:, None]).float())
        return [torch.stack(m) for m in per_layer], torch.stack(orders)

    def _net(self, k: int) -> Callable:
        def logits(x: torch.Tensor) -> torch.Tensor:
            h = x
            for i, layer in enumerate(self.layers):
                h = F.linear(h, layer.weight * getattr(self, f"masks_{i}")[k], layer.bias)
                if i < len(self.layers) - 1:
                    h = F.relu(h)
            if self.direct is not None:
                h = h + F.linear(x, self.direct.weight * self.masks_direct[k])
            return h

        return logits

    def logits(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return self._net(int(self.mask_index) if k is None else k)(x)

    def weight_masks(self) -> dict[str, torch.Tensor]:
        """The weight entries some mask lets through, by parameter name (the others never reach an output):
        shipped weights store only these."""
        out = {f"layers.{i}.weight": getattr(self, f"masks_{i}").amax(0).bool() for i in range(len(self.layers))}
        if self.direct is not None:
            out["direct.weight"] = self.masks_direct.amax(0).bool()
        return out

    def distribution(self) -> AutoregressiveBernoulli:
        num_masks = self.order.shape[0]
        if self.training and num_masks > 1:
            k = int(self.mask_index)
            self.mask_index.fill_((k + 1) % num_masks)  # connectivity resampling: the next mask next step
            return AutoregressiveBernoulli([self._net(k)], self.order[k : k + 1])
        return AutoregressiveBernoulli([self._net(k) for k in range(num_masks)], self.order)


class RNNAutoregressive(AutoregressiveModel):
    def __init__(self, x_dim: int, hidden_dim: int = 256, num_layers: int = 1) -> None:
        super().__init__(x_dim)
        self.lstm = nn.LSTM(1, hidden_dim, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_dim, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        seq = x.reshape(-1, x.shape[-1])
        shifted = F.pad(seq[:, :-1], (1, 0)).unsqueeze(-1)  # step i sees x_{<i}
        out, _ = self.lstm(shifted)
        return self.head(out).squeeze(-1).reshape(batch + (x.shape[-1],))


_CARD = dict(kind="autoregressive", default_data="digits_binary")


@register_model(reference="Frey, Graphical Models for Machine Learning and Digital Communication, MIT Press, 1998",
                story="p(x) = prod_i Bernoulli(x_i | sigmoid(b_i + sum_{j<i} W_ij x_j))", **_CARD)
def fvsbn(x_dim: int = 784) -> FVSBN:
    """Fully visible sigmoid belief network."""
    return FVSBN(x_dim)


@register_model(reference="Larochelle & Murray, The Neural Autoregressive Distribution Estimator, AISTATS 2011",
                story="h_i = sigmoid(c + W_{:,<i} x_{<i}); p(x_i = 1 | x_{<i}) = sigmoid(b_i + V_i h_i)", **_CARD)
def nade(x_dim: int = 784, hidden_dim: int = 500, order_agnostic: bool = False, num_orders: int = 1, seed: int = 0,
         block: int = 32) -> NADE:
    """NADE with weights shared across conditionals (O(D H) per example), swept in blocks of dimensions."""
    return NADE(x_dim, hidden_dim, order_agnostic, num_orders, seed, block)


@register_model(reference="Uria, Murray & Larochelle, A Deep and Tractable Density Estimator, ICML 2014",
                story="NADE trained on a fresh random ordering every step (the hidden layer also sees which inputs "
                "are observed); p(x) averaged over num_orders orderings at evaluation", **_CARD)
def eonade(x_dim: int = 784, hidden_dim: int = 500, num_orders: int = 8, seed: int = 0, block: int = 32) -> NADE:
    """Order-agnostic NADE evaluated as an ensemble of orderings (EoNADE)."""
    return NADE(x_dim, hidden_dim, True, num_orders, seed, block)


@register_model(reference="Germain, Gregor, Murray & Larochelle, MADE, ICML 2015, arXiv:1502.03509",
                story="a masked MLP outputs all D conditionals at once; masks keep output i blind to inputs "
                "at or after i in the ordering; several masks/orderings are averaged as an ensemble", **_CARD)
def made(x_dim: int = 784, hidden_dims: Sequence[int] = (500,), num_masks: int = 1, order_agnostic: bool = False,
         seed: int = 0, natural_order: bool = True, direct: bool = False) -> MADE:
    """MADE with ``num_masks`` connectivity patterns (and input orderings when ``order_agnostic``). The first
    mask follows the natural (raster) order of the inputs; ``natural_order=False`` draws its ordering from
    ``seed`` too (on binarized MNIST a random ordering learns much faster than raster order: README).
    ``direct`` adds masked input-to-output weights (each logit a linear function of the earlier inputs, as in an
    FVSBN, plus the hidden layers' output), starting at zero."""
    return MADE(x_dim, tuple(hidden_dims), num_masks, order_agnostic, seed, natural_order, direct)


@register_model(reference="Theis & Bethge, Generative Image Modeling Using Spatial LSTMs, NeurIPS 2015 (sequence form)",
                story="an LSTM reads x_{<i} pixel by pixel; p(x_i = 1 | x_{<i}) = sigmoid(head(h_i))", **_CARD)
def rnn_ar(x_dim: int = 784, hidden_dim: int = 256, num_layers: int = 1) -> RNNAutoregressive:
    """Autoregressive LSTM over the flattened pixel sequence."""
    return RNNAutoregressive(x_dim, hidden_dim, num_layers)
