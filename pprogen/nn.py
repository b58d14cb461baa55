"""Shared layers: the MLP and the convolutional encoder/decoder used by the zoo and by amortized guides."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "softplus": nn.Softplus, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """``in_dim -> hidden_dims... -> out_dim`` with an activation after every hidden layer."""

    def __init__(
        self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, act: str = "relu"
    ) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), activation(act)]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)


class ConvEncoder(nn.Module):
    """Images ``(C, H, W)`` -> vector: stride-2 convolutions, then an MLP head."""

    def __init__(
        self,
        shape: Sequence[int],
        out_dim: int,
        channels: Sequence[int] = (32, 64),
        hidden_dims: Sequence[int] = (256,),
        act: str = "relu",
    ) -> None:
        super().__init__()
        c, h, w = shape
        layers: list[nn.Module] = []
        for width in channels:
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), activation(act)]
            c, h, w = width, math.ceil(h / 2), math.ceil(w / 2)
        self.conv = nn.Sequential(*layers, nn.Flatten(-3))
        self.head = MLP(c * h * w, hidden_dims, out_dim, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-3]
        out = self.conv(x.reshape((-1,) + x.shape[-3:]))
        return self.head(out).reshape(batch + (-1,))


class ConvDecoder(nn.Module):
    """Vector -> images ``(C, H, W)``: an MLP to a small feature map, then stride-2 transposed convolutions."""

    def __init__(
        self,
        in_dim: int,
        shape: Sequence[int],
        channels: Sequence[int] = (64, 32),
        hidden_dims: Sequence[int] = (256,),
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        c, h, w = shape
        scale = 2 ** len(channels)
        self.start = (channels[0], math.ceil(h / scale), math.ceil(w / scale))
        self.head = nn.Sequential(
            MLP(in_dim, hidden_dims, math.prod(self.start), act), activation(act)
        )
        layers: list[nn.Module] = []
        widths = list(channels) + [c]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(channels) - 1:
                layers.append(activation(act))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        out = self.head(z).reshape((-1,) + self.start)
        out = self.deconv(out)[..., : self.shape[1], : self.shape[2]]
        return out.reshape(batch + self.shape)



class MaskedMLP(nn.Module):
    """A MADE conditioner for flows: ``(..., D) -> (..., P * D)`` where output ``p * D + i`` depends only on
    the inputs before ``i`` in ``order`` (a permutation of ``range(D)``; the identity by default).

    Hidden units get degrees ``1 .. D-1`` in turn; masks are buffers and multiply the weights once per
    call. The last layer starts small, so a flow built from these starts close to the identity.
    """

    def __init__(self, dim: int, hidden_dims: Sequence[int], params_per_dim: int = 2,
                 order: Sequence[int] | None = None, act: str = "relu") -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        order = torch.arange(dim) if order is None else torch.as_tensor(list(order))
        if sorted(order.tolist()) != list(range(dim)):
            raise ValueError(f"order must be a permutation of range({dim}), got {order.tolist()}")
        degree_in = torch.empty(dim, dtype=torch.long)
        degree_in[order] = torch.arange(1, dim + 1)
        degrees = [degree_in]
        for width in hidden_dims:
            degrees.append(torch.arange(width) % max(1, dim - 1) + 1)
        degree_out = degree_in.repeat(params_per_dim)
        self.layers = nn.ModuleList()
        widths = [dim, *hidden_dims, dim * params_per_dim]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            self.layers.append(nn.Linear(a, b))
            if i < len(hidden_dims):
                mask = degrees[i + 1][:, None] >= degrees[i][None, :]
            else:
                mask = degree_out[:, None] > degrees[i][None, :]
            self.register_buffer(f"mask_{i}", mask.float())
        with torch.no_grad():
            self.layers[-1].weight.mul_(1e-2)
            self.layers[-1].bias.zero_()
        self.act = activation(act)
        self.register_buffer("order", order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = F.linear(x, layer.weight * getattr(self, f"mask_{i}"), layer.bias)
            if i < last:
                x = self.act(x)
        return x


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters take no gradients (to hold a moving average of its weights)."""
    average = copy.deepcopy(module)
    for p in average.parameters():
        p.requires_grad_(False)
    return average


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018) on every linear and convolutional layer of ``module``
    that does not have it yet (``torch.nn.utils.parametrizations.spectral_norm``); returns ``module``."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm

    for layer in list(module.modules()):
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and not parametrize.is_parametrized(layer, "weight"):
            spectral_norm(layer)
    return module


