"""Two speed options shared by ``fit`` and the adversarial trainer: bf16 autocast and ``torch.compile``.

``autocast="bf16"`` runs each training step's forward pass (the loss) under ``torch.autocast`` with
bfloat16: matrix products and convolutions take bf16 inputs, the parameters, their gradients and the
optimizer state stay float32, and no loss scaling is needed (bf16 has float32's exponent range). Evaluation
(validation loss, log p(x), importance sampling) always runs in float32, so reported likelihoods do not
depend on the option. A loss that turns non-finite under it stops training like any other (the
parameters stay at the last good step).

``compile=True`` compiles the model's and guide's *networks* with ``torch.compile``: the outermost
submodules holding parameters that are plain torch modules (encoders, decoders, hypernetworks of flow
layers, PixelCNN blocks, generator and discriminator), never the Pyro program itself, whose effect handlers
would break the graph at every sample site. Modules are compiled in place (``nn.Module.compile``), so
parameter names, checkpoints and weights files are unchanged. Whether it pays depends on the model and the
device: ``benchmarks/bench_accel.py`` measures it (README, "Speed options").
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.distributions import Distribution, Transform
from pyro.nn import PyroModule
from torch import nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16}
_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def check_autocast(name: str | None, device: torch.device) -> None:
    """One-line errors for an unknown autocast name, or bf16 on a GPU without it."""
    if name is None:
        return
    if name not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown autocast {name!r}; use 'bf16' (bfloat16 mixed precision), or leave autocast out to train in float32")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16 support; "
                         "drop autocast (--autocast) to train in float32")


def autocast(name: str | None, device: torch.device):
    """``torch.autocast`` for ``name`` on ``device``'s type, or a context that does nothing for ``None``."""
    if name is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[name])


def _is_network(module: nn.Module) -> bool:
    """A plain torch module: called through ``forward``, and no Pyro program, transform or distribution."""
    return not isinstance(module, (PyroModule, Transform, Distribution, *_CONTAINERS))


def networks(*parts: Any) -> dict[str, nn.Module]:
    """The outermost plain-torch submodules with parameters of ``parts`` (model, guide), by dotted name.

    A Pyro module, a flow transform (called through ``_call``, not ``forward``) or a container is not
    compiled itself; the search goes on inside it. Each module appears once even when shared.
    """
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if id(child) in seen or not any(True for _ in child.parameters()):
                continue
            seen.add(id(child))
            path = f"{prefix}{name}"
            if _is_network(child):
                found[path] = child
            else:
                visit(child, path + ".")

    for i, part in enumerate(parts):
        if isinstance(part, nn.Module):
            visit(part, f"{i}.")
    return found


def compile_networks(*parts: Any, **options: Any) -> list[str]:
    """Compile the :func:`networks` of ``parts`` in place (``nn.Module.compile(**options)``); returns their
    names. Compilation happens lazily, on each network's first call."""
    found = networks(*parts)
    for module in found.values():
        module.compile(**options)
    return list(found)
