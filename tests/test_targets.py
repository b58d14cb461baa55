"""Flows fitted to energy targets by reverse KL from the command line (``pprogen train planar --target u1``), and
every listed model training from its listed defaults."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import pprogen
from pprogen.cli import main
from pprogen.registry import get_card

GAUSSIAN = '''
import torch


def shifted(z):
    """A Gaussian with mean (1, -0.5) and standard deviation 0.7: log Z = log(2 pi 0.49)."""
    return 0.5 * ((z - torch.tensor([1.0, -0.5])) / 0.7).pow(2).sum(-1)


def broken(z):
    return z
'''


def test_planar_fits_a_users_gaussian_energy_and_reports_the_exact_log_z(tmp_path, capsys):
    (tmp_path / "energy.py").write_text(GAUSSIAN)
    out = tmp_path / "run"
    assert main(["train", "planar", "--target", f"{tmp_path / 'energy.py'}:shifted", "--epochs", "300", "--out",
                 str(out), "--no-progress"]) == 0
    assert "KL(q || p)" in capsys.readouterr().out
    result = json.loads((out / "summary.json").read_text())["train_evaluation"]
    assert result["log_z_quadrature"] == pytest.approx(math.log(2 * math.pi * 0.49), abs=1e-4)
    assert result["kl"] == pytest.approx(result["log_z_quadrature"] - result["elbo"], abs=1e-9)
    assert 0 <= result["kl"] < 0.05  # a shifted, scaled Gaussian is within a planar flow's reach
    for name in ("density.png", "curves.png", "guide.safetensors"):
        assert (out / name).is_file()
    target = f"{tmp_path / 'energy.py'}:shifted"
    assert main(["evaluate", str(out), "--num-samples", "5000", "--target", target]) == 0
    assert "ELBO" in capsys.readouterr().out
    assert main(["sample", str(out), "-n", "500", "--out", str(tmp_path / "s.npy")]) == 0


def test_code_a_run_folder_names_is_never_run(tmp_path, capsys, monkeypatch):
    """A run fitted to a user's energy records the file; evaluating or resuming it needs the file given again, the
    same file unchanged: a folder (downloaded, say) whose config names a file never makes pprogen import it."""
    (tmp_path / "energy.py").write_text(GAUSSIAN)
    out, target = tmp_path / "run", f"{tmp_path / 'energy.py'}:shifted"
    assert main(["train", "planar", "--target", target, "--epochs", "3", "--out", str(out), "--no-progress"]) == 0
    marker = tmp_path / "ran"
    (tmp_path / "energy.py").write_text(GAUSSIAN + f"\nopen({str(marker)!r}, 'w').close()\n")  # now it acts
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    for argv in (["evaluate", str(out)], ["train", "--resume", str(out), "--epochs", "5", "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "never runs code that a run folder names" in err and f"--target {target}" in err
        assert len(err.strip().splitlines()) == 1 and not marker.exists()
    for argv in (["evaluate", str(out), "--target", target],
                 ["train", "--resume", str(out), "--epochs", "5", "--no-progress", "--target", target]):
        assert main(argv) == 2
        assert "has changed since" in capsys.readouterr().err and not marker.exists()
    assert main(["evaluate", str(out), "--target", f"{tmp_path / 'other.py'}:shifted"]) == 2
    assert "is not the energy" in capsys.readouterr().err and not marker.exists()


def test_every_rezende_mohamed_target_and_the_default(tmp_path):
    assert main(["train", "radial", "--epochs", "3", "--out", str(tmp_path / "default"), "--no-progress"]) == 0
    config = json.loads((tmp_path / "default" / "config.json").read_text())
    assert config["target"] == "u1" and config["trainer"] == "reverse_kl" and config["data"] is None
    for name in ("u2", "u3", "u4"):
        assert main(["train", "planar", "--target", name, "--epochs", "2", "--out", str(tmp_path / name),
                     "--no-progress"]) == 0


def test_a_reverse_kl_run_resumes_to_the_same_flow(tmp_path):
    args = ["train", "planar", "--no-progress", "--batch-size", "64"]
    assert main([*args, "--epochs", "20", "--out", str(tmp_path / "straight")]) == 0
    assert main([*args, "--epochs", "8", "--out", str(tmp_path / "halves")]) == 0
    assert main(["train", "--resume", str(tmp_path / "halves"), "--epochs", "20", "--no-progress"]) == 0
    a, b = (load_file(str(tmp_path / r / "guide.safetensors")) for r in ("straight", "halves"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("argv, message", [
    (["train", "planar", "--target", "u9"], "unknown target 'u9'; choose u1, u2, u3, u4 or FILE.py:FUNCTION"),
    (["train", "planar", "--target", "missing.py:f"], "missing.py does not exist"),
    (["train", "planar", "--target", "ENERGY:nothing"], "defines no function 'nothing'"),
    (["train", "planar", "--target", "ENERGY:broken"], "must return one finite energy per row"),
    (["train", "vae", "--target", "u1"], "--target fits flows by reverse KL; vae is a latent model"),
    (["train", "planar", "--data", "moons"], "planar has no closed-form inverse: it fits an energy target"),
    (["train", "planar", "--elbo", "iwae"], "--elbo does not apply to a reverse-KL fit"),
    (["train", "planar", "--target", "u2", "--set", "x_dim=3"], "energy u2 is 2-D"),
])
def test_bad_targets_are_one_line_and_write_nothing(argv, message, tmp_path, capsys):
    (tmp_path / "energy.py").write_text(GAUSSIAN)
    argv = [a.replace("ENERGY", str(tmp_path / "energy.py")) for a in argv]
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_list_says_what_each_model_trains_on(capsys):
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "energy target u1 (reverse KL" in lines["planar"] and "data moons" in lines["realnvp"]


@pytest.mark.parametrize("name", pprogen.list_models())
def test_every_listed_model_trains_from_its_listed_defaults(name, tmp_path):
    """`pprogen train NAME` with nothing but a short budget works for every model `pprogen list` shows."""
    card = get_card(name)
    quick = ["--epochs", "2"] if card.default_target else ["--epochs", "1", "--limit", "64", "--eval-samples", "20"]
    assert main(["train", name, *quick, "--out", str(tmp_path / name), "--no-progress"]) == 0
