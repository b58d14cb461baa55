"""Classic fitting from the command line: ``pprogen train --trainer em`` (closed-form EM for the mixtures) and
``--trainer nuts`` (NUTS over bayesian_gmm's global latents), checked against the same algorithms run in Python."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pprogen.cli import main
from pprogen.engine import build, load_run
from pprogen.runs import Run, seed_everything


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def test_em_from_the_cli_is_the_models_own_em_from_the_same_start(tmp_path, capsys):
    out = tmp_path / "em"
    assert main(["train", "mixture_of_bernoullis", "--trainer", "em", "--epochs", "7", "--set", "num_components=6",
                 "--out", str(out), "--no-progress"]) == 0
    assert "trained 7 EM iterations" in capsys.readouterr().out
    config = Run.open(out).config
    assert config["trainer"] == "em" and config["train"] == {"epochs": 7}
    seed_everything(0)
    dataset, model, _ = build(config)
    model.init_from_data(dataset.train)
    lls = model.fit_em(dataset.train, 7)
    for key, value in model.state_dict().items():
        assert torch.allclose(_weights(out)[key], value, atol=1e-6), key
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 8))
    assert records[-2]["train_loss"] == pytest.approx(-lls[-1], abs=1e-4)  # EM's log-likelihood before iteration 7
    assert all(a["train_loss"] >= b["train_loss"] - 1e-9 for a, b in zip(records, records[1:]))  # EM never worsens
    summary = json.loads((out / "summary.json").read_text())
    with torch.no_grad():
        exact = -model.log_prob(dataset.valid).double().mean().item()
    assert summary["valid_evaluation"]["nll"] == pytest.approx(exact, abs=1e-4)
    assert summary["em_iterations"] == 7


def test_an_em_run_resumes_to_the_same_parameters(tmp_path):
    args = ["train", "gmm", "--trainer", "em", "--set", "num_components=4", "--limit", "400", "--no-progress"]
    assert main([*args, "--epochs", "12", "--out", str(tmp_path / "straight")]) == 0
    assert main([*args, "--epochs", "5", "--out", str(tmp_path / "halves")]) == 0
    assert main(["train", "--resume", str(tmp_path / "halves"), "--epochs", "12", "--no-progress"]) == 0
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "halves")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_em_stops_when_converged(tmp_path):
    out = tmp_path / "conv"
    assert main(["train", "gmm", "--trainer", "em", "--set", "num_components=1", "--limit", "300", "--epochs", "50",
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "converged" and summary["em_iterations"] < 50  # one Gaussian: exact in one step


@pytest.fixture(scope="module")
def nuts_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuts")
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(25, 1, generator=g) * 0.3 - 2, torch.randn(25, 1, generator=g) * 0.3 + 2])
    np.save(root / "two.npy", x.numpy())
    out = root / "run"
    assert main(["train", "bayesian_gmm", "--data", str(root / "two.npy"), "--trainer", "nuts", "--draws", "40",
                 "--warmup", "40", "--set", "num_components=2", "--out", str(out), "--no-progress"]) == 0
    return out


def test_nuts_run_keeps_its_draws_summary_and_trace(nuts_run):
    for name in ("posterior.safetensors", "posterior_summary.csv", "posterior.nc", "trace.png", "samples.png",
                 "summary.json"):
        assert (nuts_run / name).is_file(), name
    draws = load_file(str(nuts_run / "posterior.safetensors"))
    assert draws["locs"].shape == (40, 2, 1) and draws["weights"].shape == (40, 2)
    summary = json.loads((nuts_run / "summary.json").read_text())
    assert summary["draws"] == 40 and summary["r_hat_max"] is None  # one chain: no r_hat
    assert sorted(abs(m) for m in draws["locs"].mean(0).flatten().tolist()) == pytest.approx([2, 2], abs=0.4)


def test_nuts_evaluation_is_the_posterior_predictive_over_the_stored_draws(nuts_run, capsys):
    assert main(["evaluate", str(nuts_run), "--split", "valid", "--num-samples", "4000"]) == 0
    result = json.loads((nuts_run / "summary.json").read_text())["valid_evaluation"]
    assert "posterior predictive" in result["method"]
    run, config, dataset, model, guide, _ = load_run(str(nuts_run))
    d = load_file(str(nuts_run / "posterior.safetensors"))
    per_draw = model.pointwise_log_likelihood(d["weights"], d["locs"], d["scales"], dataset.valid)
    exact = -(per_draw.logsumexp(0) - math.log(per_draw.shape[0])).double().mean().item()
    assert result["nll"] == pytest.approx(exact, abs=0.05)  # 4000 draws with replacement from the 40 stored


@pytest.mark.parametrize("argv, message", [
    (["train", "vae", "--trainer", "em"], "vae has no closed-form EM"),
    (["train", "gmm", "--trainer", "nuts"], "gmm has no NUTS posterior"),
    (["train", "gmm", "--trainer", "em", "--lr", "0.1"], "--lr does not apply to --trainer em"),
    (["train", "bayesian_gmm", "--trainer", "nuts", "--epochs", "3"], "--epochs does not apply to --trainer nuts"),
    (["train", "gmm", "--draws", "10"], "--draws set --trainer nuts"),
    (["train", "vae", "--trainer", "adversarial"], "only GANs train adversarially"),
    (["train", "gan", "--trainer", "svi"], "GANs train adversarially"),
    (["train", "bayesian_gmm", "--trainer", "nuts", "--chains", "0"], "--chains must be at least 1"),
    (["train", "gmm", "--trainer", "em", "--epochs", "0"], "--epochs (EM iterations) must be at least 1"),
])
def test_bad_trainer_options_are_one_line_and_write_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_nuts_runs_do_not_resume_or_ship_and_em_resumes_take_epochs_only(nuts_run, tmp_path, capsys):
    assert main(["train", "--resume", str(nuts_run), "--no-progress"]) == 2
    assert "do not resume" in capsys.readouterr().err
    assert main(["ship", str(nuts_run), str(tmp_path / "shipped")]) == 2
    assert "holds NUTS draws" in capsys.readouterr().err and not (tmp_path / "shipped").exists()
    em = tmp_path / "em"
    assert main(["train", "gmm", "--trainer", "em", "--epochs", "2", "--limit", "100", "--out", str(em),
                 "--no-progress"]) == 0
    assert main(["train", "--resume", str(em), "--lr", "0.1", "--no-progress"]) == 2
    assert "does not apply to an EM run" in capsys.readouterr().err
