"""pprogen ships ``py.typed`` (PEP 561): every public function and public method of the names in ``__all__`` of the
public modules annotates every parameter (``*args: Any`` and ``**kwargs: Any`` count) and its return value
(``__init__`` aside)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Iterator

PUBLIC_MODULES = ("pprogen", "pprogen.inference", "pprogen.models", "pprogen.data", "pprogen.engine")

# Known gaps, named as "module name.method": each entry goes when its file gets its annotations.
ALLOWED: dict[str, str] = {}


def public_callables(module_name: str) -> Iterator[tuple[str, Callable[..., Any]]]:
    """``(name, function)`` for each public function in ``__all__`` and each public method (and ``__init__``) of
    each class in it, as ``Class.method``."""
    module = importlib.import_module(module_name)
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj):
            for key, value in vars(obj).items():
                if inspect.isfunction(value) and (not key.startswith("_") or key == "__init__"):
                    yield f"{name}.{key}", value


def gaps(module_name: str) -> list[str]:
    """``"module name: what is missing"`` for each public signature of ``module_name`` with a gap."""
    found = []
    for name, fn in public_callables(module_name):
        signature = inspect.signature(fn)
        missing = [p for p, v in signature.parameters.items()
                   if p not in ("self", "cls") and v.annotation is inspect.Parameter.empty]
        if signature.return_annotation is inspect.Signature.empty and not name.endswith("__init__"):
            missing.append("return")
        if missing:
            found.append(f"{module_name} {name} ({fn.__module__}): {', '.join(missing)}")
    return found


def test_every_public_signature_is_annotated():
    untyped = [g for m in PUBLIC_MODULES for g in gaps(m) if g.split(" (")[0] not in ALLOWED]
    assert not untyped, "public signatures without annotations:\n" + "\n".join(untyped)


def test_the_allow_list_holds_only_gaps_that_are_still_open():
    """An entry whose signature has been typed since must leave the list (so that it cannot hide a new gap)."""
    open_gaps = {g.split(" (")[0] for m in PUBLIC_MODULES for g in gaps(m)}
    assert not set(ALLOWED) - open_gaps, f"typed now, drop from ALLOWED: {sorted(set(ALLOWED) - open_gaps)}"


def test_the_check_sees_a_missing_annotation(monkeypatch):
    """The check itself: a public function that loses one annotation is reported."""
    import pprogen.registry

    def list_models(pattern="*") -> list[str]:
        return []

    monkeypatch.setattr(pprogen, "list_models", list_models)
    assert gaps("pprogen") == [f"pprogen list_models ({__name__}): pattern"]
    del list_models.__annotations__["return"]
    assert gaps("pprogen") == [f"pprogen list_models ({__name__}): pattern, return"]
    assert pprogen.registry.list_models is not list_models  # only the package's name was replaced
