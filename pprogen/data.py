"""Data sets with train / valid / test splits, labels where they exist, and shape metadata.

``load_dataset(name)`` knows:

- ``digits`` (scikit-learn's 8x8 digits in [0, 1], shipped with scikit-learn: the offline default),
  ``digits_binary`` (the same images thresholded at 0.5) and ``digits28`` (the same images upsampled
  bilinearly to 28x28, a 28x28 image set that needs no download; ``digits28_binary`` thresholds them at 0.5,
  shaped like binarized MNIST);
- ``sprites``: 2880 binary 24x24 sprites, every combination of shape, scale, rotation, x and y, with those
  ground-truth factors (for disentanglement scores);
- translation pairs made from the digits, each example stacking an A image over a B image as ``(2, 8, 8)``:
  ``edges2digits`` (paired: A is the outline of the digit's pixels >= 0.5, B the digit), ``digits2inverted`` and
  ``digits2thick`` (unpaired: A a digit, B the inverted / dilated image of a *different* digit);
- ``binarized_mnist``: the static split of Larochelle & Murray, read from ``binarized_mnist_{train,valid,test}.amat``
  or a ``binarized_mnist.npz`` of packed bits, found in ``data_dir`` / ``$PPROGEN_DATA`` and downloaded
  from its usual location when online;
- ``mnist``, ``fashion_mnist``, ``cifar10`` through torchvision (the last 10 000 training images are the
  validation split);
- 2-D toys: ``moons``, ``circles``, ``ring8``, ``grid25``, ``pinwheel``, ``checkerboard``, ``swiss_roll``;
- discrete toys: ``sprinkler`` (samples of the sprinkler Bayesian network) and ``sprinkler_missing``
  (20% of its entries missing, as NaN);
- a user file or folder: ``.npy``, ``.npz``, ``.pt``, ``.csv`` (empty cells read as NaN, a missing value)
  or a folder of images (one subfolder per label).
"""

from __future__ import annotations

import math
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pprogen.errors import unknown_name_error

DATA_ENV = "PPROGEN_DATA"
BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm")


class DataError(ValueError):
    """A data set that cannot be found, read or used."""


@dataclass
class Dataset:
    """Splits as float tensors ``(N, *shape)``; ``labels`` maps a split to its integer labels."""

    name: str
    train: torch.Tensor
    valid: torch.Tensor | None
    test: torch.Tensor | None
    shape: tuple[int, ...]
    binary: bool
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    num_classes: int | None = None
    image_shape: tuple[int, ...] | None = None
    pairing: str | None = None  # translation sets: "paired" or "unpaired" (A over B in the channels)
    factors: dict[str, torch.Tensor] = field(default_factory=dict)  # split -> (N, F) ground-truth factor indices
    factor_names: tuple[str, ...] | None = None
    # split -> (rows, labels): a labelled sample of a split that has no labels of its own (binarized_mnist)
    labelled_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_shape is None and len(self.shape) == 3:
            self.image_shape = tuple(self.shape)

    @property
    def is_image(self) -> bool:
        """Whether the examples are images (also after ``flat()``: see ``image_shape``)."""
        return self.image_shape is not None

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "valid", "test"):
            raise DataError(f"unknown split {name!r}; choose train, valid or test")
        tensor = getattr(self, name)
        if tensor is None:
            available = [s for s in ("train", "valid", "test") if getattr(self, s) is not None]
            raise DataError(
                f"data set {self.name!r} has no {name!r} split; use --split {available[-1]} "
                f"(available: {', '.join(available)})"
            )
        return tensor

    def flat(self) -> "Dataset":
        """The same data with each example flattened to a vector."""
        def f(t):
            return None if t is None else t.reshape(t.shape[0], -1)

        return Dataset(self.name, f(self.train), f(self.valid), f(self.test), (self.dim,), self.binary,
                       dict(self.labels), self.num_classes, self.image_shape, self.pairing, dict(self.factors),
                       self.factor_names, dict(self.labelled_rows))

    def subset(self, limit: int | None) -> "Dataset":
        """At most ``limit`` examples per split (for smoke tests and quick runs)."""
        if limit is None:
            return self

        def f(t):
            return None if t is None else t[:limit]

        return Dataset(self.name, f(self.train), f(self.valid), f(self.test), self.shape, self.binary,
                       {k: v[:limit] for k, v in self.labels.items()}, self.num_classes, self.image_shape, self.pairing,
                       {k: v[:limit] for k, v in self.factors.items()}, self.factor_names,
                       {k: (rows[rows < limit], y[rows < limit]) for k, (rows, y) in self.labelled_rows.items()})


