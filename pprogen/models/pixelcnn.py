r"""PixelCNN for binary images: masked convolutions give every pixel's conditional in one pass.

.. math::

    p(x) = \prod_{h, w} \prod_{c} \mathrm{Bernoulli}\big(x_{c,h,w} \mid \sigma(f_{c,h,w}(x_{\text{before } (c,h,w)}))\big)

in raster order, channels (R, G, B for colour) in order inside a pixel. The first layer is a type-A
masked convolution (a pixel does not see itself), the rest type B (a channel group sees itself). With
``gated=True`` the residual blocks use gated activations, :math:`\tanh(W_f * h) \odot \sigma(W_g * h)`
(van den Oord et al., 2016); this keeps the single masked stack, so PixelCNN's blind spot stays (the
two-stack gated architecture is not implemented). Sampling runs pixel by pixel.

References: van den Oord, Kalchbrenner & Kavukcuoglu, Pixel Recurrent Neural Networks, ICML 2016,
arXiv:1601.06759; van den Oord et al., Conditional Image Generation with PixelCNN Decoders, NeurIPS 2016,
arXiv:1606.05328.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pprogen.models.autoregressive import AutoregressiveBernoulli, AutoregressiveModel
from pprogen.registry import register_model


def conv_mask(kind: str, in_channels: int, out_channels: int, kernel_size: int, groups: int) -> torch.Tensor:
    """Mask of a masked convolution: rows above, pixels to the left, and channel groups in order at the centre."""
    mask = torch.zeros(out_channels, in_channels, kernel_size, kernel_size)
    centre = kernel_size // 2
    mask[:, :, :centre, :] = 1
    mask[:, :, centre, :centre] = 1
    out_group = torch.arange(out_channels) * groups // out_channels
    in_group = torch.arange(in_channels) * groups // in_channels
    allowed = in_group[None, :] < out_group[:, None] if kind == "A" else in_group[None, :] <= out_group[:, None]
    mask[:, :, centre, centre] = allowed.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A same-padded convolution whose kernel is masked (type ``"A"`` or ``"B"``); the mask is a buffer."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> None:
        if kind not in ("A", "B") or kernel_size % 2 == 0:
            raise ValueError(f"masked convolutions are of type 'A' or 'B' with an odd kernel, got {kind!r}, {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.register_buffer("mask", conv_mask(kind, in_channels, out_channels, kernel_size, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class Block(nn.Module):
    """Residual block of type-B masked convolutions, plain (ReLU) or gated (tanh x sigmoid)."""

    def __init__(self, channels: int, kernel_size: int, groups: int, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        self.conv = MaskedConv2d("B", channels, channels * (2 if gated else 1), kernel_size, groups)
        if gated:  # the filter and gate halves are multiplied channel by channel: same groups in both
            self.conv.mask.copy_(conv_mask("B", channels, channels, kernel_size, groups).repeat(2, 1, 1, 1))
        self.out = MaskedConv2d("B", channels, channels, 1, groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.conv(h)
        if self.gated:
            f, g = z.chunk(2, 1)
            z = torch.tanh(f) * torch.sigmoid(g)
        else:
            z = F.relu(z)
        return h + self.out(z)


class PixelCNN(AutoregressiveModel):
    def __init__(self, x_shape: Sequence[int], hidden_channels: int = 64, num_blocks: int = 5, kernel_size: int = 7,
                 gated: bool = False) -> None:
        x_shape = tuple(int(s) for s in x_shape)
        if len(x_shape) != 3 or x_shape[0] not in (1, 3) or min(x_shape[1:]) < 1:
            raise ValueError(
                f"pixelcnn takes images of shape (C, H, W) with 1 or 3 channels, got {x_shape}; "
                "reshape the data to (1, H, W) or (3, H, W)"
            )
        c, h, w = x_shape
        if hidden_channels % c:
            raise ValueError(f"hidden_channels ({hidden_channels}) must be a multiple of the image channels ({c})")
        channels = hidden_channels
        super().__init__(c * h * w)
        self.x_shape = x_shape
        self.first = MaskedConv2d("A", c, channels, kernel_size, groups=c)
        self.blocks = nn.ModuleList(Block(channels, 3, c, gated) for _ in range(num_blocks))
        self.head = MaskedConv2d("B", channels, c, 1, groups=c)
        # generation order: pixels in raster order, channels in order inside each pixel
        index = torch.arange(c * h * w).reshape(c, h, w).permute(1, 2, 0).reshape(1, -1)
        self.order = index

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-3]
        h = F.relu(self.first(x.reshape((-1,) + self.x_shape)))
        for block in self.blocks:
            h = F.relu(block(h))
        return self.head(h).reshape(batch + self.x_shape)

    def distribution(self) -> AutoregressiveBernoulli:
        return AutoregressiveBernoulli([self.logits], self.order, event_shape=self.x_shape)


@register_model(
    kind="autoregressive",
    default_data="digits_binary",
    reference="van den Oord, Kalchbrenner & Kavukcuoglu, Pixel Recurrent Neural Networks, ICML 2016, arXiv:1601.06759",
    story="p(x) = prod over pixels (raster order) and channels of Bernoulli(x | sigmoid(masked-conv net of "
    "the pixels before)); type-A first layer, type-B residual blocks, optional gated activations",
)
def pixelcnn(x_shape: Sequence[int] = (1, 28, 28), hidden_channels: int = 64, num_blocks: int = 5,
             kernel_size: int = 7, gated: bool = False) -> PixelCNN:
    """PixelCNN on binary images with 1 or 3 channels."""
    return PixelCNN(x_shape, hidden_channels, num_blocks, kernel_size, gated)
