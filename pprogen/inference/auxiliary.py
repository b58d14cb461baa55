r"""The start density of annealed chains for Pyro's autoguides that draw auxiliary sites.

AIS needs :math:`\log q(z \mid x)` at any point the chains move to, not only at the guide's own draws. Pyro's
``AutoNormal`` draws :math:`u \sim \mathcal{N}(\mu, \sigma^2)` at an auxiliary site ``{name}_unconstrained`` and
puts a ``Delta`` at :math:`z = T(u)`, with :math:`T` = ``biject_to(support)`` of the model's site; the
``AutoContinuous`` guides (``AutoDiagonalNormal``, ``AutoMultivariateNormal``, ``AutoLowRankMultivariateNormal``,
``AutoIAFNormal``) draw one vector :math:`u` of every latent's unconstrained value at ``_{prefix}_latent`` and
unpack it. A transformed start density is still a start density: the chains of
:mod:`pprogen.inference.annealing` move in the unconstrained space of the same :math:`T`, where

.. math::

    \log q_u(u \mid x) = \log q_{\mathrm{aux}}(u \mid x),

with no Jacobian (the chains add the same Jacobian to both densities otherwise, and it cancels in the weights).
:class:`AuxiliaryMap` reads each auxiliary site's value off the chains' state (the site's own unconstrained value,
or the latents' values packed in the guide's order) and scores it by the auxiliary site's distribution.
"""

from __future__ import annotations

import torch
from pyro.infer.autoguide import AutoContinuous

AUXILIARY_HINT = ("AIS reads q(z | x) at any z through the auxiliary sites of Pyro's AutoNormal and AutoContinuous "
                  "guides (AutoDiagonalNormal, AutoMultivariateNormal, AutoLowRankMultivariateNormal, AutoIAFNormal) "
                  "only; use one of those, a guide that samples the model's latents directly "
                  "(make_guide('amortized_normal', model), a plain-function guide with dist.Normal), or guide=None "
                  "(the prior)")


class AuxiliaryMap:
    """For each auxiliary site of a guide, the model latents its value is made of, in order (one for AutoNormal's
    ``{name}_unconstrained``, every latent of an AutoContinuous guide for its ``_{prefix}_latent``)."""

    def __init__(self, parts: dict[str, list[str]]) -> None:
        self.parts = parts

    @property
    def latents(self) -> set[str]:
        return {name for names in self.parts.values() for name in names}

    @classmethod
    def of(cls, guide, auxiliary: list[dict], latents: set[str], per_datum: set[str] = frozenset()) -> "AuxiliaryMap":
        """The map of ``guide``'s ``auxiliary`` sites onto the model's ``latents``; an auxiliary site it cannot read
        is refused in one line, and so is one block of ``per_datum`` latents (the per-datum latents of a model with
        no global latent): it would turn a per-datum estimate into one joint estimate over every row's latents."""
        packed = {}
        for module in guide.modules() if isinstance(guide, torch.nn.Module) else ():
            if isinstance(module, AutoContinuous) and module.prototype_trace is not None:
                names = [name for name, _ in module.prototype_trace.iter_stochastic_nodes()]
                packed[f"_{module._pyro_name}_latent"] = names
        parts = {}
        for site in auxiliary:
            name = site["name"]
            if name in packed and set(packed[name]) <= latents:
                rows = [latent for latent in packed[name] if latent in per_datum]
                if rows:
                    raise ValueError(
                        f"guide site {name!r} is an auxiliary block of every row's {rows[0]!r}, so annealing from it "
                        "would make the per-datum evidence one joint estimate; use AutoNormal (an auxiliary site per "
                        "latent, per row), make_guide('amortized_normal', model), or guide=None (the prior)")
                parts[name] = packed[name]
            elif name.endswith("_unconstrained") and name[: -len("_unconstrained")] in latents:
                parts[name] = [name[: -len("_unconstrained")]]
            else:
                raise ValueError(f"guide site {name!r} is an auxiliary site (not a model latent) of a guide AIS "
                                 f"cannot read; {AUXILIARY_HINT}")
        return cls(parts)

    def values(self, site: dict, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """The auxiliary site's value at the chains' unconstrained ``state``."""
        names = self.parts[site["name"]]
        if len(names) == 1 and state[names[0]].shape == site["value"].shape:
            return state[names[0]]
        batch = site["value"].shape[:-1]
        return torch.cat([state[name].reshape(batch + (-1,)) for name in names], -1)
