"""The :class:`Dataset` every loader returns (splits, labels, shape metadata), :class:`DataError`, and the
helpers loaders share: a fixed random split, the binary test and the intensity grid of images.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import KW_ONLY, dataclass, field

import torch


class DataError(ValueError):
    """A data set that cannot be found, read or used."""


@dataclass
class Dataset:
    """Splits as float tensors ``(N, *shape)``; ``labels`` maps a split to its integer labels.

    ``name`` and the three splits may be given by position; every other field is keyword-only:
    ``Dataset("toy", train, None, None, shape=(2,), binary=False)``.
    """

    name: str
    train: torch.Tensor
    valid: torch.Tensor | None
    test: torch.Tensor | None
    _: KW_ONLY
    shape: tuple[int, ...]
    binary: bool
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    num_classes: int | None = None
    image_shape: tuple[int, ...] | None = None
    pairing: str | None = None  # translation sets: "paired" or "unpaired" (A over B in the channels)
    factors: dict[str, torch.Tensor] = field(default_factory=dict)  # split -> (N, F) ground-truth factor indices
    factor_names: tuple[str, ...] | None = None
    # split -> (rows, labels): a labelled sample of a split that has no labels of its own (binarized_mnist)
    labelled_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_shape is None and len(self.shape) == 3:
            self.image_shape = tuple(self.shape)

    @property
    def is_image(self) -> bool:
        """Whether the examples are images (also after ``flat()``: see ``image_shape``)."""
        return self.image_shape is not None

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "valid", "test"):
            raise DataError(f"unknown split {name!r}; choose train, valid or test")
        tensor = getattr(self, name)
        if tensor is None:
            available = [s for s in ("train", "valid", "test") if getattr(self, s) is not None]
            raise DataError(
                f"data set {self.name!r} has no {name!r} split; use --split {available[-1]} "
                f"(available: {', '.join(available)})"
            )
        return tensor

    def flat(self) -> "Dataset":
        """The same data with each example flattened to a vector."""
        def f(t):
            return None if t is None else t.reshape(t.shape[0], -1)

        return dataclasses.replace(
            self, train=f(self.train), valid=f(self.valid), test=f(self.test), shape=(self.dim,),
            labels=dict(self.labels), factors=dict(self.factors), labelled_rows=dict(self.labelled_rows),
        )

    def subset(self, limit: int | None) -> "Dataset":
        """At most ``limit`` examples per split (for smoke tests and quick runs)."""
        if limit is None:
            return self

        def f(t):
            return None if t is None else t[:limit]

        return dataclasses.replace(
            self, train=f(self.train), valid=f(self.valid), test=f(self.test),
            labels={k: v[:limit] for k, v in self.labels.items()},
            factors={k: v[:limit] for k, v in self.factors.items()},
            labelled_rows={k: (rows[rows < limit], y[rows < limit]) for k, (rows, y) in self.labelled_rows.items()},
        )


def split_arrays(x: torch.Tensor, y: torch.Tensor | None, fractions=(0.8, 0.1), seed: int = 0):
    """A fixed random train/valid/test split of one array (and its labels, by split)."""
    n = x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = max(1, int(round(fractions[0] * n)))
    n_valid = int(round(fractions[1] * n))
    parts = order[:n_train], order[n_train : n_train + n_valid], order[n_train + n_valid :]
    xs = [x[p] if len(p) else None for p in parts]
    labels = {}
    if y is not None:
        for key, p in zip(("train", "valid", "test"), parts):
            if len(p):
                labels[key] = y[p]
    return xs, labels


def intensity_levels(x: torch.Tensor) -> int | None:
    """The number of evenly spaced intensity levels of images in [0, 1] (17 for the 8x8 digits, 256 for
    8-bit images, 2 for binary ones), or None when the values are not on such a grid."""
    values = torch.unique(x.detach().float().flatten()).cpu()
    if values.numel() < 2 or values[0] < 0 or values[-1] > 1:
        return None
    gap = (values[1:] - values[:-1]).min().item()
    levels = int(round(1 / gap)) + 1
    scaled = values * (levels - 1)
    return levels if bool(((scaled - scaled.round()).abs() < 1e-3).all()) else None


def check_finite(dataset: Dataset, missing_ok: bool = False) -> None:
    """Refuse, in one line, a data set with Inf, or with NaN unless ``missing_ok`` (NaN is a missing value, which
    only models that sum missing values out take). The readers keep NaN and Inf as they are; a caller that
    cannot use them asks here."""
    for split in ("train", "valid", "test"):
        tensor = getattr(dataset, split)
        if tensor is None or not tensor.is_floating_point():
            continue
        bad = torch.isinf(tensor) if missing_ok else ~torch.isfinite(tensor)
        if bool(bad.any()):
            rows = bad.reshape(bad.shape[0], -1).any(1).nonzero()[:, 0]
            what = "Inf" if missing_ok else "NaN or Inf"
            raise DataError(
                f"data set {dataset.name!r} holds {what} in {len(rows)} example(s) of its {split} split (first at "
                f"row {int(rows[0])}); clean or drop them"
                + ("" if missing_ok else " (only models that sum out missing values, like bayesnet, take NaN)")
            )


def is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def from_arrays(name: str, x: torch.Tensor, y: torch.Tensor | None = None, seed: int = 0) -> Dataset:
    """One array (and its labels) split 80/10/10 at random."""
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"data set {name!r} is empty: it needs at least one example along its first dimension")
    x = x.float()
    (train, valid, test), labels = split_arrays(x, y, seed=seed)
    return Dataset(name, train, valid, test, shape=tuple(x.shape[1:]), binary=is_binary(x), labels=labels,
                   num_classes=int(y.max()) + 1 if y is not None else None)
