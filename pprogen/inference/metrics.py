"""Sample-quality metrics that work offline: modes on the 2-D benchmarks, kernel MMD, and Fréchet distance,
precision / recall and a classifier score in the features of a small digit classifier trained and cached here.

- :func:`mode_metrics`: the VEEGAN / PacGAN protocol. A sample is *high quality* when it lies within
  ``3 sigma`` of its nearest mode; a mode is *covered* when at least one high-quality sample is its own;
  the reverse KL compares the share of high-quality samples per mode with the uniform weights of the data.
- :func:`mmd_unbiased`: the unbiased estimator of the squared maximum mean discrepancy (Gretton et al. 2012,
  eq. 3) with a sum of Gaussian kernels.
- :func:`frechet_distance`: ``|mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1^1/2 C_2 C_1^1/2)^1/2)`` between the
  Gaussians fitted to two feature sets (FID's formula; here in the features of :class:`DigitClassifier`,
  since Inception weights cannot be downloaded offline, so the numbers are not comparable with published FIDs).
- :func:`precision_recall`: the k-NN manifold estimates of Kynkäänniemi et al. (2019).
- :func:`classifier_score`: ``exp(E_x KL(p(y | x) || p(y)))``, the Inception score's formula with our classifier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pprogen.capabilities import capabilities
from pprogen.runs import atomic_write, write_json

logger = logging.getLogger(__name__)  # no handler here: the command line decides what is shown

CACHE_ENV = "PPROGEN_CACHE"


# ---------------------------------------------------------------- 2-D mode benchmarks


def mode_metrics(samples: torch.Tensor, centers: torch.Tensor, sigma: float, within: float = 3.0) -> dict:
    """Modes covered, the share of high-quality samples and the reverse KL over modes.

    ``samples`` ``(N, D)``; ``centers`` ``(M, D)`` the modes, equally weighted; ``sigma`` their standard
    deviation. Returns ``modes`` (covered, out of ``num_modes``), ``high_quality`` (a share in [0, 1]),
    ``reverse_kl`` = ``sum_m q_m log(q_m M)`` with ``q`` the high-quality samples' shares per mode (0 when they
    spread evenly; None when no sample is high quality: q is then undefined, and a JSON file holds None as it is) and
    ``counts`` per mode.
    """
    samples = samples.detach().double().cpu()
    centers = torch.as_tensor(centers).double()
    if samples.ndim != 2 or samples.shape[1] != centers.shape[1]:
        raise ValueError(f"samples must have shape (N, {centers.shape[1]}) to be scored against these modes, "
                         f"got {tuple(samples.shape)}")
    distance, nearest = torch.cdist(samples, centers).min(dim=1)
    good = distance < within * sigma
    counts = torch.bincount(nearest[good], minlength=centers.shape[0])
    q = counts.double() / counts.sum().clamp(min=1)
    kl = (q[q > 0] * (q[q > 0] * centers.shape[0]).log()).sum().item() if good.any() else None
    return {
        "modes": int((counts > 0).sum()),
        "num_modes": int(centers.shape[0]),
        "high_quality": good.double().mean().item(),
        "reverse_kl": kl,
        "counts": counts.tolist(),
    }


# ---------------------------------------------------------------- kernel two-sample statistic


def _median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    pooled = torch.cat([x, y])[:2000]
    d = torch.cdist(pooled, pooled)
    return d[d > 0].median().item() if (d > 0).any() else 1.0


def mmd_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] | None = None) -> float:
    """Unbiased squared MMD between samples ``x`` ``(N, D)`` and ``y`` ``(M, D)``.

    The kernel is ``sum_b exp(-|u - v|^2 / (2 b^2))``; ``bandwidths`` default to the median distance of the
    pooled samples times 0.5, 1 and 2. The diagonals are left out of the within-sample means, so the
    estimate is unbiased: it averages to the population MMD^2 and can be negative when that is 0.
    """
    x = x.detach().double().reshape(x.shape[0], -1)
    y = y.detach().double().reshape(y.shape[0], -1)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples on each side")
    if bandwidths is None:
        median = _median_bandwidth(x, y)
        bandwidths = (0.5 * median, median, 2 * median)

    def kernel(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * bw**2)) for bw in bandwidths)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return (within_x + within_y - 2 * kxy.mean()).item()


# ---------------------------------------------------------------- feature-space metrics


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``x`` ``(N, D)`` and ``y`` ``(M, D)``.

    ``tr((C_1 C_2)^1/2)`` is computed as ``tr((C_1^1/2 C_2 C_1^1/2)^1/2)``, a symmetric matrix, in float64,
    so it needs no complex arithmetic.
    """
    x, y = x.detach().double(), y.detach().double()
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("the Fréchet distance needs at least 2 feature vectors on each side")
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = torch.atleast_2d(torch.cov(x.T)), torch.atleast_2d(torch.cov(y.T))
    root = _psd_sqrt(cov_x)
    cross = torch.linalg.eigvalsh(root @ cov_y @ root).clamp(min=0).sqrt().sum()
    return ((mu_x - mu_y).pow(2).sum() + cov_x.trace() + cov_y.trace() - 2 * cross).item()


