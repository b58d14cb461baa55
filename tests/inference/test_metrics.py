"""Offline sample-quality metrics against closed forms and hand-made cases."""

import math

import numpy as np
import pytest
import torch

from pprogen.data import MODES, load_dataset
from pprogen.inference import metrics


def test_mode_metrics_counts_high_quality_samples_and_covered_modes_by_hand():
    centers = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    sigma = 0.1
    samples = torch.tensor([
        [0.05, 0.0],   # mode 0, distance 0.05 < 0.3: high quality
        [0.0, 0.29],   # nearest is mode 0 (0.29 < 0.71), within 0.3
        [1.2, 0.0],    # mode 1, distance 0.2: high quality
        [0.5, 0.5],    # 0.71 from everything: not high quality
        [1.0, 0.31],   # mode 1, 0.31 > 0.3: not high quality
    ])
    out = metrics.mode_metrics(samples, centers, sigma)
    assert out["counts"] == [2, 1, 0]
    assert out["modes"] == 2 and out["num_modes"] == 3
    assert out["high_quality"] == pytest.approx(3 / 5)
    q = np.array([2 / 3, 1 / 3])
    assert out["reverse_kl"] == pytest.approx(float((q * np.log(q * 3)).sum()))


def test_mode_metrics_of_the_data_itself_meet_the_benchmark_definition():
    for name, (centers, sigma) in MODES.items():
        x = load_dataset(name).train[:5000]
        out = metrics.mode_metrics(x, centers, sigma)
        assert out["modes"] == len(centers)
        inside = 1 - math.exp(-4.5)  # a 2-D Gaussian's mass within 3 sigma of its mean (chi^2 with 2 d.o.f.)
        assert abs(out["high_quality"] - inside) < 4 * math.sqrt(inside * (1 - inside) / 5000)
        assert out["reverse_kl"] < 0.01


def test_mode_metrics_reject_samples_of_the_wrong_dimension():
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        metrics.mode_metrics(torch.zeros(4, 3), MODES["ring8"][0], 0.01)


def gaussian_mmd2(mu1, s1, mu2, s2, bw, d):
    """MMD^2 between N(mu1, s1^2 I) and N(mu2, s2^2 I) under exp(-|u - v|^2 / (2 bw^2)), in closed form."""

    def cross(ma, sa, mb, sb):
        var = bw**2 + sa**2 + sb**2
        return (bw**2 / var) ** (d / 2) * math.exp(-((ma - mb) ** 2) * d / (2 * var))

    return cross(mu1, s1, mu1, s1) + cross(mu2, s2, mu2, s2) - 2 * cross(mu1, s1, mu2, s2)


def test_unbiased_mmd_averages_to_the_closed_form():
    torch.manual_seed(0)
    d, bw = 2, 1.0
    expected = gaussian_mmd2(0.0, 1.0, 0.5, 0.7, bw, d)
    estimates = [metrics.mmd_unbiased(torch.randn(60, d), 0.5 + 0.7 * torch.randn(50, d), bandwidths=[bw])
                 for _ in range(400)]
    stderr = np.std(estimates) / math.sqrt(len(estimates))
    assert abs(np.mean(estimates) - expected) < 4 * stderr
    same = [metrics.mmd_unbiased(torch.randn(30, d), torch.randn(30, d), bandwidths=[bw]) for _ in range(400)]
    assert abs(np.mean(same)) < 4 * np.std(same) / math.sqrt(len(same))  # unbiased: 0 on average
    assert min(same) < 0  # the biased (V-statistic) estimate could never go below 0


