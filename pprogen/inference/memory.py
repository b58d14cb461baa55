"""How many bytes a piece of code holds at its peak, measured the same way on every device.

:class:`PeakBytes` watches every tensor made by a torch operation while it is active and counts its
storage until the tensor that made it is freed; its ``peak`` is the most bytes held at once. Views and
in-place results make no storage of their own and are not counted (a view of a large data set is not the
data set's size). It serves
:func:`pprogen.inference.log_marginal`, which runs one small chunk under it and sizes its chunks so that
their tensors stay under a byte budget. Parameters and inputs made before it is entered are not counted.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakBytes(TorchDispatchMode):
    """The most bytes held at once by tensors made while it is active (each storage counted once, freed
    when the tensor that made it is)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place result: its storage was made (and counted, or not) before
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.now += self.live[key]
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(t, self._free, key)
        return out
