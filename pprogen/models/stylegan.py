r"""A small style-based generator (StyleGAN, Karras et al. 2019; weight demodulation and skip outputs of StyleGAN2,
Karras et al. 2020).

.. math::

    z \sim \mathcal{N}(0, I), \quad w = f(z) \ \text{(mapping MLP)}, \quad
    x = \sigma\Big(\textstyle\sum_r \mathrm{up}^{R - r}\big(\mathrm{toImage}_r(h_r; w)\big)\Big)

The synthesis network starts from a learned constant at the smallest resolution (7 pixels for 28x28 images) and
doubles it block by block; each block has two 3x3 convolutions whose weights are *modulated* by a per-layer style
``A_i(w)`` (a learned affine map of w, one scale per input channel) and *demodulated* (each output filter rescaled
to unit norm), each followed by per-pixel noise with a learned per-channel strength and a LeakyReLU. Every block adds
its own 1x1 modulated ``toImage`` output to the upsampled image of the blocks before (skip outputs instead of
progressive growing). The layers' styles are a list of w's, one per modulated layer:

- the mapping network learns 100 times slower than the rest (StyleGAN's learning-rate multiplier);
- **style mixing** (training): with probability ``mixing``, the layers from a random crossover point on take w of
  a second latent, so the network cannot assume neighbouring layers' styles are correlated;
- **mixing pictures**: coarse layers (the low resolutions) from one latent, fine layers from another
  (:meth:`StyleGAN.mix`);
- **truncation**: ``w' = w_avg + psi (w - w_avg)`` with ``w_avg`` the running mean of w over training
  (:meth:`StyleGAN.sample` with ``psi``).

The discriminator is the progressive GAN's at full resolution (blocks with average pooling and a minibatch
standard-deviation channel), trained with the non-saturating loss and the R1 penalty by
:class:`~pprogen.inference.AdversarialTrainer`. The generator remains a Pyro program: ``z`` at a ``"z"`` site and
``x`` recorded deterministically; the per-layer noise is drawn by torch inside the network (``noise="const"``
fixes it, ``noise="none"`` turns it off), so x is a function of z only up to that noise.

Reference: Karras, Laine & Aila, A Style-Based Generator Architecture for GANs, CVPR 2019, arXiv:1812.04948;
Karras et al., Analyzing and Improving the Image Quality of StyleGAN, CVPR 2020, arXiv:1912.04958.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pprogen.models.gan import GAN, ProgressiveDiscriminator, check_image_shape
from pprogen.nn import CriticPair, halvings
from pprogen.registry import register_model

NOISE_MODES = ("random", "const", "none")


class SlowLinear(nn.Module):
    """A linear layer that learns ``lr_mul`` times slower under Adam: its stored parameters are the weights divided by
    ``lr_mul`` (StyleGAN's learning-rate multiplier for the mapping network, which otherwise collapses w)."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / (math.sqrt(in_dim) * lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.lr_mul, self.bias * self.lr_mul)


class MappingNetwork(nn.Module):
    """z -> w: the normalized z (unit root-mean-square) through ``depth`` LeakyReLU layers learning ``lr_mul``
    times slower than the rest."""

    def __init__(self, z_dim: int, w_dim: int, depth: int, lr_mul: float = 0.01) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = z_dim
        for _ in range(depth):
            layers += [SlowLinear(width, w_dim, lr_mul), nn.LeakyReLU(0.2)]
            width = w_dim
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-8))