def test_unbiased_mmd_equals_the_double_sum_written_out():
    torch.manual_seed(1)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) + 1
    k = lambda a, b: math.exp(-float((a - b).pow(2).sum()) / 2)  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert metrics.mmd_unbiased(x, y, bandwidths=[1.0]) == pytest.approx(xx + yy - 2 * xy, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_and_the_diagonal_closed_form():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    torch.manual_seed(0)
    x = torch.randn(400, 3, dtype=torch.float64) @ torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.5, 0.2], [0.1, 0.0, 2.0]]).double()
    y = torch.randn(300, 3, dtype=torch.float64) * torch.tensor([0.5, 1.5, 1.0]).double() + 1.0
    c1, c2 = np.cov(x.numpy().T), np.cov(y.numpy().T)
    expected = (float(((x.mean(0) - y.mean(0)) ** 2).sum()) + np.trace(c1) + np.trace(c2)
                - 2 * np.trace(scipy_linalg.sqrtm(c1 @ c2).real))
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-8)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 exactly, with the sample moments
    a, b = torch.randn(100, 1).double() * 2, torch.randn(80, 1).double() * 0.5 + 3
    closed = float((a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2)
    assert metrics.frechet_distance(a, b) == pytest.approx(closed, rel=1e-10)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_precision_and_recall_on_hand_made_sets():
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    # k = 1: each real point's ball reaches its nearest neighbour, radius 1
    fake = torch.tensor([[0.5, 0.0], [10.0, 0.0], [10.5, 0.0], [2.5, 0.5]])
    precision, recall = metrics.precision_recall(real, fake, k=1)
    assert precision == pytest.approx(2 / 4)  # (0.5, 0) and (2.5, 0.5) lie within 1 of a real point
    # fake radii (k = 1): 0.5 / 0.71 / ... ; real points within reach: (0,0) and (1,0) of (0.5,0) at 0.5, (2,0)
    # and (3,0) of (2.5, 0.5) at 0.707 <= its radius 2.12 (its nearest fake neighbour is (0.5, 0))
    assert recall == pytest.approx(1.0)
    far = real + 100
    assert metrics.precision_recall(real, far, k=1) == (0.0, 0.0)
    assert metrics.precision_recall(real, real.clone(), k=1) == (1.0, 1.0)


def test_classifier_score_is_the_number_of_confident_balanced_classes_and_one_when_collapsed():
    probs = torch.eye(4).repeat(5, 1)
    assert metrics.classifier_score(probs) == pytest.approx(4.0, rel=1e-6)
    assert metrics.classifier_score(torch.tensor([[0.7, 0.3]]).repeat(10, 1)) == pytest.approx(1.0)


def test_cached_classifier_learns_digits_and_is_read_back_identically(tmp_path):
    data = load_dataset("digits")
    net, card = metrics.cached_classifier("digits", data.train, data.labels["train"], 10,
                                          valid=(data.valid, data.labels["valid"]), directory=tmp_path)
    assert card["accuracy"] > 0.9
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    again, card2 = metrics.cached_classifier("digits", data.train, data.labels["train"], 10, directory=tmp_path)
    assert card2 == card
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # the digits' own test images against the train images score far better than noise does
    real = metrics.image_metrics(net, data.train, data.test)
    noise = metrics.image_metrics(net, data.train, torch.rand_like(data.test))
    assert real["frechet_distance"] < noise["frechet_distance"] / 5
    assert real["precision"] > 0.8 > noise["precision"]
    assert real["classifier_score"] > 5


def test_random_affine_without_warp_is_the_identity_and_keeps_binary_images_binary():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 1, 12, 12, generator=g) > 0.5).float()
    same = metrics.random_affine(x, g, rotate=0.0, scale=0.0, shear=0.0, shift=0.0)
    assert torch.equal(same, x)
    warped = metrics.random_affine(x, g, rotate=20.0)
    assert set(warped.unique().tolist()) <= {0.0, 1.0} and not torch.equal(warped, x)
    grey = torch.rand(6, 1, 12, 12, generator=g)
    assert not set(metrics.random_affine(grey, g).unique().tolist()) <= {0.0, 1.0}


def test_self_training_from_a_few_labels_reaches_the_accuracy_of_many():
    """60 labelled digits (6 a class) and the rest of the training images unlabelled: the classifier the
    binarized MNIST hand labels get. Its pseudo labels must be right, or it fails (shuffled, the accuracy
    fell to 0.45)."""
    data = load_dataset("digits")
    x, y = data.train.reshape(-1, 1, 8, 8), data.labels["train"]
    rows = torch.cat([(y == k).nonzero().flatten()[:6] for k in range(10)])
    net, info = metrics.train_self_training_classifier(x[rows], y[rows], x, 10, steps=(300, 600))
    accuracy = (net.predict(data.valid.reshape(-1, 1, 8, 8))[1].argmax(1) == data.labels["valid"]).double().mean()
    assert accuracy > 0.85
    assert info["pseudo_labelled"] > 0.5 * x.shape[0]