def _kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    distances = torch.cdist(x, x)
    return distances.kthvalue(k + 1, dim=1).values  # k + 1: each point is its own nearest neighbour


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls
    around its points reaching their k-th nearest neighbour; precision is the share of ``fake`` inside the
    real manifold, recall the share of ``real`` inside the fake one."""
    real, fake = real.detach().double(), fake.detach().double()
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision and recall with k = {k} need more than {k} samples on each side")

    def inside(points, support, radii):
        return (torch.cdist(points, support) <= radii[None, :]).any(dim=1).double().mean().item()

    precision = inside(fake, real, _kth_neighbour_radius(real, k))
    recall = inside(real, fake, _kth_neighbour_radius(fake, k))
    return precision, recall


def classifier_score(probs: torch.Tensor) -> float:
    """``exp(mean_x KL(p(y | x) || p(y)))`` from class probabilities ``(N, K)``: K for confident samples
    spread evenly over K classes, 1 when every sample gets the same prediction."""
    probs = probs.detach().double().clamp(min=1e-12)
    marginal = probs.mean(0, keepdim=True)
    return math.exp((probs * (probs.log() - marginal.log())).sum(1).mean().item())


class DigitClassifier(nn.Module):
    """A small convolutional classifier whose penultimate layer gives the features for the metrics."""

    def __init__(self, shape: Sequence[int], num_classes: int = 10, feature_dim: int = 64) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = tuple(shape)
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d((min(h, 7), min(w, 7))) if h > 8 else nn.Identity(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        )
        with torch.no_grad():
            width = self.body(torch.zeros(1, *shape)).shape[1]
        self.features = nn.Sequential(nn.Linear(width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.body(x.reshape(-1, *self.shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and class probabilities, in batches."""
        was = self.training
        self.eval()
        feats = torch.cat([self.embed(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        self.train(was)
        return feats, self.head(feats).softmax(-1)


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int = 30, seed: int = 0,
                     batch_size: int = 64) -> DigitClassifier:
    """Fit a :class:`DigitClassifier` to images ``x`` with integer labels ``y`` (Adam, small random shifts)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = DigitClassifier(tuple(x.shape[1:]), num_classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for i in range(0, x.shape[0], batch_size):
            rows = order[i : i + batch_size]
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
            batch = torch.roll(x[rows], shifts=shift, dims=(-2, -1))
            loss = F.cross_entropy(net(batch), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


def random_affine(x: torch.Tensor, generator: torch.Generator, rotate: float = 8.0, scale: float = 0.08,
                  shear: float = 0.1, shift: float = 0.1) -> torch.Tensor:
    """Images ``(N, C, H, W)`` under small random warps: rotations of ``rotate`` degrees (standard deviation),
    scalings and shears of ``scale`` and ``shear``, shifts up to ``shift`` of half the frame. Binary images stay
    binary (thresholded at 0.5 after the warp)."""
    n = x.shape[0]
    angle = torch.deg2rad(torch.randn(n, generator=generator) * rotate)
    s = 1 + scale * torch.randn(n, generator=generator)
    h = shear * torch.randn(n, generator=generator)
    tx, ty = (torch.rand(2, n, generator=generator) - 0.5) * 2 * shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos / s, -sin / s + h, tx], 1), torch.stack([sin / s, cos / s, ty], 1)], 1)
    warped = F.grid_sample(x, F.affine_grid(theta.to(x), list(x.shape), align_corners=False), align_corners=False)
    binary = bool(((x == 0) | (x == 1)).all())
    return (warped > 0.5).to(x) if binary else warped


def train_self_training_classifier(x: torch.Tensor, y: torch.Tensor, unlabelled: torch.Tensor, num_classes: int,
                                   steps: tuple[int, int] = (1500, 3000), threshold: float = 0.9, repeat: int = 10,
                                   seed: int = 0, batch_size: int = 128) -> tuple[DigitClassifier, dict]:
    """A classifier from few labels and many images (one round of self-training): fit a network to the labelled
    images under random warps; label the unlabelled images it gives a probability above ``threshold``; fit a fresh
    network to those and the labelled images (each ``repeat`` times). Returns it and how many images it labelled."""
    generator = torch.Generator().manual_seed(seed)

    def fit(images: torch.Tensor, labels: torch.Tensor, num_steps: int, net_seed: int) -> DigitClassifier:
        with torch.random.fork_rng():
            torch.manual_seed(net_seed)
            net = DigitClassifier(tuple(images.shape[1:]), num_classes)
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
        net.train()
        for _ in range(num_steps):
            rows = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
            loss = F.cross_entropy(net(random_affine(images[rows], generator)), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return net.eval()

    first = fit(x, y, steps[0], seed)
    confidence, guess = first.predict(unlabelled)[1].max(1)
    sure = confidence > threshold
    images = torch.cat([unlabelled[sure], x.repeat(repeat, *([1] * (x.dim() - 1)))])
    labels = torch.cat([guess[sure], y.repeat(repeat)])
    return fit(images, labels, steps[1], seed + 1), {"pseudo_labelled": int(sure.sum())}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pprogen")


def cached_classifier(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                      valid: tuple[torch.Tensor, torch.Tensor] | None = None,
                      directory: str | os.PathLike | None = None,
                      unlabelled: torch.Tensor | None = None) -> tuple[DigitClassifier, dict]:
    """The feature classifier for a labelled image set, trained once and cached as safetensors.

    The cache key hashes the training images and labels (and ``unlabelled``), so another data set (or a changed
    one) gets its own classifier. With ``unlabelled`` images (a data set with a small labelled sample) it is
    trained by :func:`train_self_training_classifier`. Returns the network and its card (``accuracy`` on
    ``valid`` when given).
    """
    from safetensors.torch import load_file, save_file

    x, y = x.detach().float().cpu(), y.detach().long().cpu()
    hashed = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes())
    if unlabelled is not None:
        unlabelled = unlabelled.detach().float().cpu()
        hashed.update(b"self-training" + unlabelled.numpy().tobytes())
    digest = hashed.hexdigest()[:16]
    folder = Path(directory) if directory is not None else cache_dir()
    weights = folder / f"classifier-{name}-{digest}.safetensors"
    card_path = weights.with_suffix(".json")
    net = DigitClassifier(tuple(x.shape[1:]), num_classes)
    if weights.is_file() and card_path.is_file():
        try:
            net.load_state_dict(load_file(str(weights)))
            return net.eval(), json.loads(card_path.read_text())
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            pass
    card = {"data": name, "train_examples": int(x.shape[0])}
    logger.info("training the %s feature classifier (once: cached in %s)", name, folder)
    if unlabelled is None:
        net = train_classifier(x, y, num_classes)
    else:
        net, info = train_self_training_classifier(x, y, unlabelled, num_classes)
        card.update(method="self-training from the labelled sample", unlabelled_examples=int(unlabelled.shape[0]), **info)
    card["feature_dim"] = net.head.in_features
    if valid is not None:
        _, probs = net.predict(valid[0].float().cpu())
        card["accuracy"] = (probs.argmax(1) == valid[1].cpu()).double().mean().item()
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(tensors, tmp))
    write_json(card_path, card)
    return net, card


def image_metrics(classifier: DigitClassifier, real: torch.Tensor, fake: torch.Tensor,
                  fake_labels: torch.Tensor | None = None, k: int = 3) -> dict:
    """Fréchet distance, precision, recall, ``feature_mmd`` (all in the classifier's features) and the classifier score
    of ``fake``; with ``fake_labels`` (a conditional model's requested classes) also ``label_agreement``, the
    share of samples the classifier puts in the requested class."""
    real_feats, _ = classifier.predict(real.float().cpu())
    fake_feats, probs = classifier.predict(fake.float().cpu())
    precision, recall = precision_recall(real_feats, fake_feats, k)
    out = {
        "frechet_distance": frechet_distance(real_feats, fake_feats),
        "precision": precision,
        "recall": recall,
        "feature_mmd": mmd_unbiased(real_feats, fake_feats),
        "classifier_score": classifier_score(probs),
        "num_real": int(real.shape[0]),
        "num_fake": int(fake.shape[0]),
    }
    if fake_labels is not None:
        out["label_agreement"] = (probs.argmax(1) == fake_labels.cpu()).double().mean().item()
    return out


def translates(model) -> bool:
    """True for translation models (CycleGAN, pix2pix): data are (A, B) pairs stacked in the channels."""
    return capabilities(model).translates


def evaluate_samples(model, dataset, split: str = "valid", num_samples: int = 2500, device=None) -> dict:
    """A GAN's score on a :class:`~pprogen.data.Dataset` split (what ``pprogen evaluate`` reports for GANs):
    mode coverage on ring8 / grid25, kernel MMD, and Fréchet distance, precision, recall and the classifier
    score in the features of a digit classifier cached for labelled image data; translation models are scored
    on their translations of the split's sources (L1 to the paired targets, cycle L1)."""
    from pprogen.data import MODES

    device = next(model.parameters()).device if device is None else device
    real = dataset.split(split).to(device)
    torch.manual_seed(0)
    result: dict = {"split": split}
    translating = translates(model)
    target = (lambda t: model.split(t)[1]) if translating else (lambda t: t)  # the images the generator imitates
    fake_labels = None
    if translating:
        a, b = model.split(real)
        fake = model.sample(a.shape[0], a)
        result["method"] = f"translations of the {a.shape[0]} {split} sources"
        if dataset.pairing == "paired":
            result["l1_to_target"] = (fake - b).abs().mean().item()
        if "ba" in model.generator:
            with torch.no_grad():
                result["cycle_l1"] = (model.cycle_loss(a, b, model.generator_ema) / 2).item()
    else:
        if capabilities(model).conditional:
            fake_labels = torch.arange(num_samples, device=device) % model.num_classes
        fake = model.sample(num_samples, y=fake_labels)
        averaged = "moving-average " if isinstance(getattr(model, "generator_ema", None), torch.nn.Module) else ""
        result["method"] = f"{num_samples} samples from the {averaged}generator"
        if dataset.name in MODES:
            result.update(mode_metrics(fake, *MODES[dataset.name]))
    real = target(real)
    result["mmd"] = mmd_unbiased(real[:2000].flatten(1), fake[:2000].flatten(1))  # in data space
    shape = tuple(model.x_shape) if translating else dataset.image_shape
    found = dataset_classifier(dataset, shape, target)
    if found is not None:
        classifier, card = found
        result.update(image_metrics(classifier, real.reshape(-1, *shape), fake.reshape(-1, *shape), fake_labels))
        result["classifier"] = card
    return result


def dataset_classifier(dataset, shape: Sequence[int] | None = None, target=None) -> tuple[DigitClassifier, dict] | None:
    """The cached feature classifier of a labelled image data set (``target`` maps its rows to the images to
    classify, ``shape`` their shape; its card has the accuracy on the validation split where that is labelled), or
    None for data without labels. A data set with only a labelled sample of its rows (``labelled_rows``:
    binarized MNIST's hand labels) gets one trained by self-training on that sample and the rest of its images,
    its accuracy measured on the labelled sample of the validation split."""
    target = target or (lambda t: t)
    shape = tuple(shape or dataset.image_shape or ())
    if dataset.is_image and dataset.labels.get("train") is None and "train" in dataset.labelled_rows:
        rows, labels = dataset.labelled_rows["train"]
        images = target(dataset.train).reshape(-1, *shape)
        valid = None
        if "valid" in dataset.labelled_rows and dataset.valid is not None:
            valid_rows, valid_labels = dataset.labelled_rows["valid"]
            valid = (target(dataset.valid).reshape(-1, *shape)[valid_rows], valid_labels)
        return cached_classifier(dataset.name, images[rows], labels, dataset.num_classes or int(labels.max()) + 1,
                                 valid=valid, unlabelled=images)
    labels = dataset.labels.get("train")
    if not dataset.is_image or labels is None or not dataset.num_classes:
        return None
    valid = None
    if dataset.valid is not None and dataset.labels.get("valid") is not None:
        valid = (target(dataset.valid).reshape(-1, *shape), dataset.labels["valid"])
    return cached_classifier(dataset.name, target(dataset.train).reshape(-1, *shape), labels, dataset.num_classes,
                             valid=valid)
