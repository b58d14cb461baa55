r"""Flow transforms: the bijections that Pyro lacks or runs in the wrong direction for density estimation.

Every transform here maps the base (noise) side to the data side, as ``TransformedDistribution`` expects,
and computes :math:`\log|\det \partial y / \partial x|` in the same pass as the map, in both directions,
so ``log_prob`` (data -> noise) and ``rsample`` (noise -> data) each cost one pass. One file per kind:

- ``bijection.py`` — :class:`Bijection`, the base class, and :class:`NoInverseError`.
- ``elementwise_maps.py`` — the element-wise maps inside couplings and autoregressive layers: affine,
  additive, rational-quadratic spline.
- ``autoregressive.py`` — :class:`MaskedAutoregressive`: MAF (``fast="density"``: one network pass for
  ``log_prob``) or IAF (``fast="sample"``: one pass for ``sample``); the other direction takes one pass per
  dimension.
- ``coupling.py`` — :class:`Coupling`: additive (NICE), affine (RealNVP, Glow) or spline (NSF) coupling on
  vectors (feature halves) or images (channel halves).
- ``linear.py`` — :class:`Scaling` (NICE's diagonal scaling), :class:`ActNorm` (data-dependent init),
  :class:`InvertibleLinear` (Glow's invertible 1x1 convolution, with an LU option), :class:`FlowBatchNorm`,
  :class:`Reverse`.
- ``multiscale.py`` — :class:`MultiScale`: Glow/RealNVP's levels: squeeze, steps, then half of the channels is
  factored out (sent straight to the base distribution) and the other half goes through the next level.
- ``planar.py``, ``radial.py`` — :class:`Planar`, :class:`Radial`: Rezende & Mohamed's flows; they have no
  closed-form inverse, so they score only their own samples (through the cache) and raise
  :class:`NoInverseError` otherwise.
- ``logit.py`` — :class:`Logit`: the image preprocessing :math:`y = (\sigma(s) - \alpha) / (1 - 2\alpha)` with
  its Jacobian.

References: Dinh et al. 2015 (NICE, arXiv:1410.8516), 2017 (RealNVP, arXiv:1605.08803); Kingma & Dhariwal
2018 (Glow, arXiv:1807.03039); Papamakarios et al. 2017 (MAF, arXiv:1705.07057); Kingma et al. 2016 (IAF,
arXiv:1606.04934); Durkan et al. 2019 (neural spline flows, arXiv:1906.04032); Rezende & Mohamed 2015
(arXiv:1505.05770).
"""

from pprogen.transforms.autoregressive import MaskedAutoregressive, alternating_orders
from pprogen.transforms.bijection import Bijection, NoInverseError, check_num_layers
from pprogen.transforms.coupling import ConvNet, Coupling
from pprogen.transforms.elementwise_maps import (
    ELEMENTWISE, Additive, Affine, RationalQuadratic, elementwise, soft_clamp,
)
from pprogen.transforms.linear import ActNorm, FlowBatchNorm, InvertibleLinear, Reverse, Scaling
from pprogen.transforms.logit import Logit
from pprogen.transforms.multiscale import MultiScale, squeeze, unsqueeze
from pprogen.transforms.planar import ConditionalPlanar, Planar, planar_map
from pprogen.transforms.radial import Radial, radial_map

__all__ = [
    "ELEMENTWISE", "ActNorm", "Affine", "Additive", "Bijection", "ConditionalPlanar", "ConvNet", "Coupling",
    "FlowBatchNorm", "InvertibleLinear", "Logit", "MaskedAutoregressive", "MultiScale", "NoInverseError", "Planar",
    "Radial", "RationalQuadratic", "Reverse", "Scaling", "alternating_orders", "check_num_layers", "elementwise",
    "planar_map", "radial_map", "soft_clamp", "squeeze", "unsqueeze",
]
