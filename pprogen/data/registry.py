"""The data-set registry: ``@register_dataset(name, ...)`` on one loader per data set, with its card.

``load_dataset(name)`` calls the registered loader of ``name``, and reads any other name that looks like a path
as a user's file or folder (:func:`pprogen.data.files.load_file`). The card holds what is known of a data set
without loading it (its kind, example shape, whether it is binary, its classes, whether it needs files or a
download, its reference). As in the model registry, registering a name twice raises.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar, overload

from pprogen.data.dataset import Dataset
from pprogen.data.files import load_file
from pprogen.errors import unknown_name_error

DATA_KINDS = ("image", "translation", "points", "discrete")
LOADER_OPTIONS = ("data_dir", "download")  # what load_dataset passes on to a loader that takes it


@dataclass(frozen=True)
class DatasetCard:
    """What is known of a registered data set without loading it; None where the card does not say."""

    name: str
    loader: Callable[..., Dataset]
    description: str
    kind: str | None = None  # one of DATA_KINDS
    shape: tuple[int, ...] | None = None  # one example's shape
    binary: bool | None = None  # Dataset.binary
    num_classes: int | None = None  # Dataset.num_classes
    offline: bool = True  # loads with no file of the user's and no download
    reference: str = ""
    options: tuple[str, ...] = field(default=(), repr=False)  # the LOADER_OPTIONS the loader takes

    def describe(self) -> str:
        def show(value: Any) -> str:
            return "-" if value is None else str(value)

        return "\n".join([
            f"{self.name}  ({show(self.kind)})",
            "",
            self.description.strip(),
            "",
            f"reference:    {self.reference or '-'}",
            f"shape:        {show(self.shape)}",
            f"binary:       {show(self.binary)}",
            f"classes:      {show(self.num_classes)}",
            "source:       " + ("built here, no download" if self.offline else "files in --data-dir or a download"),
        ])


_REGISTRY: dict[str, DatasetCard] = {}


_Loader = TypeVar("_Loader", bound=Callable[..., Dataset])


@overload
def register_dataset(
    name: _Loader, *, description: str | None = ..., kind: str | None = ..., shape: tuple[int, ...] | None = ...,
    binary: bool | None = ..., num_classes: int | None = ..., offline: bool = ..., reference: str = ...,
) -> _Loader: ...


@overload
def register_dataset(
    name: str | None = ..., *, description: str | None = ..., kind: str | None = ...,
    shape: tuple[int, ...] | None = ..., binary: bool | None = ..., num_classes: int | None = ...,
    offline: bool = ..., reference: str = ...,
) -> Callable[[_Loader], _Loader]: ...


def register_dataset(
    name: str | _Loader | None = None,
    *,
    description: str | None = None,
    kind: str | None = None,
    shape: tuple[int, ...] | None = None,
    binary: bool | None = None,
    num_classes: int | None = None,
    offline: bool = True,
    reference: str = "",
) -> _Loader | Callable[[_Loader], _Loader]:
    """Register a loader under ``name`` (the function's name when used bare, ``@register_dataset``).

    The loader returns a :class:`Dataset`; it may take ``data_dir`` and ``download``, which
    :func:`load_dataset` passes on, and nothing else without a default. ``description`` defaults to the
    loader's docstring. A duplicate name raises ``ValueError``.
    """
    if callable(name):
        return register_dataset(description=description, kind=kind, shape=shape, binary=binary,
                                num_classes=num_classes, offline=offline, reference=reference)(name)

    def decorate(loader: _Loader) -> _Loader:
        key = name or loader.__name__
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", key):
            raise ValueError(f"data set name {key!r} is not allowed; use letters, digits, '_' or '-' "
                             "(a name with a dot or a slash reads as a file path)")
        if key in _REGISTRY:
            raise ValueError(f"a data set named {key!r} is already registered; pass another name, or "
                             "unregister_dataset(name) first to replace it")
        if kind is not None and kind not in DATA_KINDS:
            raise ValueError(f"unknown data set kind {kind!r}; choose one of {', '.join(DATA_KINDS)}")
        params = inspect.signature(loader).parameters.values()
        required = [p.name for p in params if p.name not in LOADER_OPTIONS and p.default is inspect.Parameter.empty
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if required:
            raise TypeError(f"the loader of data set {key!r} needs {', '.join(map(repr, required))}; a loader may "
                            f"only require {' and '.join(LOADER_OPTIONS)} (give the others defaults)")
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
        _REGISTRY[key] = DatasetCard(
            name=key,
            loader=loader,
            description=description if description is not None else inspect.getdoc(loader) or "",
            kind=kind,
            shape=tuple(shape) if shape is not None else None,
            binary=binary,
            num_classes=num_classes,
            offline=offline,
            reference=reference,
            options=tuple(o for o in LOADER_OPTIONS if takes_any or o in {p.name for p in params}),
        )
        return loader

    return decorate


def unregister_dataset(name: str) -> DatasetCard:
    """Remove ``name`` from the registry (to register another loader under it); returns its card."""
    dataset_info(name)
    return _REGISTRY.pop(name)


def dataset_info(name: str) -> DatasetCard:
    """The card of the registered data set ``name``."""
    if name not in _REGISTRY:
        raise unknown_name_error("data set", name, _REGISTRY)
    return _REGISTRY[name]


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered data-set names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


class RegisteredNames(Sequence):
    """The registered names in the order they were registered, read from the registry on each use (so a data
    set registered later is in it); compares equal to a tuple or list of the same names."""

    def __getitem__(self, index):
        return tuple(_REGISTRY)[index]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __contains__(self, name: object) -> bool:
        return name in _REGISTRY

    def __iter__(self):
        return iter(tuple(_REGISTRY))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and tuple(self) == tuple(other)

    __hash__ = None

    def __repr__(self) -> str:
        return repr(tuple(self))


NAMES = RegisteredNames()


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """A registered data set by name (``list_datasets()``), or a path to a user's ``.npy``, ``.npz``, ``.pt`` or
    ``.csv`` file or folder of images. ``data_dir`` (else ``$PPROGEN_DATA``) is where data sets that need
    files are looked for; ``download=False`` keeps them offline."""
    card = _REGISTRY.get(name)
    if card is not None:
        given = {"data_dir": data_dir, "download": download}
        dataset = card.loader(**{k: given[k] for k in card.options})
        if not isinstance(dataset, Dataset):
            raise TypeError(f"the loader of data set {name!r} returned a {type(dataset).__name__}, "
                            "not a pprogen.data.Dataset")
        return dataset
    if os.sep in name or Path(name).suffix or Path(name).exists():
        return load_file(name)
    raise unknown_name_error("data set", name, _REGISTRY)