def _split(x: torch.Tensor, y: torch.Tensor | None, fractions=(0.8, 0.1), seed: int = 0):
    """A fixed random train/valid/test split of one array."""
    n = x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = max(1, int(round(fractions[0] * n)))
    n_valid = int(round(fractions[1] * n))
    parts = order[:n_train], order[n_train : n_train + n_valid], order[n_train + n_valid :]
    xs = [x[p] if len(p) else None for p in parts]
    labels = {}
    if y is not None:
        for key, p in zip(("train", "valid", "test"), parts):
            if len(p):
                labels[key] = y[p]
    return xs, labels


def intensity_levels(x: torch.Tensor) -> int | None:
    """The number of evenly spaced intensity levels of images in [0, 1] (17 for the 8x8 digits, 256 for
    8-bit images, 2 for binary ones), or None when the values are not on such a grid."""
    values = torch.unique(x.detach().float().flatten()).cpu()
    if values.numel() < 2 or values[0] < 0 or values[-1] > 1:
        return None
    gap = (values[1:] - values[:-1]).min().item()
    levels = int(round(1 / gap)) + 1
    scaled = values * (levels - 1)
    return levels if bool(((scaled - scaled.round()).abs() < 1e-3).all()) else None


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _from_arrays(name: str, x: torch.Tensor, y: torch.Tensor | None = None, seed: int = 0) -> Dataset:
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"data set {name!r} is empty: it needs at least one example along its first dimension")
    x = x.float()
    (train, valid, test), labels = _split(x, y, seed=seed)
    return Dataset(name, train, valid, test, tuple(x.shape[1:]), _is_binary(x), labels,
                   int(y.max()) + 1 if y is not None else None)


# ---------------------------------------------------------------- embedded and downloaded images


def load_digits(binary: bool = False) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if binary:
        x = (x >= 0.5).float()
    y = torch.tensor(bunch.target, dtype=torch.long)
    (train, valid, test), labels = _split(x, y, fractions=(0.7, 0.15))
    return Dataset("digits_binary" if binary else "digits", train, valid, test, (1, 8, 8), binary, labels, 10)


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
                   (1, 28, 28), binary, dict(small.labels), small.num_classes)


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
    return Dataset("sprites", *(x[i] for i in parts.values()), (1, 24, 24), True,
                   {k: factors[i, 0] for k, i in parts.items()}, 3, factors={k: factors[i] for k, i in parts.items()},
                   factor_names=tuple(SPRITE_FACTORS))


def _dilate(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)


def _erode(x: torch.Tensor) -> torch.Tensor:
    return -_dilate(-x)


TRANSLATIONS = {
    # name: (make A from a digit, make B from a digit, paired)
    "edges2digits": (lambda x: ((x >= 0.5) & (_erode((x >= 0.5).float()) < 1)).float(), lambda x: x, True),
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
    return Dataset(name, *splits, (2, 8, 8), False, dict(digits.labels) if paired else {},
                   digits.num_classes if paired else None, image_shape=(2, 8, 8),
                   pairing="paired" if paired else "unpaired")


def data_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]))
    return dirs


def _read_amat(path: Path) -> torch.Tensor:
    try:
        array = np.loadtxt(path, dtype=np.float32)
    except ValueError as err:
        raise DataError(f"{path} is not a valid .amat file ({err})") from None
    return torch.from_numpy(array.reshape(-1, 1, 28, 28))


