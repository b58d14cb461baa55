"""Guides by name. ``default`` is the model's own ``default_guide()``; Pyro's autoguides for global
latents are available as ``auto_*``."""

from __future__ import annotations

from typing import Any, Callable

from pyro.infer import autoguide

from pprogen.registry import unknown_name_error

AUTOGUIDES = {
    "auto_normal": autoguide.AutoNormal,
    "auto_diag": autoguide.AutoDiagonalNormal,
    "auto_mvn": autoguide.AutoMultivariateNormal,
    "auto_lowrank": autoguide.AutoLowRankMultivariateNormal,
    "auto_iaf": autoguide.AutoIAFNormal,
    "auto_delta": autoguide.AutoDelta,
    "auto_laplace": autoguide.AutoLaplaceApproximation,
}
GUIDES = ("default", *AUTOGUIDES)


def make_guide(name: str, model: Callable, **kw: Any) -> Callable:
    """A guide for ``model`` by name: ``default`` (the model's ``default_guide()``) or ``auto_*``."""
    if name == "default":
        if not hasattr(model, "default_guide"):
            raise ValueError(
                "this model has no default_guide(); pass a guide you wrote or one of "
                + ", ".join(AUTOGUIDES)
            )
        return model.default_guide(**kw)
    if name in AUTOGUIDES:
        return AUTOGUIDES[name](model, **kw)
    raise unknown_name_error("guide", name, GUIDES)