def halvings(size: int, smallest: int = 4, most: int = 4) -> int:
    """How many times ``size`` halves exactly while staying at least ``smallest`` (at most ``most``):
    8 -> 1 (8, 4), 28 -> 2 (28, 14, 7), 32 -> 3 (32, 16, 8, 4)."""
    count = 0
    while size % 2 == 0 and size // 2 >= smallest and count < most:
        size //= 2
        count += 1
    return count


def recording() -> bool:
    """Whether the running code is being recorded as a graph of tensor operations (``make_fx``: the replayed
    training steps of :mod:`pprogen.inference.replay`), where Python must not read tensor values."""
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return get_proxy_mode() is not None


def value_check(ok: torch.Tensor, message: Callable[[], str]) -> None:
    """Raise ``ValueError(message())`` unless the boolean tensor ``ok`` is all true.

    While a step is being recorded the check becomes an operation of the graph (``torch._assert_async``), so
    a replayed step still refuses the values it refuses: the replay then runs the program again, which raises
    this error with its message. (On a GPU the recorded assertion is a device-side assert: loud, but it ends
    the process's CUDA context.)"""
    if recording():
        torch._assert_async(ok.all())
    elif not bool(ok.all()):
        raise ValueError(message())


def check_labels(y: torch.Tensor | None, num_classes: int, n: int | None, model: str = "cvae") -> torch.Tensor:
    """Integer labels 0..num_classes-1, one per example (``n`` of them, when given); a one-line error otherwise.
    Shared by the conditional models (cvae, cgan)."""
    if y is None:
        raise ValueError(f"{model} is conditioned on labels: pass y=labels (one integer per example); "
                         "pprogen train takes them from a labelled data set such as digits or mnist")
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(y)  # a tensor stays where it is
    if y.is_floating_point():
        value_check(y == y.round(), lambda: f"{model} labels must be integers 0..{num_classes - 1}, got non-integer values")
        y = y.long()
    if n is not None and (y.dim() != 1 or y.shape[0] != n):
        raise ValueError(f"{model} needs one label per example: {n} examples, labels of shape {tuple(y.shape)}")
    if y.numel():
        value_check((y >= 0) & (y < num_classes), lambda: _label_range_message(y, num_classes))
    return y


def _label_range_message(y: torch.Tensor, num_classes: int) -> str:
    low, high = int(y.min()), int(y.max())
    bad = high if high >= num_classes else low
    return (f"label {bad} is out of range for num_classes={num_classes}: labels must lie in [0, {num_classes}), "
            f"got values in [{low}, {high}] (build the model with the data's number of classes: --set num_classes=K)")


def with_onehot(h: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``h`` with the one-hot code of ``y`` appended along the last dimension."""
    # compared with 0..K-1 rather than F.one_hot, which reads the labels' range in Python (check_labels checks it)
    onehot = (y.long().unsqueeze(-1) == torch.arange(num_classes, device=y.device)).to(h.dtype)
    return torch.cat([h, onehot.expand(h.shape[:-1] + (num_classes,))], -1)


@dataclass
class CriticPair:
    """One critic of an adversarial model with the real and fake inputs it compares (same shape) and its
    keyword arguments; the adversarial trainer and the GAN zoo both speak it."""

    critic: Callable[..., torch.Tensor]
    real: torch.Tensor
    fake: torch.Tensor
    condition: dict[str, torch.Tensor] = field(default_factory=dict)
    name: str = "d"


class EmptyGuide(PyroModule):
    """The guide of a fully observed model (or one whose latents are all enumerated): nothing to propose."""

    def forward(self, *args, **kwargs) -> None:
        return None


def normal_head(out: torch.Tensor, dim: int, min_scale: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """A network output ``(..., 2 * dim)`` (or longer: the rest is left out) read as a diagonal Normal's
    ``loc`` and ``scale = softplus(raw) + min_scale``: the head of every amortized Normal in pprogen."""
    return out[..., :dim], F.softplus(out[..., dim: 2 * dim]) + min_scale
