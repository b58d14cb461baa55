"""A user's data, read from a path: a ``.npy``, ``.npz``, ``.pt`` or ``.csv`` file (empty cells read as NaN, a
missing value) or a folder of images (one subfolder per label). A file with ``train`` / ``valid`` / ``test``
arrays (and ``train_labels`` ...) keeps its splits; any other holds ``x`` (or ``data``, ``arr_0``) and optional
labels ``y`` (or ``labels``) and is split 80/10/10 at random.

Every file is checked before anything is allocated for it (:mod:`pprogen.data.readers`): only regular files are
read, arrays are read without pickle, and the data read from one file or folder is capped at 4 GiB (counting
each value at least as a float32), or at ``$PPROGEN_MAX_DATA_BYTES`` bytes (a K, M, G or T suffix counts in
powers of 1024: ``PPROGEN_MAX_DATA_BYTES=16G``). Values must be real numbers (bool and integers read as
floats); labels one integer in 0 .. ``MAX_CLASSES - 1`` per example. NaN is kept (a missing value, which models
that sum it out use): :func:`pprogen.data.check_finite` tells a caller whether a data set holds NaN or Inf.
Anything else is one line of :class:`DataError` naming the file, the problem and the fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import torch

from pprogen.data.dataset import Dataset, DataError, from_arrays, is_binary
from pprogen.data.readers import (
    Budget,
    check_regular,
    first_line,
    read_csv,
    read_images,
    read_npy,
    read_npz,
    read_pt,
    to_tensor,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm")
ARRAY_SUFFIXES = (".npy", ".npz", ".pt")
SPLITS = ("train", "valid", "test")
MAX_CLASSES = 100_000  # labels beyond are a mistake (an id, not a class), and would size a model's class layers


def load_file(path: str | os.PathLike) -> Dataset:
    """A user's ``.npy``, ``.npz``, ``.pt``, ``.csv`` or image folder, split 80/10/10 unless it has splits."""
    path = Path(path)
    if stat.S_ISDIR(check_regular(path, folder_ok=True).st_mode):
        return _load_image_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return from_arrays(path.stem, _guarded(path, lambda: read_csv(path, Budget(path))))
    if suffix in ARRAY_SUFFIXES:
        return _from_mapping(path.stem, read_arrays(path), path)
    raise DataError(f"unsupported data file {path}; use .npy, .npz, .pt, .csv or a folder of images")


