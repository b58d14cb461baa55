"""Image sets made on this machine, no download: scikit-learn's 8x8 digits (grey, binary, upsampled to 28x28),
rendered sprites with their ground-truth factors, and translation pairs made from the digits (an A image
stacked over a B image in the channels).
"""

from __future__ import annotations

import math

import torch

from pprogen.data.dataset import Dataset, split_arrays
from pprogen.data.registry import register_dataset


def load_digits(binary: bool = False) -> Dataset:
    """scikit-learn's 8x8 digits in [0, 1] (17 grey levels), split 70/15/15; ``binary``: thresholded at 0.5."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if binary:
        x = (x >= 0.5).float()
    y = torch.tensor(bunch.target, dtype=torch.long)
    (train, valid, test), labels = split_arrays(x, y, fractions=(0.7, 0.15))
    return Dataset("digits_binary" if binary else "digits", train, valid, test, shape=(1, 8, 8), binary=binary,
                   labels=labels, num_classes=10)


def load_digits28(binary: bool = False) -> Dataset:
    """The 8x8 digits upsampled bilinearly to 28x28 (labels kept); ``binary``: thresholded at 0.5, shaped like
    binarized MNIST (an offline second image set for out-of-distribution tests of MNIST models)."""
    import torch.nn.functional as F

    small = load_digits()

    def up(x):
        if x is None:
            return None
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
        return (x >= 0.5).float() if binary else x

    return Dataset("digits28_binary" if binary else "digits28", up(small.train), up(small.valid), up(small.test),
                   shape=(1, 28, 28), binary=binary, labels=dict(small.labels), num_classes=small.num_classes)


SPRITE_FACTORS = {  # name: values (the data set holds every combination once)
    "shape": ("square", "ellipse", "triangle"),
    "scale": (3.0, 4.0, 5.0),  # half-size in pixels
    "rotation": tuple(math.radians(a) for a in (0, 18, 36, 54, 72)),
    "x": tuple(6.0 + i * 12 / 7 for i in range(8)),  # the centre, in pixels of a 24 x 24 canvas
    "y": tuple(6.0 + i * 12 / 7 for i in range(8)),
}


def render_sprites(factors: torch.Tensor, size: int = 24) -> torch.Tensor:
    """Binary images (N, 1, size, size) of sprites with the given factor indices (N, 5): shape, scale, rotation,
    x, y (see :data:`SPRITE_FACTORS`); a pixel is on when its centre lies inside the rotated, scaled shape."""
    values = [torch.tensor(v, dtype=torch.float64) for k, v in SPRITE_FACTORS.items() if k != "shape"]
    scale, angle, cx, cy = (v[factors[:, i + 1]] for i, v in enumerate(values))
    grid = torch.arange(size, dtype=torch.float64) + 0.5
    px, py = grid[None, None, :] - cx[:, None, None], grid[None, :, None] - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = (cos * px + sin * py) / scale[:, None, None]
    v = (-sin * px + cos * py) / scale[:, None, None]
    inside = torch.stack([
        (u.abs() <= 1) & (v.abs() <= 1),
        u.pow(2) + (v / 0.6).pow(2) <= 1,
        (v >= -0.8) & (v <= 1 - 1.8 * u.abs()),
    ])  # (3, N, H, W)
    picked = inside[factors[:, 0], torch.arange(factors.shape[0])]
    return picked.float().unsqueeze(1)


def load_sprites() -> Dataset:
    """Every combination of five factors (3 shapes x 3 scales x 5 rotations x 8 x 8 positions = 2880 binary 24 x 24
    images, made here, no download), split 80/10/10 at random; ``factors`` holds each image's factor indices and
    ``labels`` its shape. A small offline stand-in for dSprites (Matthey et al. 2017) to measure disentanglement."""
    sizes = [len(v) for v in SPRITE_FACTORS.values()]
    factors = torch.cartesian_prod(*[torch.arange(n) for n in sizes])
    x = render_sprites(factors)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    n_train, n_valid = int(0.8 * x.shape[0]), int(0.1 * x.shape[0])
    parts = dict(zip(("train", "valid", "test"), (order[:n_train], order[n_train:n_train + n_valid],
                                                   order[n_train + n_valid:])))
    return Dataset("sprites", *(x[i] for i in parts.values()), shape=(1, 24, 24), binary=True,
                   labels={k: factors[i, 0] for k, i in parts.items()}, num_classes=3,
                   factors={k: factors[i] for k, i in parts.items()}, factor_names=tuple(SPRITE_FACTORS))


def _dilate(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)


def erode(x: torch.Tensor) -> torch.Tensor:
    return -_dilate(-x)


TRANSLATIONS = {
    # name: (make A from a digit, make B from a digit, paired)
    "edges2digits": (lambda x: ((x >= 0.5) & (erode((x >= 0.5).float()) < 1)).float(), lambda x: x, True),
    "digits2inverted": (lambda x: x, lambda x: 1 - x, False),
    "digits2thick": (lambda x: x, _dilate, False),
}


def load_translation(name: str) -> Dataset:
    """Two domains made from the digits, each example ``cat([A, B])`` along the channels. Paired sets take A and
    B from the same digit; unpaired ones take B from another digit of the split (a fixed derangement), so
    no example's B is its A's translation."""
    make_a, make_b, paired = TRANSLATIONS[name]
    digits = load_digits()

    def stack(x, seed):
        if x is None:
            return None
        other = x
        if not paired:
            n = x.shape[0]
            shift = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            other = x[shift[(torch.argsort(shift) + 1) % n]]  # each row gets another row's digit
        return torch.cat([make_a(x), make_b(other)], 1)

    splits = [stack(t, i) for i, t in enumerate((digits.train, digits.valid, digits.test))]
    return Dataset(name, *splits, shape=(2, 8, 8), binary=False, labels=dict(digits.labels) if paired else {},
                   num_classes=digits.num_classes if paired else None, image_shape=(2, 8, 8),
                   pairing="paired" if paired else "unpaired")


# ---------------------------------------------------------------- registered data sets

DIGITS = "E. Alpaydin, C. Kaynak, Optical Recognition of Handwritten Digits, UCI repository, 1998 (via scikit-learn)"
DSPRITES = "stand-in for dSprites: L. Matthey, I. Higgins, D. Hassabis, A. Lerchner, dSprites, 2017"


@register_dataset("digits", kind="image", shape=(1, 8, 8), binary=False, num_classes=10, reference=DIGITS)
def digits() -> Dataset:
    """scikit-learn's 8x8 digits in [0, 1] (17 grey levels), split 70/15/15: the offline default."""
    return load_digits(binary=False)