def _read_packed_npz(path: Path) -> dict[str, torch.Tensor]:
    with np.load(path, allow_pickle=False) as archive:
        out = {}
        for split in ("train", "valid", "test"):
            if split in archive.files:
                packed = archive[split]
                bits = np.unpackbits(packed, axis=1)[:, :784] if packed.dtype == np.uint8 and packed.shape[1] == 98 else packed
                out[split] = torch.from_numpy(bits.astype(np.float32)).reshape(-1, 1, 28, 28)
    return out


def load_binarized_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    dirs = data_dirs(data_dir)
    splits: dict[str, torch.Tensor] = {}
    for folder in dirs:
        npz = folder / "binarized_mnist.npz"
        for split in ("train", "valid", "test"):
            amat = folder / f"binarized_mnist_{split}.amat"
            if split not in splits and amat.is_file():
                splits[split] = _read_amat(amat)
        if npz.is_file():
            for split, tensor in _read_packed_npz(npz).items():
                splits.setdefault(split, tensor)
    if "train" not in splits and download:
        target = dirs[0] if dirs else Path.home() / ".cache" / "pprogen"
        try:
            target.mkdir(parents=True, exist_ok=True)
            for split in ("train", "valid", "test"):
                dest = target / f"binarized_mnist_{split}.amat"
                with urllib.request.urlopen(BINARIZED_MNIST_URL.format(split=split), timeout=20) as resp:
                    payload = resp.read()
                tmp = dest.with_suffix(".part")
                tmp.write_bytes(payload)
                os.replace(tmp, dest)
                splits[split] = _read_amat(dest)
        except OSError:
            splits = {}
    if "train" not in splits:
        where = ", ".join(str(d) for d in dirs) or "no folder given"
        raise DataError(
            "binarized_mnist not found (looked in: " + where + ") and it could not be downloaded; "
            "put binarized_mnist_{train,valid,test}.amat or binarized_mnist.npz in a folder and pass "
            f"--data-dir FOLDER (or set {DATA_ENV}=FOLDER)"
        )
    return Dataset("binarized_mnist", splits["train"], splits.get("valid"), splits.get("test"), (1, 28, 28), True,
                   labelled_rows=hand_labels(splits))


HAND_LABELS = Path(__file__).parent / "labels" / "binarized_mnist.json"


