"""Image sets read from files or downloaded: the static binarized MNIST of Larochelle & Murray (``.amat`` files or
a ``binarized_mnist.npz`` of packed bits), with the digit labels read by eye for a sample of its rows, and
MNIST, Fashion-MNIST and CIFAR-10 through torchvision (the last 10 000 training images are the validation
split). Files are looked for in ``data_dir``, then ``$PPROGEN_DATA``.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import numpy as np
import torch

from pprogen.data.dataset import Dataset, DataError
from pprogen.data.files import read_arrays
from pprogen.data.registry import register_dataset

DATA_ENV = "PPROGEN_DATA"
BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"


def data_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    """The folders to look for data files in: ``data_dir``, then ``$PPROGEN_DATA``."""
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]))
    return dirs


def _read_amat(path: Path) -> torch.Tensor:
    try:
        array = np.loadtxt(path, dtype=np.float32)
    except ValueError as err:
        raise DataError(f"{path} is not a valid .amat file ({err})") from None
    return torch.from_numpy(array.reshape(-1, 1, 28, 28))


def _read_packed_npz(path: Path) -> dict[str, torch.Tensor]:
    """The splits of a ``binarized_mnist.npz`` (packed bits, or one value a pixel), read by the checked reader of
    a user's ``.npz`` (:mod:`pprogen.data.readers`)."""
    out = {}
    for split, values in read_arrays(path).items():
        if split not in ("train", "valid", "test"):
            continue
        packed = values.dtype == torch.uint8 and values.ndim == 2 and values.shape[1] == 98
        bits = torch.from_numpy(np.unpackbits(values.numpy(), axis=1)[:, :784]) if packed else values
        if bits.ndim == 0 or bits.numel() % 784:
            raise DataError(f"{path}: split {split!r} has shape {tuple(values.shape)}, not 28x28 binary images "
                            "(784 values, or 98 bytes of packed bits, a row)")
        out[split] = bits.float().reshape(-1, 1, 28, 28)
    return out


def load_binarized_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Binarized MNIST read from the folders of :func:`data_dirs`, else downloaded into the first of them (or
    ``~/.cache/pprogen``) when ``download``; a :class:`DataError` naming the files to put there otherwise."""
    dirs = data_dirs(data_dir)
    splits: dict[str, torch.Tensor] = {}
    for folder in dirs:
        npz = folder / "binarized_mnist.npz"
        for split in ("train", "valid", "test"):
            amat = folder / f"binarized_mnist_{split}.amat"
            if split not in splits and amat.is_file():
                splits[split] = _read_amat(amat)
        if npz.is_file():
            for split, tensor in _read_packed_npz(npz).items():
                splits.setdefault(split, tensor)
    failure = None
    if "train" not in splits and download:
        target = dirs[0] if dirs else Path.home() / ".cache" / "pprogen"
        try:
            target.mkdir(parents=True, exist_ok=True)
            for split in ("train", "valid", "test"):
                dest = target / f"binarized_mnist_{split}.amat"
                with urllib.request.urlopen(BINARIZED_MNIST_URL.format(split=split), timeout=20) as resp:
                    payload = resp.read()
                tmp = dest.with_suffix(".part")
                tmp.write_bytes(payload)
                os.replace(tmp, dest)
                splits[split] = _read_amat(dest)
        except OSError as err:
            splits, failure = {}, f"into {target} failed: {' '.join(str(err).split())}"
    if "train" not in splits:
        raise DataError(_binarized_mnist_missing(dirs, failure))
    return Dataset("binarized_mnist", splits["train"], splits.get("valid"), splits.get("test"), shape=(1, 28, 28),
                   binary=True, labelled_rows=hand_labels(splits))


def _binarized_mnist_missing(dirs: list[Path], failure: str | None) -> str:
    """The one line saying which files were looked for where, the address they download from, and the fix."""
    where = f"in {', '.join(map(str, dirs))}" if dirs else f"(no folder given: --data-dir or ${DATA_ENV})"
    url = BINARIZED_MNIST_URL.format(split="{train,valid,test}")
    fetched = (f"downloading {url} {failure}" if failure is not None
               else f"the download from {url} is off (download=False)")
    allow = "or run again where that address can be reached" if failure is not None else "or load with download=True"
    return (f"binarized_mnist not found: looked for binarized_mnist_{{train,valid,test}}.amat or binarized_mnist.npz "
            f"{where}, and {fetched}; put binarized_mnist.npz (or the three .amat files) in a folder DIR and pass "
            f"--data-dir DIR (or set {DATA_ENV}=DIR), {allow}")


HAND_LABELS = Path(__file__).parents[1] / "labels" / "binarized_mnist.json"


def hand_labels(splits: dict[str, torch.Tensor], path: Path = HAND_LABELS) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The digit labels read by eye for a sample of binarized MNIST's rows (``labels/binarized_mnist.json``), by
    split, as (rows, labels); a split whose labelled rows are not the images the labels were read from (another
    file under the same name) gets none, so no label lands on the wrong image."""
    import hashlib
    import json

    out = {}
    for split, entry in json.loads(path.read_text())["splits"].items():
        x = splits.get(split)
        rows = torch.tensor(entry["index"], dtype=torch.long)
        if x is None or x.shape[0] <= int(rows.max()):
            continue
        pixels = (x[rows].reshape(len(rows), -1) > 0.5).to(torch.uint8).numpy()
        if hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest() == entry["sha256"]:
            out[split] = (rows, torch.tensor(entry["label"], dtype=torch.long))
    return out


_TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def load_torchvision(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """``mnist``, ``fashion_mnist`` or ``cifar10`` through torchvision, under the first of :func:`data_dirs`
    (else ``~/.cache/pprogen``); the last 10 000 training images (a sixth of a small set) are the valid split."""
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[name])
    root = (data_dirs(data_dir) or [Path.home() / ".cache" / "pprogen"])[0]
    try:
        train_set = cls(str(root), train=True, download=download)
        test_set = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as err:
        raise DataError(
            f"{name} is not in {root} and could not be downloaded ({str(err).splitlines()[0]}); put "
            f"torchvision's {_TORCHVISION[name]} files under {root}/ (as torchvision.datasets."
            f"{_TORCHVISION[name]}(root, download=True) leaves them) and pass --data-dir {root}"
        ) from None

    def to_tensor(ds):
        x = torch.as_tensor(np.asarray(ds.data), dtype=torch.float32) / 255.0
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)
        return x, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)

    x, y = to_tensor(train_set)
    x_test, y_test = to_tensor(test_set)
    n_valid = 10000 if x.shape[0] > 20000 else x.shape[0] // 6
    labels = {"train": y[:-n_valid], "valid": y[-n_valid:], "test": y_test}
    return Dataset(name, x[:-n_valid], x[-n_valid:], x_test, shape=tuple(x.shape[1:]), binary=False, labels=labels,
                   num_classes=10)


# ---------------------------------------------------------------- registered data sets


@register_dataset("binarized_mnist", kind="image", shape=(1, 28, 28), binary=True, offline=False,
                  reference="H. Larochelle, I. Murray, The Neural Autoregressive Distribution Estimator, AISTATS 2011")
def binarized_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """The static 50k/10k/10k binarized MNIST of the likelihood tables (no labels; ``labelled_rows`` holds a
    hand-labelled sample), read from ``binarized_mnist_{train,valid,test}.amat`` or ``binarized_mnist.npz``."""
    return load_binarized_mnist(data_dir, download)


@register_dataset("mnist", kind="image", shape=(1, 28, 28), binary=False, num_classes=10, offline=False,
                  reference="Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, Gradient-Based Learning Applied to "
                            "Document Recognition, 1998")
def mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """MNIST's 28x28 grey digits through torchvision, 50k/10k/10k."""
    return load_torchvision("mnist", data_dir, download)


@register_dataset("fashion_mnist", kind="image", shape=(1, 28, 28), binary=False, num_classes=10, offline=False,
                  reference="H. Xiao, K. Rasul, R. Vollgraf, Fashion-MNIST, 2017, arXiv:1708.07747")
def fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST's 28x28 grey pictures of clothes through torchvision, 50k/10k/10k."""
    return load_torchvision("fashion_mnist", data_dir, download)


@register_dataset("cifar10", kind="image", shape=(3, 32, 32), binary=False, num_classes=10, offline=False,
                  reference="A. Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009")
def cifar10(data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """CIFAR-10's 32x32 colour images through torchvision, 40k/10k/10k."""
    return load_torchvision("cifar10", data_dir, download)
