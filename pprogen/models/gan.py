"""GANs: an implicit density written as a Pyro program, z ~ N(0, I) at a ``"z"`` site and x = G(z).

Every generator here is a Pyro program: ``model(num_samples=n)`` (or ``model(y=labels)``) draws ``z`` inside
``pyro.plate("data", n)`` and records x = G(z) at a deterministic ``"x"`` site, so ``pyro.infer.Predictive``,
``poutine.trace`` and ``poutine.condition(model, {"z": z})`` work on it. There is no likelihood to
observe, so GANs train with :class:`pprogen.inference.AdversarialTrainer`; the trainer's hot loop calls
``adversarial_terms``, which draws the same z with plain torch (no Pyro bookkeeping per step).

In eval mode the program and ``sample`` use ``generator_ema``, the moving average of the generator's weights
the trainer keeps; in train mode, the generator itself.

- ``gan``: MLPs (2-D toys, flattened images), with PacGAN's packing option for the discriminator.
- ``dcgan``: transposed-convolution generator and strided-convolution discriminator for images whose side
  halves down to 4-7 pixels (8x8 digits, 28x28, 32x32).
- ``cgan``: label-conditioned G (one-hot label appended to z) and a projection discriminator
  (Miyato & Koyama 2018), convolutional for images and MLP for vectors.
- ``cyclegan``: two generators A->B, B->A and two patch discriminators, cycle-consistency and identity L1.
- ``pix2pix``: paired translation A->B with a U-Net generator (dropout as its noise), a patch discriminator
  on (input, output) pairs, and L1 to the target.
- ``progan``: progressive growing (7 -> 14 -> 28 for 28x28 images) with fade-in of each new resolution in
  both networks, and a minibatch standard-deviation feature in the discriminator.

Translation data sets (``edges2digits`` paired, ``digits2inverted`` / ``digits2thick`` unpaired) hold each
example as the channels of A stacked over the channels of B, ``(2C, H, W)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pprogen.nn import MLP, CriticPair, check_labels, frozen_copy, halvings, with_onehot
from pprogen.registry import register_model


def check_image_shape(name: str, x_shape: Sequence[int]) -> None:
    if len(x_shape) != 3:
        raise ValueError(f"{name} makes images of shape (C, H, W), got x_shape {list(x_shape)}; use gan (or cgan) "
                         "for vector data such as the 2-D toys")


def _labels(y: torch.Tensor | None, num_classes: int | None, who: str, n: int | None = None) -> torch.Tensor | None:
    """The labels of a conditional GAN, checked (``check_labels``); None for an unconditional one."""
    if not num_classes:
        if y is not None:
            raise ValueError(f"{who} is not conditional but got labels y; use cgan for a label-conditioned GAN")
        return None
    return check_labels(y, num_classes, n, who)


# ---------------------------------------------------------------- networks


class MLPGenerator(nn.Module):
    """``z`` (with a one-hot label appended when conditional) -> MLP -> ``x_shape``; sigmoid when bounded."""

    def __init__(self, z_dim: int, hidden_dims: Sequence[int], x_shape: Sequence[int], num_classes: int | None = None,
                 bounded: bool = False) -> None:
        super().__init__()
        self.x_shape, self.num_classes, self.bounded = tuple(x_shape), num_classes, bounded
        self.net = MLP(z_dim + (num_classes or 0), hidden_dims, math.prod(x_shape), "relu")

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = z if y is None else with_onehot(z, y, self.num_classes)
        out = self.net(h).reshape(z.shape[:-1] + self.x_shape)
        return torch.sigmoid(out) if self.bounded else out


class ProjectionHead(nn.Module):
    """``features -> linear score (+ <embed(y), features>)``: the projection discriminator's output."""

    def __init__(self, width: int, num_classes: int | None) -> None:
        super().__init__()
        self.linear = nn.Linear(width, 1)
        self.embed = nn.Embedding(num_classes, width) if num_classes else None

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = self.linear(h).squeeze(-1)
        if self.embed is not None and y is not None:
            out = out + (self.embed(y.long()) * h).sum(-1)
        return out