@register_dataset("digits_binary", kind="image", shape=(1, 8, 8), binary=True, num_classes=10, reference=DIGITS)
def digits_binary() -> Dataset:
    """The 8x8 digits thresholded at 0.5."""
    return load_digits(binary=True)


@register_dataset("digits28", kind="image", shape=(1, 28, 28), binary=False, num_classes=10, reference=DIGITS)
def digits28() -> Dataset:
    """The 8x8 digits upsampled bilinearly to 28x28: a 28x28 image set that needs no download."""
    return load_digits28(binary=False)


@register_dataset("digits28_binary", kind="image", shape=(1, 28, 28), binary=True, num_classes=10, reference=DIGITS)
def digits28_binary() -> Dataset:
    """The 28x28 digits thresholded at 0.5, shaped like binarized MNIST (out-of-distribution tests of its models)."""
    return load_digits28(binary=True)


@register_dataset("sprites", kind="image", shape=(1, 24, 24), binary=True, num_classes=3, reference=DSPRITES)
def sprites() -> Dataset:
    """2880 binary 24x24 sprites, every combination of shape, scale, rotation, x and y, with those ground-truth
    factors (for disentanglement scores); the labels are the shapes."""
    return load_sprites()


@register_dataset("edges2digits", kind="translation", shape=(2, 8, 8), binary=False, num_classes=10)
def edges2digits() -> Dataset:
    """Paired translation: A is the outline of a digit's pixels >= 0.5, B the digit."""
    return load_translation("edges2digits")


@register_dataset("digits2inverted", kind="translation", shape=(2, 8, 8), binary=False)
def digits2inverted() -> Dataset:
    """Unpaired translation: A a digit, B the inverted image of a *different* digit."""
    return load_translation("digits2inverted")


@register_dataset("digits2thick", kind="translation", shape=(2, 8, 8), binary=False)
def digits2thick() -> Dataset:
    """Unpaired translation: A a digit, B the dilated (thicker) image of a *different* digit."""
    return load_translation("digits2thick")
