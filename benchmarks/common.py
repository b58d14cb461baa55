"""Data shared by the benchmarks: binarized MNIST from ../shared/data when present, else random binary images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (timings on CUDA are otherwise launch times)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """``(seconds, fn())``: the seconds ``fn()`` takes with the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - start, value


def binarized_mnist_or_random() -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(train, valid, name)`` as flat ``(N, 784)`` float tensors."""
    folder = Path(__file__).resolve().parents[2] / "shared" / "data"
    if (folder / "binarized_mnist.npz").is_file():
        from pprogen.data import load_binarized_mnist

        ds = load_binarized_mnist(folder, download=False)
        return ds.train.reshape(-1, 784), ds.valid.reshape(-1, 784), "binarized_mnist"
    data = (torch.rand(12000, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
    return data[:10000], data[10000:], "random binary data"
