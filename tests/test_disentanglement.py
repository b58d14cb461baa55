"""Disentanglement scores (MIG, FactorVAE score) on codes with known structure, the sprites data set, and the
scores reported by ``pprogen train`` / ``pprogen evaluate`` for a VAE trained there."""

import json
import math

import pytest
import torch

from pprogen.cli import main
from pprogen.data import SPRITE_FACTORS, load_dataset, render_sprites
from pprogen.inference.disentanglement import factor_vae_score, mig, mutual_information


@pytest.fixture(scope="module")
def factors():
    d = load_dataset("sprites")
    return torch.cat([d.factors[s] for s in ("train", "valid", "test")])


def test_sprites_hold_every_combination_once_and_match_their_factors(factors):
    d = load_dataset("sprites")
    assert factors.shape == (2880, 5) and len({tuple(r) for r in factors.tolist()}) == 2880
    assert d.factor_names == tuple(SPRITE_FACTORS) and d.binary and d.train.shape[1:] == (1, 24, 24)
    assert torch.equal(render_sprites(d.factors["valid"]), d.valid)
    assert torch.equal(d.labels["test"], d.factors["test"][:, 0])  # the shape is the label
    flat = d.flat()
    assert flat.factors["train"] is not None and flat.train.shape[1] == 576


def test_perfect_codes_score_one_and_entangled_codes_lose_their_factors(factors):
    g = torch.Generator().manual_seed(0)
    perfect = torch.cat([factors.double(), torch.randn(factors.shape[0], 3, generator=g, dtype=torch.float64)], 1)
    gap, per = mig(perfect, factors)
    assert gap > 0.98 and factor_vae_score(perfect, factors) == 1.0
    mixed = factors.double().clone()
    mixed[:, 3], mixed[:, 4] = factors[:, 3] + factors[:, 4], factors[:, 3] - factors[:, 4]  # x and y rotated
    gap, per = mig(mixed, factors)
    assert per[3].item() == pytest.approx(0, abs=1e-9) and per[4].item() == pytest.approx(0, abs=1e-9)
    assert per[:3].tolist() == pytest.approx([1, 1, 1]) and gap == pytest.approx(0.6)
    noise = torch.randn(factors.shape[0], 10, generator=g)
    assert mig(noise, factors)[0] < 0.02 and factor_vae_score(noise, factors) < 0.5


def test_mutual_information_of_a_copy_is_the_entropy(factors):
    mi = mutual_information(factors[:, :1].double(), factors[:, :1])
    assert mi.item() == pytest.approx(math.log(3), abs=1e-9)  # 3 shapes, equally often


def test_bad_codes_are_refused(factors):
    with pytest.raises(ValueError, match="one row per code"):
        mig(torch.zeros(5, 3), factors)
    with pytest.raises(ValueError, match="every code dimension is collapsed"):
        factor_vae_score(torch.zeros(factors.shape[0], 3), factors)


def test_a_vae_trained_on_sprites_reports_its_disentanglement(tmp_path, capsys):
    out = tmp_path / "vae"
    assert main(["train", "vae", "--data", "sprites", "--epochs", "2", "--set", "z_dim=4", "--set",
                 "hidden_dims=[32]", "--eval-samples", "5", "--out", str(out), "--no-progress"]) == 0
    assert "FactorVAE score" in capsys.readouterr().out
    scores = json.loads((out / "summary.json").read_text())["valid_evaluation"]["disentanglement"]
    assert scores["num_data"] == 2880 and set(scores["mig_per_factor"]) == set(SPRITE_FACTORS)
    assert 0 <= scores["mig"] <= 1 and 0 <= scores["factor_vae_score"] <= 1
    assert main(["evaluate", str(out), "--split", "test", "--num-samples", "5"]) == 0
    assert "MIG" in capsys.readouterr().out
    # the scores are those of the guide's posterior means, recomputed here
    from pprogen.engine import load_run

    _, _, dataset, model, guide, _ = load_run(str(out))
    codes = torch.cat([guide.encode(dataset.split(s))[0] for s in ("train", "valid", "test")]).detach()
    f = torch.cat([dataset.factors[s] for s in ("train", "valid", "test")])
    assert mig(codes, f)[0] == pytest.approx(scores["mig"], abs=1e-9)
    assert factor_vae_score(codes, f) == pytest.approx(scores["factor_vae_score"], abs=1e-9)