def hand_labels(splits: dict[str, torch.Tensor], path: Path = HAND_LABELS) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The digit labels read by eye for a sample of binarized MNIST's rows (``labels/binarized_mnist.json``), by
    split, as (rows, labels); a split whose labelled rows are not the images the labels were read from (another
    file under the same name) gets none, so no label lands on the wrong image."""
    import hashlib
    import json

    out = {}
    for split, entry in json.loads(path.read_text())["splits"].items():
        x = splits.get(split)
        rows = torch.tensor(entry["index"], dtype=torch.long)
        if x is None or x.shape[0] <= int(rows.max()):
            continue
        pixels = (x[rows].reshape(len(rows), -1) > 0.5).to(torch.uint8).numpy()
        if hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest() == entry["sha256"]:
            out[split] = (rows, torch.tensor(entry["label"], dtype=torch.long))
    return out


_TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def load_torchvision(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[name])
    root = (data_dirs(data_dir) or [Path.home() / ".cache" / "pprogen"])[0]
    try:
        train_set = cls(str(root), train=True, download=download)
        test_set = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as err:
        raise DataError(
            f"{name} is not in {root} and could not be downloaded ({str(err).splitlines()[0]}); put "
            f"torchvision's {_TORCHVISION[name]} files under {root}/ (as torchvision.datasets."
            f"{_TORCHVISION[name]}(root, download=True) leaves them) and pass --data-dir {root}"
        ) from None

    def to_tensor(ds):
        x = torch.as_tensor(np.asarray(ds.data), dtype=torch.float32) / 255.0
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)
        return x, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)

    x, y = to_tensor(train_set)
    x_test, y_test = to_tensor(test_set)
    n_valid = 10000 if x.shape[0] > 20000 else x.shape[0] // 6
    labels = {"train": y[:-n_valid], "valid": y[-n_valid:], "test": y_test}
    return Dataset(name, x[:-n_valid], x[-n_valid:], x_test, tuple(x.shape[1:]), False, labels, 10)


# ---------------------------------------------------------------- 2-D toys


def _moons(n, g):
    t = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    return torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=g), upper.long()


def _circles(n, g):
    outer = torch.rand(n, generator=g) < 0.5
    t = torch.rand(n, generator=g) * 2 * math.pi
    r = torch.where(outer, 1.0, 0.5)
    pts = torch.stack([r * torch.cos(t), r * torch.sin(t)], 1)
    return pts + 0.03 * torch.randn(n, 2, generator=g), outer.long()


def _mixture(centers: torch.Tensor, sigma: float):
    def sample(n, g):
        k = torch.randint(len(centers), (n,), generator=g)
        return centers[k] + sigma * torch.randn(n, 2, generator=g), k

    return sample


RING8_CENTERS = torch.stack(
    [torch.tensor([math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)]) for k in range(8)]
)
GRID25_CENTERS = torch.tensor([[a, b] for a in (-4.0, -2.0, 0.0, 2.0, 4.0) for b in (-4.0, -2.0, 0.0, 2.0, 4.0)])
MODES = {"ring8": (RING8_CENTERS, 0.01), "grid25": (GRID25_CENTERS, 0.05)}  # the mode benchmarks: centers, sigma


def _pinwheel(n, g, arms=5, radial_std=0.3, tangential_std=0.1, rate=0.25):
    k = torch.randint(arms, (n,), generator=g)
    features = torch.randn(n, 2, generator=g) * torch.tensor([radial_std, tangential_std])
    features[:, 0] += 1.0
    angle = 2 * math.pi * k / arms + rate * torch.exp(features[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    rotated = torch.stack([c * features[:, 0] - s * features[:, 1], s * features[:, 0] + c * features[:, 1]], 1)
    return 2 * rotated, k


def _checkerboard(n, g):
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(2, (n,), generator=g) * 2.0
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2, None


def _swiss_roll(n, g):
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 5
    return pts + 0.1 * torch.randn(n, 2, generator=g), None


def _sprinkler(missing: float):
    def sample(n, g):
        from pprogen.dag import ancestral_sample

        x = ancestral_sample("sprinkler", n, generator=g)
        if missing:
            x[torch.rand(x.shape, generator=g) < missing] = float("nan")
        return x, None

    return sample


TOYS: dict[str, Callable] = {
    "moons": _moons,
    "circles": _circles,
    "ring8": _mixture(*MODES["ring8"]),
    "grid25": _mixture(*MODES["grid25"]),
    "pinwheel": _pinwheel,
    "checkerboard": _checkerboard,
    "swiss_roll": _swiss_roll,
}
DISCRETE_TOYS: dict[str, Callable] = {
    "sprinkler": _sprinkler(0.0),  # ancestral samples of the textbook network (columns Cloudy, Sprinkler, Rain, GrassWet)
    "sprinkler_missing": _sprinkler(0.2),  # the same with 20% of the entries missing at random (NaN)
}


def load_toy(name: str, num_train: int = 10000, num_eval: int = 2000, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x, y = {**TOYS, **DISCRETE_TOYS}[name](num_train + 2 * num_eval, g)
    splits = x[:num_train], x[num_train : num_train + num_eval], x[num_train + num_eval :]
    labels = {}
    if y is not None:
        labels = {"train": y[:num_train], "valid": y[num_train : num_train + num_eval], "test": y[num_train + num_eval :]}
    return Dataset(name, *[s.float() for s in splits], tuple(x.shape[1:]), False, labels,
                   int(y.max()) + 1 if y is not None else None)


# ---------------------------------------------------------------- user files


def _load_image_folder(path: Path) -> Dataset:
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"image folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    classes = sorted({p.parent.name for p in files if p.parent != path})
    arrays, labels = [], []
    for f in files:
        try:
            img = np.asarray(Image.open(f))
        except OSError as err:
            raise DataError(f"cannot read image {f} ({err})") from None
        arrays.append(img)
        labels.append(classes.index(f.parent.name) if f.parent != path else 0)
    if len({a.shape for a in arrays}) != 1:
        raise DataError(f"images in {path} differ in size; resize them to one size first")
    x = torch.from_numpy(np.stack(arrays)).float() / 255.0
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)
    y = torch.tensor(labels) if classes else None
    return _from_arrays(path.name, x, y)


def load_file(path: str | os.PathLike) -> Dataset:
    """A user's ``.npy``, ``.npz``, ``.pt``, ``.csv`` or image folder, split 80/10/10 unless it has splits."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        return _load_image_folder(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _from_arrays(path.stem, torch.from_numpy(np.load(path, allow_pickle=False)))
        if suffix == ".csv":
            with open(path) as fh:
                first = fh.readline()
            skip = 0 if all(_is_number(c) for c in first.strip().split(",")) else 1
            return _from_arrays(path.stem, torch.from_numpy(np.atleast_2d(np.genfromtxt(path, delimiter=",", skip_header=skip, dtype=np.float64))))
        if suffix not in (".npz", ".pt"):
            raise DataError(f"unsupported data file {path}; use .npy, .npz, .pt, .csv or a folder of images")
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read data file {path} ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return _from_mapping(path.stem, read_arrays(path), path)