class ModulatedConv(nn.Module):
    """A k x k convolution whose weights are scaled per example by the style ``A(w)`` (one factor per input channel,
    the affine map's bias starting at 1, its weights at N(0, 1 / w_dim)) and, with ``demodulate``, renormalized per output filter:
    ``W'_oik = s_i W_oik / sqrt(sum_ik (s_i W_oik)^2 + eps)``. Computed without per-example weights: the input
    scaled by s, one ordinary convolution, the output scaled by the demodulation factors (equal, and much faster
    on a CPU than a grouped convolution over the batch)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel: int = 3, demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel) / math.sqrt(in_channels * kernel**2))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.affine = nn.Linear(w_dim, in_channels)
        nn.init.normal_(self.affine.weight, std=1 / math.sqrt(w_dim))
        nn.init.ones_(self.affine.bias)  # styles start around 1
        self.demodulate, self.padding = demodulate, kernel // 2

    def modulated_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The per-example weights ``(B, out, in, k, k)``."""
        weight = self.weight[None] * self.affine(w)[:, None, :, None, None]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        return weight

    def forward(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.affine(w)  # (B, in)
        out = F.conv2d(h * style[:, :, None, None], self.weight, padding=self.padding)
        if self.demodulate:  # 1 / |s * W_o| per example and output filter: (B, out)
            out = out * torch.rsqrt(style.pow(2) @ self.weight.pow(2).sum((2, 3)).T + 1e-8)[:, :, None, None]
        return out + self.bias[None, :, None, None]


class NoisyConv(nn.Module):
    """Modulated 3x3 convolution, per-pixel noise with a learned strength per channel, LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv(in_channels, out_channels, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(out_channels))

    def forward(self, h: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        out = self.conv(h, w)
        if noise is not None:
            out = out + self.noise_strength[None, :, None, None] * noise
        return F.leaky_relu(out, 0.2)


class SynthesisNetwork(nn.Module):
    """A learned constant at ``base`` pixels, then ``blocks`` resolutions (each doubling the side after the first),
    two noisy modulated convolutions and a ``toImage`` skip output each. Takes one w per modulated layer."""

    def __init__(self, x_shape: Sequence[int], w_dim: int, channels: int) -> None:
        super().__init__()
        c, h, _ = x_shape
        self.blocks = halvings(h) + 1
        self.base = h // 2 ** (self.blocks - 1)
        self.sizes = [self.base * 2**i for i in range(self.blocks)]
        self.const = nn.Parameter(torch.randn(channels, self.base, self.base))
        self.convs = nn.ModuleList([NoisyConv(channels, channels, w_dim) for _ in range(2 * self.blocks)])
        self.to_image = nn.ModuleList([ModulatedConv(channels, c, w_dim, kernel=1, demodulate=False)
                                       for _ in range(self.blocks)])
        for i, size in enumerate(self.sizes):  # the fixed noise of noise="const"
            self.register_buffer(f"fixed_noise_{i}", torch.randn(2, 1, size, size))

    @property
    def num_ws(self) -> int:
        """The number of styles it takes: two per block (the ``toImage`` output shares the block's second)."""
        return 2 * self.blocks

    def forward(self, ws: torch.Tensor, noise: str = "random") -> torch.Tensor:
        """``ws`` of shape ``(B, num_ws, w_dim)`` -> pre-sigmoid images of the data's size."""
        b = ws.shape[0]
        h = self.const.expand(b, *self.const.shape)
        image = None
        for i, size in enumerate(self.sizes):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            for j in (0, 1):
                if noise == "random":
                    draw = torch.randn(b, 1, size, size, device=h.device, dtype=h.dtype)
                elif noise == "const":
                    draw = getattr(self, f"fixed_noise_{i}")[j].expand(b, 1, size, size)
                else:
                    draw = None
                h = self.convs[2 * i + j](h, ws[:, 2 * i + j], draw)
            out = self.to_image[i](h, ws[:, 2 * i + 1])
            image = out if image is None else F.interpolate(image, scale_factor=2, mode="bilinear",
                                                            align_corners=False) + out
        return image


class StyleGenerator(nn.Module):
    """Mapping and synthesis networks with the running mean of w (for truncation)."""

    def __init__(self, x_shape: Sequence[int], z_dim: int, w_dim: int, mapping_layers: int, channels: int,
                 w_avg_decay: float = 0.995) -> None:
        super().__init__()
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
        self.synthesis = SynthesisNetwork(x_shape, w_dim, channels)
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.w_avg_decay = w_avg_decay

    def map(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        """w = f(z), truncated towards the running mean with ``psi`` < 1; in training mode the mean follows w."""
        w = self.mapping(z)
        if self.training:
            with torch.no_grad():
                self.w_avg.lerp_(w.detach().mean(0).to(self.w_avg.dtype), 1 - self.w_avg_decay)
        return w if psi == 1 else self.w_avg + psi * (w - self.w_avg)

    def synthesize(self, ws: torch.Tensor, noise: str = "random") -> torch.Tensor:
        return torch.sigmoid(self.synthesis(ws, noise))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, psi: float = 1.0,
                noise: str = "random") -> torch.Tensor:
        if y is not None:
            raise ValueError("stylegan is not conditional but got labels y")
        w = self.map(z, psi)
        return self.synthesize(w[:, None].expand(-1, self.synthesis.num_ws, -1), noise)


class FullResolutionCritic(ProgressiveDiscriminator):
    """The progressive GAN's discriminator used at its full resolution only (StyleGAN's generator has skip
    outputs, so the critic does not grow); the lower resolutions' input layers are dropped."""

    def __init__(self, x_shape: Sequence[int], channels: int = 64) -> None:
        super().__init__(x_shape, channels)
        for stage in range(self.stages - 1):
            self.from_image[stage] = nn.Identity()

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, self.stages - 1, 1.0)


class StyleGAN(GAN):
    """z -> w -> per-layer styles -> image; see the module docstring."""

    def __init__(self, x_shape: Sequence[int], z_dim: int, w_dim: int, mapping_layers: int, channels: int,
                 d_channels: int, mixing: float) -> None:
        super().__init__(x_shape, z_dim, StyleGenerator(x_shape, z_dim, w_dim, mapping_layers, channels),
                         FullResolutionCritic(x_shape, d_channels))
        self.mixing = mixing

    @property
    def num_ws(self) -> int:
        return self.generator.synthesis.num_ws

    def mixed_styles(self, net: StyleGenerator, z: torch.Tensor) -> torch.Tensor:
        """One w per layer; with probability ``mixing`` an example's layers from a random crossover point on take
        the w of a second latent (style mixing regularization)."""
        w = net.map(z)[:, None].expand(-1, self.num_ws, -1)
        if self.mixing <= 0:
            return w
        second = net.map(torch.randn_like(z))[:, None].expand(-1, self.num_ws, -1)
        b = z.shape[0]
        mixes = torch.rand(b, device=z.device) < self.mixing
        cut = torch.randint(1, self.num_ws, (b,), device=z.device)
        cut = torch.where(mixes, cut, torch.full_like(cut, self.num_ws))
        later = torch.arange(self.num_ws, device=z.device)[None, :] >= cut[:, None]
        return torch.where(later[..., None], second, w)

    def adversarial_terms(
        self, real: torch.Tensor, generator_step: bool, y: torch.Tensor | None = None
    ) -> tuple[list[CriticPair], dict[str, torch.Tensor]]:
        self.checked_labels(y)
        fake = self.generator.synthesize(self.mixed_styles(self.generator, self.noise(real)))
        return [CriticPair(self.discriminator, real, fake)], {}

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, psi: float = 1.0, noise: str = "random") -> torch.Tensor:
        """``n`` images from the moving-average generator, truncated with ``psi`` (1: none)."""
        self.checked_labels(y)
        if not 0 <= psi <= 1:
            raise ValueError(f"the truncation psi must lie in [0, 1], got {psi}")
        if psi == 1 and noise == "random":
            return super().sample(n)
        return self.sample_at(torch.randn(n, self.z_dim, device=self._zero.device), psi, noise)

    @torch.no_grad()
    def sample_at(self, z: torch.Tensor, psi: float = 1.0, noise: str = "const") -> torch.Tensor:
        """Images of given latents ``z`` from the moving-average generator, truncated with ``psi``, fixed noise."""
        if not 0 <= psi <= 1:
            raise ValueError(f"the truncation psi must lie in [0, 1], got {psi}")
        with self._averaged() as net:
            return net(z, psi=psi, noise=noise)

    @contextlib.contextmanager
    def _averaged(self):
        """The moving-average generator, with the model in eval mode meanwhile (so w's running mean stays put)."""
        was = self.training
        self.eval()
        try:
            yield self.sampler
        finally:
            self.train(was)

    @torch.no_grad()
    def mix(self, z_coarse: torch.Tensor, z_fine: torch.Tensor, crossover: int, psi: float = 1.0,
            noise: str = "const") -> torch.Tensor:
        """Images whose first ``crossover`` layers (the coarse resolutions) take the style of ``z_coarse`` and the
        rest that of ``z_fine`` (rows paired), from the moving-average generator; ``crossover`` in [0, num_ws]."""
        if not 0 <= crossover <= self.num_ws:
            raise ValueError(f"crossover must lie in [0, {self.num_ws}] (the generator has {self.num_ws} styled "
                             f"layers), got {crossover}")
        with self._averaged() as net:
            coarse = net.map(z_coarse, psi)[:, None].expand(-1, crossover, -1)
            fine = net.map(z_fine, psi)[:, None].expand(-1, self.num_ws - crossover, -1)
            return net.synthesize(torch.cat([coarse, fine], 1), noise)


