"""The model registry: ``@register_model`` on a small typed factory, ``create_model(name, **overrides)``.

Each entry carries a card — the generative story, its reference, its kind and the data it trains on by
default — which ``pprogen info NAME`` prints. Unlike timm, registering a name twice raises.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar, overload

from pprogen.errors import suggest as _suggest, unknown_name_error

if TYPE_CHECKING:
    from pyro.nn import PyroModule

KINDS = ("latent", "autoregressive", "flow", "mixture", "bayesnet", "gan", "autoencoder")


@dataclass(frozen=True)
class ModelCard:
    """What ``pprogen info`` prints about a registered model."""

    name: str
    factory: Callable[..., Any]
    kind: str
    story: str
    reference: str
    default_data: str
    defaults: dict[str, Any] = field(default_factory=dict)
    train_defaults: dict[str, Any] = field(default_factory=dict)
    details: Callable[[], str] | None = None
    default_target: str | None = None  # flows that cannot score data train on an energy target by reverse KL

    @property
    def trains_on(self) -> str:
        """What ``pprogen train NAME`` fits with no options: a data set, or an energy target by reverse KL."""
        if self.default_target:
            return f"energy target {self.default_target} (reverse KL; --target)"
        return f"data {self.default_data}"

    def describe(self) -> str:
        lines = [
            f"{self.name}  ({self.kind})",
            "",
            self.story.strip(),
            "",
            f"reference:    {self.reference or '-'}",
            f"trains on:    {self.trains_on}",
            "training:     " + (", ".join(f"{k}={v!r}" for k, v in self.train_defaults.items()) or "pprogen's defaults"),
            "arguments:    "
            + (", ".join(f"{k}={v!r}" for k, v in self.defaults.items()) or "-"),
        ]
        if self.details is not None:
            lines += ["", self.details()]
        return "\n".join(lines)


_REGISTRY: dict[str, ModelCard] = {}

_Factory = TypeVar("_Factory", bound=Callable[..., Any])


@overload
def register_model(
    fn: _Factory, *, name: str | None = ..., kind: str = ..., reference: str = ..., default_data: str = ...,
    story: str | None = ..., train_defaults: dict[str, Any] | None = ..., details: Callable[[], str] | None = ...,
    default_target: str | None = ...,
) -> _Factory: ...


@overload
def register_model(
    fn: None = ..., *, name: str | None = ..., kind: str = ..., reference: str = ..., default_data: str = ...,
    story: str | None = ..., train_defaults: dict[str, Any] | None = ..., details: Callable[[], str] | None = ...,
    default_target: str | None = ...,
) -> Callable[[_Factory], _Factory]: ...


def register_model(
    fn: _Factory | None = None,
    *,
    name: str | None = None,
    kind: str = "latent",
    reference: str = "",
    default_data: str = "digits",
    story: str | None = None,
    train_defaults: dict[str, Any] | None = None,
    details: Callable[[], str] | None = None,
    default_target: str | None = None,
) -> _Factory | Callable[[_Factory], _Factory]:
    """Register a model factory under ``name`` (the function's name by default).

    Usable bare (``@register_model``) or with card fields (``@register_model(kind="flow", ...)``).
    The story defaults to the factory's docstring; ``train_defaults`` (e.g. ``{"elbo": "enum"}``) replace
    the CLI's training defaults for this model; ``details()`` adds text to ``pprogen info`` (a network's
    tables, say). A duplicate name raises ``ValueError``.
    """

    def decorate(factory: _Factory) -> _Factory:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(
                f"a model named {key!r} is already registered; pass register_model(name=...) "
                "to register this one under another name"
            )
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
        params = inspect.signature(factory).parameters.values()
        defaults = {
            p.name: p.default for p in params if p.default is not inspect.Parameter.empty
        }
        _REGISTRY[key] = ModelCard(
            name=key,
            factory=factory,
            kind=kind,
            story=story if story is not None else inspect.getdoc(factory) or "",
            reference=reference,
            default_data=default_data,
            defaults=defaults,
            train_defaults=dict(train_defaults or {}),
            details=details,
            default_target=default_target,
        )
        return factory

    return decorate(fn) if fn is not None else decorate


def get_card(name: str) -> ModelCard:
    if name not in _REGISTRY:
        raise unknown_name_error("model", name, _REGISTRY)
    return _REGISTRY[name]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, **overrides: Any) -> PyroModule:
    """Build the model ``name``; ``overrides`` replace the factory's defaults."""
    card = get_card(name)
    params = inspect.signature(card.factory).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in overrides if k not in params]
    if unknown and not takes_kwargs:
        raise TypeError(
            f"model {name!r} takes no argument {unknown[0]!r}"
            f"{_suggest(unknown[0], params)} (arguments: {', '.join(params)})"
        )
    for key, value in overrides.items():
        _check_type(name, key, value, params[key].default if key in params else inspect.Parameter.empty)
    return card.factory(**overrides)


def _check_type(model: str, key: str, value: Any, default: Any) -> None:
    """Refuse an argument whose kind cannot be what the default's is: text for a flag, a number or a list of
    sizes (``--set natural_order=no`` would otherwise be a true flag), or a non-flag for a flag."""
    if isinstance(default, bool) and not isinstance(value, bool):
        raise TypeError(f"model {model!r} argument {key!r} is true or false, got {value!r}; "
                        f"give --set {key}=true or --set {key}=false")
    if isinstance(value, str) and isinstance(default, (int, float, tuple, list)) and not isinstance(default, bool):
        kind = "a list of sizes, e.g. [500, 500]" if isinstance(default, (tuple, list)) else "a number"
        raise TypeError(f"model {model!r} argument {key!r} is {kind}, got the text {value!r}")
    sizes = isinstance(default, (tuple, list)) and default and all(_is_int(d) for d in default)
    if sizes and isinstance(value, (tuple, list)) and not all(_is_int(v) for v in value):
        raise TypeError(f"model {model!r} argument {key!r} is a list of whole sizes, e.g. [500, 500], got {value!r}")
    if _is_int(default) and isinstance(value, float):
        raise TypeError(f"model {model!r} argument {key!r} is a whole number, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