class MLPDiscriminator(nn.Module):
    """``x`` -> LeakyReLU MLP -> one score per example, or per pack of ``pack`` examples (PacGAN)."""

    def __init__(self, x_dim: int, hidden_dims: Sequence[int], num_classes: int | None = None, pack: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = x_dim * pack
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = ProjectionHead(width, num_classes)
        self.pack, self.x_dim = pack, x_dim

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        if self.pack > 1:
            if x.shape[0] % self.pack:
                raise ValueError(f"a packed discriminator (pack={self.pack}) needs batches that are a multiple of "
                                 f"{self.pack}, got {x.shape[0]}; choose --batch-size accordingly")
            x = x.reshape(x.shape[0] // self.pack, -1)
        return self.head(self.body(x), y)


class ConvGenerator(nn.Module):
    """DCGAN's generator: ``z`` -> linear -> ``(C0, s, s)`` -> [transposed conv 4x4/2, batch norm, ReLU] x k ->
    conv 3x3 -> sigmoid, where ``s = H / 2^k`` is 4 to 7 pixels."""

    def __init__(self, z_dim: int, x_shape: Sequence[int], channels: int = 64, num_classes: int | None = None) -> None:
        super().__init__()
        c, h, w = x_shape
        k = halvings(h)
        self.start = (channels * 2**k, h // 2**k, w // 2**k)
        self.num_classes = num_classes
        self.head = nn.Sequential(nn.Linear(z_dim + (num_classes or 0), math.prod(self.start)),
                                  nn.BatchNorm1d(math.prod(self.start)), nn.ReLU())
        layers: list[nn.Module] = []
        width = self.start[0]
        for _ in range(k):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.BatchNorm2d(width // 2), nn.ReLU()]
            width //= 2
        layers.append(nn.Conv2d(width, c, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = z if y is None else with_onehot(z, y, self.num_classes)
        return torch.sigmoid(self.body(self.head(h).reshape((-1,) + self.start)))


class ConvDiscriminator(nn.Module):
    """DCGAN's discriminator: [conv 4x4/2, LeakyReLU] x k down to 4-7 pixels, then a projection head."""

    def __init__(self, x_shape: Sequence[int], channels: int = 64, num_classes: int | None = None) -> None:
        super().__init__()
        c, h, w = x_shape
        k = max(1, halvings(h))
        layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(k):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1), nn.LeakyReLU(0.2)]
            width *= 2
            h, w = h // 2, w // 2
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.head = ProjectionHead(width * h * w, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.body(x), y)


# ---------------------------------------------------------------- the noise-to-data GAN


class GAN(PyroModule):
    """z ~ N(0, I) at site ``"z"``, x = G(z) (or G(z, y)) at deterministic site ``"x"``; D judges x."""

    invertible = False

    def __init__(self, x_shape: Sequence[int], z_dim: int, generator: nn.Module, discriminator: nn.Module,
                 num_classes: int | None = None) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.conditional = bool(num_classes)
        self.generator = generator
        self.discriminator = discriminator
        self.generator_ema = frozen_copy(generator)
        self.register_buffer("_zero", torch.zeros(()))

    @property
    def sampler(self) -> nn.Module:
        """The network that draws samples: the moving average in eval mode, the generator in train mode."""
        return self.generator if self.training else self.generator_ema

    def _batch_size(self, num_samples: int | None, y: torch.Tensor | None) -> int:
        if y is not None:
            if num_samples is not None and num_samples != y.shape[0]:
                raise ValueError(f"num_samples={num_samples} disagrees with the {y.shape[0]} labels given; pass one")
            return y.shape[0]
        return 1 if num_samples is None else int(num_samples)

    def checked_labels(self, y: torch.Tensor | None, n: int | None = None) -> torch.Tensor | None:
        """``y`` checked for this GAN: labels in range for a conditional one, None (refused otherwise) for another."""
        return _labels(y, self.num_classes, type(self).__name__.lower(), n)

    def generate(self, net: nn.Module, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Examples of the data's shape from noise ``z`` through ``net`` (the generator or its average)."""
        return net(z, y)

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """z ~ N(0, I) for a batch of ``like``, drawn with torch in the trainer's hot loop."""
        return torch.randn(like.shape[0], self.z_dim, device=like.device, dtype=like.dtype)

    def forward(self, num_samples: int | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        y = _labels(y, self.num_classes, type(self).__name__.lower())
        n = self._batch_size(num_samples, y)
        loc = self._zero.expand(self.z_dim)
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            return pyro.deterministic("x", self.generate(self.sampler, z, y), event_dim=len(self.x_shape))

    def adversarial_terms(
        self, real: torch.Tensor, generator_step: bool, y: torch.Tensor | None = None
    ) -> tuple[list[CriticPair], dict[str, torch.Tensor]]:
        fake = self.generator(self.noise(real), y)
        condition = {} if y is None else {"y": y}
        return [CriticPair(self.discriminator, real, fake, condition)], {}

    def check_data(self, data: torch.Tensor, pairing: str | None = None, y: torch.Tensor | None = None) -> None:
        """One-line errors for data the generator cannot imitate (shape) and for labels (conditional)."""
        if tuple(data.shape[1:]) != self.x_shape:
            raise ValueError(f"the generator makes examples of shape {self.x_shape} but the data have "
                             f"{tuple(data.shape[1:])}; build the model for this data (x_dim / x_shape)")
        _labels(y, self.num_classes, type(self).__name__.lower(), data.shape[0])

    has_latent_mean = False  # x = G(z)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.z_dim,)

    @torch.no_grad()
    def prior_latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.z_dim, device=self._zero.device)

    @torch.no_grad()
    def from_latent(self, z: torch.Tensor, mean: bool = False, y: torch.Tensor | None = None) -> torch.Tensor:
        """x = G(z) from the moving-average generator (labels ``y`` cycling through the classes when not given)."""
        if mean:
            raise ValueError(f"{type(self).__name__.lower()} makes x as a function of z: there is no likelihood mean")
        if self.conditional and y is None:
            y = torch.arange(z.shape[0], device=z.device) % self.num_classes
        y = _labels(y, self.num_classes, type(self).__name__.lower(), z.shape[0])
        was = self.training
        self.eval()
        try:
            return self.generate(self.sampler, z, None if y is None else y.to(z.device))
        finally:
            self.train(was)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples from the moving-average generator (``y``: labels of a conditional GAN; by default
        ``n`` labels cycling through the classes)."""
        if self.conditional and y is None:
            y = torch.arange(n, device=self._zero.device) % self.num_classes
        was = self.training
        self.eval()
        try:
            return self(num_samples=None if y is not None else n, y=None if y is None else y.to(self._zero.device))
        finally:
            self.train(was)


@register_model(kind="gan", reference="Goodfellow et al. 2014, Generative Adversarial Nets; Lin et al. 2018, PacGAN",
                default_data="ring8",
                train_defaults={"loss": "nonsaturating", "epochs": 400, "batch_size": 256, "lr": 1e-3, "lr_d": 1e-3,
                                "betas": [0.5, 0.9], "schedule": "linear", "ema": 0.999, "r1_weight": 0.1})
def gan(x_dim: int = 2, z_dim: int = 2, hidden_dims: Sequence[int] = (128, 128, 128),
        d_hidden_dims: Sequence[int] = (128, 128, 128), pack: int = 1, bounded: bool = False) -> GAN:
    """z ~ N(0, I_z_dim); x = G(z) with G a ReLU MLP; D a LeakyReLU MLP that sees `pack` examples at once
    (PacGAN; 1 = the plain GAN). `bounded` puts a sigmoid on G's output (images in [0, 1])."""
    if pack < 1:
        raise ValueError(f"pack must be a positive integer, got {pack}")
    return GAN((x_dim,), z_dim, MLPGenerator(z_dim, hidden_dims, (x_dim,), bounded=bounded),
               MLPDiscriminator(x_dim, d_hidden_dims, pack=pack))


@register_model(kind="gan", reference="Radford et al. 2016, Unsupervised Representation Learning with Deep "
                "Convolutional GANs", default_data="digits",
                train_defaults={"loss": "nonsaturating", "epochs": 300, "batch_size": 64, "lr": 2e-4, "lr_d": 2e-4,
                                "ema": 0.999})
def dcgan(x_shape: Sequence[int] = (1, 28, 28), z_dim: int = 64, channels: int = 32) -> GAN:
    """z ~ N(0, I); x = G(z): linear to a 4-7 pixel map, transposed convolutions with batch norm doubling it
    to the image size, sigmoid. D: strided LeakyReLU convolutions, no batch norm (so penalties are per example)."""
    check_image_shape("dcgan", x_shape)
    return GAN(x_shape, z_dim, ConvGenerator(z_dim, x_shape, channels), ConvDiscriminator(x_shape, channels))


@register_model(kind="gan", reference="Mirza & Osindero 2014, Conditional GANs; Miyato & Koyama 2018, "
                "cGANs with Projection Discriminator", default_data="digits",
                train_defaults={"loss": "hinge", "epochs": 300, "batch_size": 64, "lr": 2e-4, "lr_d": 2e-4,
                                "ema": 0.999})
def cgan(x_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, z_dim: int = 64, channels: int = 32,
         hidden_dims: Sequence[int] = (256, 256, 256)) -> GAN:
    """y a label; z ~ N(0, I); x = G(z, y) (one-hot y appended to z). D(x, y) = psi(phi(x)) + <embed(y), phi(x)>.
    Convolutional for images (C, H, W), MLPs for vectors (x_shape = [D])."""
    if len(x_shape) == 3:
        g, d = ConvGenerator(z_dim, x_shape, channels, num_classes), ConvDiscriminator(x_shape, channels, num_classes)
    else:
        g = MLPGenerator(z_dim, hidden_dims, x_shape, num_classes)
        d = MLPDiscriminator(math.prod(x_shape), hidden_dims, num_classes)
    return GAN(x_shape, z_dim, g, d, num_classes)


# ---------------------------------------------------------------- progressive growing


class MinibatchStd(nn.Module):
    """Appends one channel: the standard deviation of each feature over the batch, averaged (ProGAN)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        std = h.std(dim=0, unbiased=False).mean() if h.shape[0] > 1 else h.new_zeros(())
        return torch.cat([h, std.expand(h.shape[0], 1, *h.shape[2:])], 1)


def _conv_block(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(b, b, 3, padding=1), nn.LeakyReLU(0.2))


class ProgressiveGenerator(nn.Module):
    """z -> (C0, s, s) -> block_0; each later stage doubles the side (nearest upsampling) and adds a block.
    Every stage has its own ``to_image`` 1x1 conv; while a stage fades in, its output is mixed with the
    upsampled output of the stage before: ``alpha * new + (1 - alpha) * up(old)``."""

    def __init__(self, z_dim: int, x_shape: Sequence[int], channels: int = 64) -> None:
        super().__init__()
        c, h, _ = x_shape
        self.stages = halvings(h) + 1
        self.base = h // 2 ** (self.stages - 1)
        self.channels = channels
        self.head = nn.Sequential(nn.Linear(z_dim, channels * self.base**2), nn.LeakyReLU(0.2))
        self.blocks = nn.ModuleList([_conv_block(channels, channels) for _ in range(self.stages)])
        self.to_image = nn.ModuleList([nn.Conv2d(channels, c, 1) for _ in range(self.stages)])

    def forward(self, z: torch.Tensor, stage: int, alpha: float) -> torch.Tensor:
        h = self.head(z).reshape(-1, self.channels, self.base, self.base)
        h = self.blocks[0](h)
        old = None
        for s in range(1, stage + 1):
            if s == stage:
                old = F.interpolate(self.to_image[s - 1](h), scale_factor=2, mode="nearest")
            h = self.blocks[s](F.interpolate(h, scale_factor=2, mode="nearest"))
        out = self.to_image[stage](h)
        if old is not None and alpha < 1:
            out = alpha * out + (1 - alpha) * old
        return torch.sigmoid(out)


class ProgressiveDiscriminator(nn.Module):
    """The mirror image: ``from_image`` 1x1 conv at the current resolution, blocks each followed by 2x2
    average pooling, a minibatch standard-deviation channel and a linear score. While a stage fades in,
    the features entering the block below are ``alpha * new + (1 - alpha) * from_image(pool(x))``."""

    def __init__(self, x_shape: Sequence[int], channels: int = 64) -> None:
        super().__init__()
        c, h, _ = x_shape
        self.stages = halvings(h) + 1
        self.base = h // 2 ** (self.stages - 1)
        self.from_image = nn.ModuleList([nn.Sequential(nn.Conv2d(c, channels, 1), nn.LeakyReLU(0.2))
                                         for _ in range(self.stages)])
        self.blocks = nn.ModuleList([_conv_block(channels, channels) for _ in range(1, self.stages)])
        self.final = nn.Sequential(MinibatchStd(), nn.Conv2d(channels + 1, channels, 3, padding=1), nn.LeakyReLU(0.2),
                                   nn.Flatten(), nn.Linear(channels * self.base**2, 1))

    def forward(self, x: torch.Tensor, stage: int, alpha: float) -> torch.Tensor:
        h = self.from_image[stage](x)
        for s in range(stage, 0, -1):
            h = F.avg_pool2d(self.blocks[s - 1](h), 2)
            if s == stage and alpha < 1:
                h = alpha * h + (1 - alpha) * self.from_image[s - 1](F.avg_pool2d(x, 2))
        return self.final(h).squeeze(-1)


class ProGAN(GAN):
    """Progressive growing: training runs through the resolutions (7 -> 14 -> 28 for 28x28), spending an
    equal share of the run on each; the first half of each new stage's share fades it in (alpha 0 -> 1).
    Real images are average-pooled to the current resolution (and faded the same way); samples are
    upsampled to the full size, so they always have the data's shape."""

    def __init__(self, x_shape: Sequence[int], z_dim: int, channels: int) -> None:
        generator = ProgressiveGenerator(z_dim, x_shape, channels)
        super().__init__(x_shape, z_dim, generator, ProgressiveDiscriminator(x_shape, channels))
        self.stages = generator.stages
        self.register_buffer("stage", torch.tensor(self.stages - 1))
        self.register_buffer("alpha", torch.tensor(1.0))

    @property
    def resolution(self) -> int:
        return self.x_shape[1] // 2 ** (self.stages - 1 - int(self.stage))

    def schedule(self, progress: float) -> None:
        """Set stage and alpha for ``progress`` in [0, 1] of the run."""
        position = min(max(progress, 0.0), 1.0) * self.stages
        stage = min(int(position), self.stages - 1)
        within = position - stage
        self.stage.fill_(stage)
        self.alpha.fill_(1.0 if stage == 0 else min(1.0, 2 * within))

    def _at_resolution(self, x: torch.Tensor) -> torch.Tensor:
        """Real images at the current resolution, faded like the generator's output."""
        size = self.resolution
        low = F.adaptive_avg_pool2d(x, size)
        alpha = float(self.alpha)
        if int(self.stage) > 0 and alpha < 1:
            low = alpha * low + (1 - alpha) * F.interpolate(F.avg_pool2d(low, 2), scale_factor=2, mode="nearest")
        return low

    def _at_stage(self, net: nn.Module, z: torch.Tensor) -> torch.Tensor:
        return net(z, int(self.stage), float(self.alpha))

    def generate(self, net: nn.Module, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images at the current resolution, upsampled (nearest) to the data's size."""
        x = self._at_stage(net, z)
        return x if x.shape[-1] == self.x_shape[-1] else F.interpolate(x, size=self.x_shape[1:], mode="nearest")

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator(x, int(self.stage), float(self.alpha))

    def adversarial_terms(
        self, real: torch.Tensor, generator_step: bool, y: torch.Tensor | None = None
    ) -> tuple[list[CriticPair], dict[str, torch.Tensor]]:
        return [CriticPair(self.critic, self._at_resolution(real), self._at_stage(self.generator, self.noise(real)))], {}


@register_model(kind="gan", reference="Karras et al. 2018, Progressive Growing of GANs", default_data="digits28",
                train_defaults={"loss": "wgan_gp", "epochs": 60, "batch_size": 64, "lr": 1e-3, "lr_d": 1e-3,
                                "betas": [0.0, 0.99], "ema": 0.999})
def progan(x_shape: Sequence[int] = (1, 28, 28), z_dim: int = 64, channels: int = 32) -> ProGAN:
    """z ~ N(0, I); G grows from a 4-7 pixel map to the image size one doubling at a time, each new
    resolution faded in; D mirrors it, with a minibatch standard-deviation channel."""
    check_image_shape("progan", x_shape)
    if x_shape[1] != x_shape[2]:
        raise ValueError(f"progan grows square images; got {x_shape[1]}x{x_shape[2]}")
    if halvings(x_shape[1]) < 1:
        raise ValueError(f"progan needs an image side that halves at least once to 4 pixels or more, got {x_shape[1]}")
    return ProGAN(x_shape, z_dim, channels)