@register_model(
    kind="gan",
    reference="Karras, Laine & Aila, A Style-Based Generator Architecture for GANs, CVPR 2019; Karras et al., "
    "Analyzing and Improving the Image Quality of StyleGAN, CVPR 2020",
    default_data="digits28",
    story="z ~ N(0, I); w = mapping MLP(z); from a learned constant, blocks at 7 -> 14 -> 28 pixels of modulated / "
    "demodulated 3x3 convolutions styled by affine maps of w, per-pixel noise, skip toImage outputs; style mixing "
    "regularization, truncation psi; D: the progressive GAN's at full resolution with R1.",
    train_defaults={"loss": "nonsaturating", "epochs": 60, "batch_size": 64, "lr": 1e-3, "lr_d": 1e-3,
                    "betas": [0.0, 0.99], "r1_weight": 1.0, "ema": 0.999},
)
def stylegan(x_shape: Sequence[int] = (1, 28, 28), z_dim: int = 64, w_dim: int = 64, mapping_layers: int = 4,
             channels: int = 32, d_channels: int = 32, mixing: float = 0.9) -> StyleGAN:
    """A StyleGAN for small square images whose side halves to 4-7 pixels (8, 14, 16, 28, 32, ...)."""
    check_image_shape("stylegan", x_shape)
    if x_shape[1] != x_shape[2]:
        raise ValueError(f"stylegan grows square images; got {x_shape[1]}x{x_shape[2]}")
    side = int(x_shape[1])
    if halvings(side) < 1 or side // 2 ** halvings(side) > 8:
        raise ValueError(f"stylegan grows images from a constant of 4 to 8 pixels by doublings, which never reaches "
                         f"a side of {side}; use a side c * 2^k with 4 <= c <= 8 and k >= 1 (8, 12, 14, 16, 28, 32, ...)")
    if not (isinstance(mixing, (int, float)) and 0 <= mixing <= 1):
        raise ValueError(f"the style-mixing probability must lie in [0, 1], got {mixing!r}")
    for key, value in (("z_dim", z_dim), ("w_dim", w_dim), ("mapping_layers", mapping_layers), ("channels", channels),
                       ("d_channels", d_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return StyleGAN(x_shape, z_dim, w_dim, mapping_layers, channels, d_channels, float(mixing))