def read_arrays(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The named arrays of a ``.npy`` (as ``x``), ``.npz`` or ``.pt`` file (a tensor as ``x``, or a dict of named
    tensors), read without pickle and checked before they are allocated; a one-line :class:`DataError` for
    anything else, a damaged file, or values that are not real numbers."""
    path = Path(path)
    check_regular(path)
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise DataError(f"unsupported array file {path}; use .npy, .npz or .pt")
    budget = Budget(path)
    if suffix == ".pt":
        return _guarded(path, lambda: read_pt(path, budget))
    arrays = _guarded(path, lambda: read_npz(path, budget) if suffix == ".npz" else {"x": read_npy(path, budget)})
    return {name: to_tensor(values) for name, values in arrays.items()}


def _guarded(path: Path, read):
    """``read()``, with any failure but a DataError (a damaged file the checks let through) made one line."""
    try:
        return read()
    except DataError:
        raise
    except Exception as err:  # numpy, zipfile and torch raise many kinds for a damaged file
        raise DataError(f"cannot read data file {path} ({first_line(err)}); check that it is whole, or save it "
                        "again") from None


def _from_mapping(name: str, arrays: dict[str, torch.Tensor], path: Path) -> Dataset:
    if "train" in arrays:
        splits = {s: arrays[s] for s in SPLITS if s in arrays}
        for split, tensor in splits.items():
            if tensor.ndim == 0 or tensor.shape[0] == 0:
                raise DataError(f"data file {path}: split {split!r} holds no examples (shape {tuple(tensor.shape)}); "
                                "give it examples or leave it out")
        shapes = {s: tuple(t.shape[1:]) for s, t in splits.items()}
        if len(set(shapes.values())) > 1:
            shown = ", ".join(f"{s} {shape}" for s, shape in shapes.items())
            raise DataError(f"data file {path}: the splits hold examples of different shapes ({shown}); give every "
                            "split examples of one shape")
        orphans = [f"{s}_labels" for s in SPLITS if f"{s}_labels" in arrays and s not in splits]
        if orphans:
            raise DataError(f"data file {path} holds {orphans[0]!r} but no {orphans[0][:-7]!r} split; give the split "
                            "or leave its labels out")
        labels = {s: _labels(arrays[f"{s}_labels"], splits[s].shape[0], f"{s}_labels", path)
                  for s in splits if f"{s}_labels" in arrays}
        floats = {s: t.float() for s, t in splits.items()}
        return Dataset(name, floats["train"], floats.get("valid"), floats.get("test"), shape=shapes["train"],
                       binary=all(is_binary(t) for t in floats.values()), labels=labels,
                       num_classes=max(int(y.max()) for y in labels.values()) + 1 if labels else None)
    key = next((k for k in ("x", "data", "arr_0") if k in arrays), None)
    if key is None:
        raise DataError(f"{path} holds {sorted(arrays)}; name the array 'x' (or 'train'/'valid'/'test')")
    x = arrays[key]
    label_key = next((k for k in ("y", "labels") if k in arrays), None)
    y = None
    if label_key is not None and x.ndim > 0:
        y = _labels(arrays[label_key], x.shape[0], label_key, path)
    return from_arrays(name, x, y)


def _labels(y: torch.Tensor, num_examples: int, key: str, path: Path) -> torch.Tensor:
    """One class number in 0 .. MAX_CLASSES - 1 per example, as integers; one line of DataError otherwise."""
    where = f"data file {path}: labels {key!r}"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where} have shape {tuple(y.shape)}; give one integer label per example, shape "
                        f"({num_examples},)")
    if y.shape[0] != num_examples:
        raise DataError(f"{where} hold {y.shape[0]} labels for {num_examples} examples; give one label per example")
    if y.dtype.is_floating_point:
        bad = ~torch.isfinite(y) | (y != y.round())
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise DataError(f"{where} hold non-integer values (first {float(y[i])} at index {i}); labels are class "
                            "numbers 0, 1, ..., K-1")
    if y.numel():
        low, high = int(y.min().item()), int(y.max().item())
        if low < 0:
            raise DataError(f"{where} hold negative label {low} (at index {int(y.argmin())}); number the classes 0, "
                            "1, ..., K-1 (numpy.unique(y, return_inverse=True) does)")
        if high >= MAX_CLASSES:
            raise DataError(f"{where} hold label {high} (at index {int(y.argmax())}), past the {MAX_CLASSES} classes "
                            "a data set may have; number the classes 0, 1, ..., K-1 (numpy.unique(y, "
                            "return_inverse=True) does)")
    return y.long()


def _load_image_folder(path: Path) -> Dataset:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"image folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    classes = sorted({p.parent.name for p in files if p.parent != path})
    arrays = read_images(files, Budget(path))
    labels = [classes.index(f.parent.name) if f.parent != path else 0 for f in files]
    if len({a.shape for a in arrays}) != 1:
        raise DataError(f"images in {path} differ in size; resize them to one size first")
    if len({a.dtype for a in arrays}) != 1:
        raise DataError(f"images in {path} differ in mode ({', '.join(sorted({str(a.dtype) for a in arrays}))} "
                        "pixels); convert them to one mode (all greyscale, or all RGB) first")
    scale = {np.bool_: 1.0, np.uint16: 65535.0}.get(arrays[0].dtype.type, 255.0)
    x = to_tensor(np.stack(arrays)).float() / scale
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)
    y = torch.tensor(labels) if classes else None
    return from_arrays(path.name, x, y)