def read_arrays(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The named arrays of a ``.npy`` (as ``x``), ``.npz`` or ``.pt`` file (a tensor as ``x``, or a dict), read
    without pickle; a one-line :class:`DataError` for anything else or a damaged file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        if suffix == ".npy":
            return {"x": torch.from_numpy(np.load(path, allow_pickle=False))}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {k: torch.from_numpy(archive[k]) for k in archive.files}
        if suffix == ".pt":
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            return loaded if isinstance(loaded, dict) else {"x": loaded}
    except Exception as err:
        raise DataError(f"cannot read data file {path} ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    raise DataError(f"unsupported array file {path}; use .npy, .npz or .pt")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _from_mapping(name: str, arrays: dict[str, torch.Tensor], path: Path) -> Dataset:
    if "train" in arrays:
        train = arrays["train"].float()
        labels = {s: arrays[f"{s}_labels"].long() for s in ("train", "valid", "test") if f"{s}_labels" in arrays}
        x_all = torch.cat([arrays[s].float() for s in ("train", "valid", "test") if s in arrays])
        valid = arrays["valid"].float() if "valid" in arrays else None
        test = arrays["test"].float() if "test" in arrays else None
        return Dataset(name, train, valid, test, tuple(train.shape[1:]), _is_binary(x_all), labels)
    key = next((k for k in ("x", "data", "arr_0") if k in arrays), None)
    if key is None:
        raise DataError(f"{path} holds {sorted(arrays)}; name the array 'x' (or 'train'/'valid'/'test')")
    y = next((arrays[k].long() for k in ("y", "labels") if k in arrays), None)
    return _from_arrays(name, arrays[key], y)


# ---------------------------------------------------------------- entry point

NAMES = ("digits", "digits_binary", "digits28", "digits28_binary", "sprites", *TRANSLATIONS, "binarized_mnist", *_TORCHVISION, *TOYS, *DISCRETE_TOYS)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """A data set by name (see the module docstring) or a path to a user file or folder."""
    if name == "digits":
        return load_digits(binary=False)
    if name == "digits_binary":
        return load_digits(binary=True)
    if name == "sprites":
        return load_sprites()
    if name in ("digits28", "digits28_binary"):
        return load_digits28(binary=name == "digits28_binary")
    if name in TRANSLATIONS:
        return load_translation(name)
    if name == "binarized_mnist":
        return load_binarized_mnist(data_dir, download)
    if name in _TORCHVISION:
        return load_torchvision(name, data_dir, download)
    if name in TOYS or name in DISCRETE_TOYS:
        return load_toy(name)
    if os.sep in name or Path(name).suffix or Path(name).exists():
        return load_file(name)
    raise unknown_name_error("data set", name, NAMES)
