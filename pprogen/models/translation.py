"""Image-to-image translation GANs: CycleGAN (unpaired domains) and pix2pix (paired examples).

Each example of a translation data set is the channels of its domain-A image stacked over those of its
domain-B image, ``(2C, H, W)``; in a paired set the two belong together, in an unpaired one B comes from
another example. Translation is deterministic given the input (pix2pix's noise is dropout, as in its
paper), so these models have no ``"z"`` site: their Pyro program records ``G(a)`` at a deterministic
``"x"`` site, and ``sample(n, source)`` translates ``n`` source images.
"""

from __future__ import annotations

from typing import Any, Sequence

import pyro
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pprogen.nn import CriticPair, frozen_copy, halvings
from pprogen.registry import register_model


def _norm(width: int) -> nn.Module:
    return nn.InstanceNorm2d(width, affine=True)


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), _norm(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), _norm(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's generator, scaled down: conv, one stride-2 downsampling, residual blocks, one transposed
    upsampling, conv, sigmoid."""

    def __init__(self, channels_in: int, width: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels_in, width, 3, padding=1), _norm(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1), _norm(2 * width), nn.ReLU(),
            *[ResidualBlock(2 * width) for _ in range(blocks)],
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), _norm(width), nn.ReLU(),
            nn.Conv2d(width, channels_in, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


class UNetGenerator(nn.Module):
    """pix2pix's U-Net: stride-2 convolutions down to the smallest exact halving, transposed convolutions
    back up with skip connections from the encoder; dropout in the decoder's first layers is the noise."""

    def __init__(self, channels_in: int, channels_out: int, size: int, width: int = 32, dropout: float = 0.5) -> None:
        super().__init__()
        depth = max(1, halvings(size, smallest=1))
        widths = [min(width * 2**i, width * 8) for i in range(depth)]
        self.down = nn.ModuleList()
        a = channels_in
        for i, b in enumerate(widths):
            layers = [nn.Conv2d(a, b, 4, 2, 1)] + ([_norm(b)] if 0 < i < depth - 1 else []) + [nn.LeakyReLU(0.2)]
            self.down.append(nn.Sequential(*layers))
            a = b
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            into = widths[i] if i == depth - 1 else 2 * widths[i]
            out = widths[i - 1] if i > 0 else width
            layers = [nn.ConvTranspose2d(into, out, 4, 2, 1), _norm(out), nn.ReLU()]
            if i >= depth - 2 and depth > 1:
                layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        self.out = nn.Conv2d(width + channels_in, channels_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, h = [], x
        for layer in self.down:
            h = layer(h)
            skips.append(h)
        skips.pop()
        for layer in self.up:
            h = layer(h)
            if skips:
                h = torch.cat([h, skips.pop()], 1)
        return torch.sigmoid(self.out(torch.cat([h, x], 1)))


class PatchDiscriminator(nn.Module):
    """PatchGAN: stride-2 LeakyReLU convolutions, then a 3x3 conv to one score per patch ``(B, 1, h, w)``."""

    def __init__(self, channels_in: int, size: int, width: int = 32, layers: int = 2) -> None:
        super().__init__()
        layers = max(1, min(layers, halvings(size, smallest=2)))
        parts: list[nn.Module] = []
        a = channels_in
        for i in range(layers):
            b = width * 2**i
            parts += [nn.Conv2d(a, b, 4, 2, 1)] + ([_norm(b)] if i else []) + [nn.LeakyReLU(0.2)]
            a = b
        parts.append(nn.Conv2d(a, 1, 3, padding=1))
        self.net = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Translation(PyroModule):
    """Shared by CycleGAN and pix2pix: domain splitting, the Pyro program, shape checks, ``sample``."""

    invertible = False
    needs_pairs = False

    def __init__(self, x_shape: Sequence[int]) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)  # one domain's image; examples stack two of them
        self.channels = x_shape[0]

    def split(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pair[:, : self.channels], pair[:, self.channels :]

    def translator(self, direction: str) -> nn.Module:
        nets = self.generator if self.training else self.generator_ema
        if direction not in nets:
            raise ValueError(f"{type(self).__name__.lower()} translates {' and '.join(nets)}, not {direction!r}")
        return nets[direction]

    def forward(self, source: torch.Tensor, direction: str = "ab") -> torch.Tensor:
        with pyro.plate("data", source.shape[0]):
            return pyro.deterministic("x", self.translator(direction)(source), event_dim=3)

    @torch.no_grad()
    def sample(self, n: int, source: torch.Tensor | None = None, direction: str = "ab") -> torch.Tensor:
        """Translations of the first ``n`` images of ``source`` (one domain's images ``(N, C, H, W)``)."""
        if source is None:
            raise ValueError(f"{type(self).__name__.lower()} translates images: pass source images "
                             "(pprogen sample takes them from the run's data)")
        was = self.training
        self.eval()
        try:
            return self(source[:n], direction)
        finally:
            self.train(was)

    def check_data(self, data: torch.Tensor, pairing: str | None = None, **condition: Any) -> None:
        expected = (2 * self.channels, *self.x_shape[1:])
        if tuple(data.shape[1:]) != expected:
            raise ValueError(f"{type(self).__name__.lower()} takes examples that stack an A and a B image of shape "
                             f"{self.x_shape} as {expected}, got {tuple(data.shape[1:])}; use a translation data "
                             "set (edges2digits, digits2inverted, digits2thick) or build the model for this data")
        if self.needs_pairs and pairing == "unpaired":
            raise ValueError("pix2pix learns from paired examples (A_i, B_i), but these domains are unpaired; use "
                             "cyclegan for unpaired domains or a paired data set such as edges2digits")


class CycleGAN(Translation):
    """Two generators G_ab, G_ba and two patch discriminators D_a, D_b; the generators also pay
    ``cycle * (|G_ba(G_ab(a)) - a|_1 + |G_ab(G_ba(b)) - b|_1)`` and ``identity * cycle`` times the identity L1
    (``|G_ba(a) - a|_1 + |G_ab(b) - b|_1``)."""

    def __init__(self, x_shape: Sequence[int], width: int, blocks: int, cycle: float, identity: float) -> None:
        super().__init__(x_shape)
        c, size = x_shape[0], x_shape[1]
        self.generator = nn.ModuleDict({"ab": ResnetGenerator(c, width, blocks), "ba": ResnetGenerator(c, width, blocks)})
        self.discriminator = nn.ModuleDict({"a": PatchDiscriminator(c, size, width), "b": PatchDiscriminator(c, size, width)})
        self.generator_ema = frozen_copy(self.generator)
        self.cycle, self.identity = cycle, identity

    def cycle_loss(self, a: torch.Tensor, b: torch.Tensor, nets: nn.ModuleDict | None = None) -> torch.Tensor:
        """The L1 cycle-consistency loss (unweighted) of translators ``nets`` (the generators by default)."""
        nets = self.generator if nets is None else nets
        return F.l1_loss(nets["ba"](nets["ab"](a)), a) + F.l1_loss(nets["ab"](nets["ba"](b)), b)

    def adversarial_terms(
        self, real: torch.Tensor, generator_step: bool
    ) -> tuple[list[CriticPair], dict[str, torch.Tensor]]:
        a, b = self.split(real)
        fake_b, fake_a = self.generator["ab"](a), self.generator["ba"](b)
        pairs = [CriticPair(self.discriminator["b"], b, fake_b, name="d_b"),
                 CriticPair(self.discriminator["a"], a, fake_a, name="d_a")]
        extra: dict[str, torch.Tensor] = {}
        if generator_step:
            cycle = F.l1_loss(self.generator["ba"](fake_b), a) + F.l1_loss(self.generator["ab"](fake_a), b)
            extra["cycle"] = self.cycle * cycle
            if self.identity:
                same = F.l1_loss(self.generator["ba"](a), a) + F.l1_loss(self.generator["ab"](b), b)
                extra["identity"] = self.identity * self.cycle * same
        return pairs, extra


class Pix2Pix(Translation):
    """A U-Net G_ab and a patch discriminator on the channel-stacked (input, output) pair; the generator
    also pays ``l1 * |G(a) - b|_1``."""

    needs_pairs = True

    def __init__(self, x_shape: Sequence[int], width: int, l1: float, dropout: float) -> None:
        super().__init__(x_shape)
        c, size = x_shape[0], x_shape[1]
        self.generator = nn.ModuleDict({"ab": UNetGenerator(c, c, size, width, dropout)})
        self.discriminator = PatchDiscriminator(2 * c, size, width)
        self.generator_ema = frozen_copy(self.generator)
        self.l1 = l1

    def adversarial_terms(
        self, real: torch.Tensor, generator_step: bool
    ) -> tuple[list[CriticPair], dict[str, torch.Tensor]]:
        a, b = self.split(real)
        fake_b = self.generator["ab"](a)
        pairs = [CriticPair(self.discriminator, torch.cat([a, b], 1), torch.cat([a, fake_b], 1))]
        return pairs, ({"l1": self.l1 * F.l1_loss(fake_b, b)} if generator_step else {})


@register_model(kind="gan", reference="Zhu et al. 2017, Unpaired Image-to-Image Translation using Cycle-Consistent "
                "Adversarial Networks", default_data="digits2inverted",
                train_defaults={"loss": "lsgan", "epochs": 100, "batch_size": 32, "lr": 2e-4, "lr_d": 2e-4,
                                "schedule": "linear", "ema": 0.999})
def cyclegan(x_shape: Sequence[int] = (1, 8, 8), width: int = 32, blocks: int = 3, cycle: float = 10.0,
             identity: float = 0.5) -> CycleGAN:
    """Domains A and B, unpaired. b_hat = G_ab(a), a_hat = G_ba(b); D_a, D_b patch critics; the cycles
    G_ba(G_ab(a)) ~ a and G_ab(G_ba(b)) ~ b are held by an L1 loss (weight `cycle`) and, with weight
    `identity * cycle`, each generator leaves images of its target domain alone."""
    return CycleGAN(x_shape, width, blocks, cycle, identity)


@register_model(kind="gan", reference="Isola et al. 2017, Image-to-Image Translation with Conditional Adversarial "
                "Networks", default_data="edges2digits",
                train_defaults={"loss": "nonsaturating", "epochs": 100, "batch_size": 32, "lr": 2e-4, "lr_d": 2e-4,
                                "ema": 0.999})
def pix2pix(x_shape: Sequence[int] = (1, 8, 8), width: int = 32, l1: float = 100.0, dropout: float = 0.5) -> Pix2Pix:
    """Paired (a, b). b_hat = G(a) with a U-Net G whose dropout is the noise; D judges (a, b) against
    (a, b_hat) patch by patch; G also pays `l1 * |b_hat - b|_1`."""
    return Pix2Pix(x_shape, width, l1, dropout)
