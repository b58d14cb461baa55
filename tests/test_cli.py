import json

import numpy as np
import pytest
import torch

from pprogen.cli import main

TINY = ["--limit", "120", "--epochs", "1", "--eval-samples", "5", "--no-progress", "--set", "hidden_dims=[32]",
        "--set", "z_dim=4"]


@pytest.fixture
def trained(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "vae", "--out", str(out), *TINY]) == 0
    return out


def test_train_evaluate_sample_smoke(trained, tmp_path, capsys):
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "guide.safetensors", "checkpoint.pt",
                 "samples.png", "curves.png", "reconstructions.png", "summary.json"):
        assert (trained / name).is_file(), name
    config = json.loads((trained / "config.json").read_text())
    assert config["model"] == "vae" and config["data"] == "digits_binary" and config["model_args"]["x_dim"] == 64
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--split", "test", "--num-samples", "10"]) == 0
    out = capsys.readouterr().out
    assert "test NLL:" in out and "bits/dim" in out
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["test_evaluation"]["num_samples"] == 10 and summary["test_evaluation"]["nll"] > 0
    assert main(["sample", str(trained), "-n", "7", "--out", str(tmp_path / "s.npy")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (7, 64) and set(np.unique(samples)) <= {0.0, 1.0}
    assert main(["sample", str(trained), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_resume_continues_the_run(trained):
    assert main(["train", "--resume", str(trained), "--epochs", "3", "--no-progress"]) == 0
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]


def test_a_resumed_run_reports_its_whole_training_time(tmp_path, capsys, monkeypatch):
    import time

    clock = iter(range(10**6))
    with monkeypatch.context() as patch:  # the first session on a clock that moves 1 s a reading: its epoch is long
        patch.setattr(time, "perf_counter", lambda: float(next(clock)))
        assert main(["train", "vae", "--out", str(tmp_path / "run"), *TINY]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "3", "--no-progress"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert records[0]["seconds"] >= 1 and summary["resumed_at_epoch"] == 1 and summary["epochs_run"] == 3
    # the run's training time is all its epochs', not only this session's; the line says what this session did
    assert summary["train_seconds"] - summary["session_train_seconds"] == pytest.approx(records[0]["seconds"], abs=0.011)
    assert "trained epochs 2-3 in " in capsys.readouterr().out


def test_list_and_info(capsys):
    assert main(["list"]) == 0
    assert "conv_vae" in capsys.readouterr().out
    assert main(["info", "vae"]) == 0
    assert "Kingma" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "vea"], "unknown model 'vea'; did you mean 'vae'"),
        (["train", "vae", "--data", "digit"], "unknown data set 'digit'; did you mean"),
        (["train", "vae", "--data", "digits"], "outside the support of observed site 'x'"),
        (["train", "vae", "--set", "x_dim=10"], "does not fit the model"),
        (["train", "vae", "--lr", "-0.1"], "learning rate must be a positive number"),
        (["train", "vae", "--weight-decay", "-1"], "weight_decay must be a non-negative number"),
        (["train", "gan", "--weight-decay", "0.1"], "--weight-decay does not apply to gan"),
        (["train", "vae", "--epochs", "0"], "epochs must be a positive integer"),
        (["train", "vae", "--batch-size", "0"], "batch_size must be a positive integer"),
        (["train", "vae", "--elbo", "tarce"], "did you mean 'trace'"),
        (["train", "vae", "--guide", "defualt"], "did you mean 'default'"),
        (["train", "vae", "--autocast", "fp16"], "unknown autocast 'fp16'; use 'bf16'"),
        (["train", "dcgan", "--autocast", "half"], "unknown autocast 'half'; use 'bf16'"),
        (["train", "gan", "--elbo", "iwae"], "--elbo does not apply to gan (a gan model, trained by the adversarial"),
        (["train", "dcgan", "--beta", "4", "--particles", "5"], "--beta, --particles do not apply to dcgan"),
        (["train", "vae", "--loss", "hinge"], "--loss does not apply to vae"),
        (["train", "vae", "--override", "lr=0.1"], "--override changes a setting of a resumed run"),
        (["train", "vae", "--r1-weight", "0"], "--r1-weight does not apply to vae"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_nan_in_user_data_is_refused(tmp_path, capsys):
    x = (np.random.default_rng(0).random((40, 5)) < 0.5).astype(np.float32)
    x[3, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    assert main(["train", "vae", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r")]) == 2
    assert "NaN or Inf" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_existing_run_is_not_overwritten(trained, capsys):
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    assert main(["train", "vae", "--out", str(trained), *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before


def test_corrupted_checkpoint_on_resume_is_reported_and_kept(trained, capsys):
    ckpt = trained / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    damaged = ckpt.read_bytes()
    assert main(["train", "--resume", str(trained), "--epochs", "2", "--no-progress"]) == 2
    assert "unreadable or corrupted" in capsys.readouterr().err
    assert ckpt.read_bytes() == damaged


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0.01"], "--lr 0.01 differs from the run's 0.001; a resumed run keeps its settings: drop --lr, or pass "
                       "--override lr=0.01 to change it from epoch 2"),
    (["--elbo", "iwae"], "--elbo iwae differs from the run's analytic"),
    (["--batch-size", "7"], "--batch-size 7 differs"),
    (["--set", "z_dim=3"], "--set is fixed when a run starts"),
    (["--data", "digits"], "--data is fixed when a run starts"),
    (["--seed", "4"], "--seed is fixed when a run starts"),
    (["--loss", "hinge"], "--loss does not apply to vae"),
    (["--override", "optimizer=sgd"], "--override optimizer=... is not something a resumed svi run can change"),
])
def test_resume_refuses_changed_settings_and_writes_nothing(trained, argv, message, capsys):
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(trained), "--epochs", "3", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before
    assert main(["train", "cvae", "--resume", str(trained)]) == 2
    assert "is a vae run; resume it with" in capsys.readouterr().err


def test_resume_with_an_override_records_it_and_trains_with_it(trained, capsys):
    assert main(["train", "--resume", str(trained), "--epochs", "3", "--no-progress", "--override", "lr=0.01",
                 "--lr", "0.01"]) == 0
    config = json.loads((trained / "config.json").read_text())
    assert config["overrides"] == [{"key": "lr", "value": 0.01, "previous": 0.001, "from_epoch": 2}]
    assert config["train"]["lr"] == 0.01 and config["train"]["epochs"] == 3
    lrs = [json.loads(line)["lr"] for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert lrs == [0.001, 0.01, 0.01]


def test_resuming_a_finished_run_says_so_and_changes_nothing(trained, capsys):
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(trained), "--no-progress"]) == 0
    assert "already finished: 1 of 1 epochs trained; to train on, resume with --epochs N for N > 1" in \
        capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before


def test_resuming_an_early_stopped_run_keeps_its_best_weights_and_says_so(tmp_path, capsys):
    out = tmp_path / "es"
    argv = ["train", "vae", "--out", str(out), "--limit", "120", "--epochs", "80", "--patience", "2",
            "--lr", "0.03", "--eval-samples", "5", "--no-progress", "--set", "hidden_dims=[32]", "--set", "z_dim=4"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "early_stopping" and summary["best_epoch"] < summary["epochs_run"]
    weights = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "200", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert f"already stopped early at epoch {summary['epochs_run']}" in said
    assert f"weights are those of epoch {summary['best_epoch']}" in said and "--override patience=N" in said
    assert (out / "model.safetensors").read_bytes() == weights
    assert main(["train", "--resume", str(out), "--epochs", str(summary["epochs_run"] + 3), "--no-progress",
                 "--override", "patience=50"]) == 0
    after = json.loads((out / "summary.json").read_text())
    assert after["epochs_run"] == summary["epochs_run"] + 3
    assert after["best_valid_loss"] <= summary["best_valid_loss"]


def test_evaluate_limit_takes_the_first_examples(trained, capsys):
    assert main(["evaluate", str(trained), "--split", "valid", "--num-samples", "5", "--limit", "7"]) == 0
    assert "over 7 examples" in capsys.readouterr().out
    assert main(["evaluate", str(trained), "--limit", "0"]) == 2


def test_evaluate_needs_positive_samples_and_a_run(trained, tmp_path, capsys):
    assert main(["evaluate", str(trained), "--num-samples", "0"]) == 2
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "not a pprogen run folder" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text("{}")
    for argv in (["evaluate", str(tmp_path / "bare")], ["train", "--resume", str(tmp_path / "bare")],
                 ["sample", str(tmp_path / "bare"), "--out", str(tmp_path / "s.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "lacks 'model', 'data', 'model_args', 'train'" in err and err.count("\n") == 1


def test_evaluate_by_ais_and_bdmc_writes_the_method_and_its_settings(trained, capsys):
    """The CLI's AIS is the library's ais() on the run's split with the given settings (same seed, same
    figures); BDMC's sandwich and the per-example ArviZ files land in the run folder."""
    import arviz as az
    import torch

    from pprogen.engine import load_run as _load_run
    from pprogen.inference import ais

    capsys.readouterr()
    argv = ["evaluate", str(trained), "--split", "valid", "--limit", "6", "--steps", "20", "--chains", "3",
            "--leapfrog", "4", "--seed", "5"]
    assert main([*argv, "--method", "ais"]) == 0
    assert "valid NLL (AIS, T = 20 steps (sigmoid), C = 3 chains, L = 4 leapfrog steps)" in capsys.readouterr().out
    result = json.loads((trained / "summary.json").read_text())["valid_ais"]
    assert (result["num_steps"], result["num_chains"], result["leapfrog_steps"], result["num_data"]) == (20, 3, 4, 6)
    assert result["method"].startswith("annealed importance sampling") and result["seed"] == 5
    _, _, dataset, model, guide, _ = _load_run(str(trained), torch.device("cpu"))
    torch.manual_seed(5)
    direct = ais(model, guide, dataset.split("valid")[:6], num_steps=20, num_chains=3, leapfrog_steps=4)
    assert result["nll"] == pytest.approx(-direct.log_prob.double().mean().item(), rel=1e-6)
    saved = az.from_netcdf(trained / "ais-valid.nc").log_likelihood["x"].values.ravel()
    assert np.allclose(saved, direct.log_prob.numpy(), atol=1e-5)

    assert main([*argv, "--method", "bdmc"]) == 0
    assert "simulated from the model" in capsys.readouterr().out
    summary = json.loads((trained / "summary.json").read_text())
    assert "valid_ais" in summary and summary["valid_bdmc"]["num_data"] == 6
    assert summary["valid_bdmc"]["lower_log_prob"] <= summary["valid_bdmc"]["upper_log_prob"] + 5
    gap = az.from_netcdf(trained / "bdmc-valid.nc").sample_stats["gap"].values.ravel()
    assert gap.shape == (6,) and np.isclose(gap.mean(), summary["valid_bdmc"]["gap"], atol=1e-5)


def test_evaluate_refine_writes_its_own_key_and_equals_the_library(trained, capsys):
    """``--refine N`` is log_marginal(..., refine=N) on the run's split (same seed, same figure), kept apart from
    the guide's own estimate in summary.json."""
    from pprogen.engine import load_run as _load_run
    from pprogen.inference import log_marginal

    argv = ["evaluate", str(trained), "--split", "valid", "--limit", "6", "--num-samples", "20", "--seed", "3"]
    assert main(argv) == 0
    assert main([*argv, "--refine", "15"]) == 0
    assert "guide refined per example by 15 Adam steps" in capsys.readouterr().out
    summary = json.loads((trained / "summary.json").read_text())
    plain, refined = summary["valid_evaluation"], summary["valid_evaluation_refined"]
    assert refined["refine_steps"] == 15 and "refine_steps" not in plain and refined["nll"] != plain["nll"]
    assert refined["khat_plot"] == "khat-refined-valid.png" and plain["khat_plot"] == "khat-valid.png"
    assert (trained / "khat-refined-valid.png").is_file()
    _, _, dataset, model, guide, _ = _load_run(str(trained), torch.device("cpu"))
    torch.manual_seed(3)
    direct = log_marginal(model, guide, dataset.split("valid")[:6], num_samples=20, refine=15)
    assert refined["nll"] == pytest.approx(-direct.log_prob.double().mean().item(), rel=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--refine", "-1"], "--refine is a number of Adam steps"),
    (["--method", "ais", "--refine", "5"], "--method ais anneals from the guide instead: drop --refine"),
    (["--ood", "digits", "--refine", "5"], "--refine applies to the run's own data"),
    (["--steps", "10"], "--steps set the annealed chains of --method ais or bdmc"),
    (["--method", "ais", "--num-samples", "10"], "--num-samples sets importance sampling"),
    (["--method", "ais", "--chains", "0"], "--chains must be at least 1"),
    (["--method", "bdmc", "--steps", "0"], "--steps must be at least 1"),
])
def test_evaluate_refuses_options_of_another_method(trained, argv, message, capsys):
    before = (trained / "summary.json").read_text()
    capsys.readouterr()
    assert main(["evaluate", str(trained), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert (trained / "summary.json").read_text() == before


def test_ais_refuses_models_with_an_exact_likelihood(tmp_path, capsys):
    out = tmp_path / "fv"
    assert main(["train", "fvsbn", "--limit", "100", "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--method", "ais", "--steps", "5"]) == 2
    assert "computes log p(x) exactly: it is scored by its own route, not by ais" in capsys.readouterr().err


def test_any_estimator_and_guide_by_name_then_k_hat_bands(tmp_path, capsys):
    out = tmp_path / "iw"
    argv = ["train", "vae", "--out", str(out), "--guide", "amortized_iaf", "--elbo", "iwae_dreg",
            "--particles", "3", *TINY]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-samples", "20"]) == 0
    text = capsys.readouterr().out
    assert "Pareto k-hat: good" in text and (out / "khat-test.png").is_file()
    bands = json.loads((out / "summary.json").read_text())["test_evaluation"]["khat_bands"]
    assert sum(bands.values()) == json.loads((out / "summary.json").read_text())["test_evaluation"]["num_data"]


def test_exact_evidence_for_models_with_log_prob(tmp_path, capsys):
    out = tmp_path / "pp"
    assert main(["train", "ppca", "--data", "moons", "--limit", "300", "--epochs", "2", "--no-progress",
                 "--out", str(out)]) == 0
    assert "exact" not in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["valid_evaluation"]["method"] == "exact"


@pytest.mark.parametrize("speed", [[], ["--autocast", "bf16"]])
def test_cli_resume_ends_with_the_uninterrupted_weights(speed, tmp_path):
    from safetensors.torch import load_file

    common = ["--limit", "120", "--eval-samples", "5", "--no-progress", "--set", "hidden_dims=[16]", "--set", "z_dim=3",
              *speed]
    assert main(["train", "vae", "--out", str(tmp_path / "full"), "--epochs", "3", *common]) == 0
    assert main(["train", "vae", "--out", str(tmp_path / "cut"), "--epochs", "1", *common]) == 0
    assert main(["train", "--resume", str(tmp_path / "cut"), "--epochs", "3", "--no-progress"]) == 0
    for name in ("model", "guide"):
        full = load_file(tmp_path / "full" / f"{name}.safetensors")
        resumed = load_file(tmp_path / "cut" / f"{name}.safetensors")
        assert full.keys() == resumed.keys()
        assert all((full[k] == resumed[k]).all() for k in full)
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["train"]["autocast"] == ("bf16" if speed else None)  # the resumed epochs kept the setting


def test_info_shows_the_network_and_training_writes_its_learned_tables(tmp_path, capsys):
    assert main(["info", "sprinkler"]) == 0
    out = capsys.readouterr().out
    assert "Cloudy -> Sprinkler" in out and "Sprinkler=on Rain=yes        no 0.010  yes 0.990" in out
    run = tmp_path / "run"
    assert main(["train", "sprinkler", "--data", "sprinkler_missing", "--set", "init=uniform", "--epochs", "2",
                 "--limit", "2000", "--no-progress", "--out", str(run)]) == 0
    learned = json.loads((run / "network.json").read_text())
    assert learned["GrassWet"]["cpt"][0][0][1] < 0.2  # from uniform towards the true 0 (dry without sprinkler or rain)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["valid_evaluation"]["method"] == "exact"


def test_two_d_flow_draws_its_density_and_image_flow_reports_bits_per_dim(tmp_path, capsys):
    out = tmp_path / "realnvp"
    assert main(["train", "realnvp", "--data", "moons", "--epochs", "1", "--limit", "500", "--set", "num_layers=2",
                 "--no-progress", "--out", str(out)]) == 0
    assert (out / "density.png").is_file()
    assert json.loads((out / "summary.json").read_text())["valid_evaluation"]["method"] == "exact"
    out = tmp_path / "glow"
    assert main(["train", "glow", "--data", "digits", "--epochs", "1", "--limit", "200", "--set", "steps=1",
                 "--set", "hidden_channels=8", "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"]["num_levels"] == 17  # the digits' 17 intensity levels, found in the data
    printed = capsys.readouterr().out
    assert "bits/dim" in printed and "dequantization bound" in printed
    assert main(["train", "planar", "--data", "moons", "--epochs", "1", "--out", str(tmp_path / "planar")]) == 2
    assert "no closed-form inverse" in capsys.readouterr().err


def test_cvae_trains_on_the_data_sets_labels(tmp_path, capsys):
    out = tmp_path / "cvae"
    assert main(["train", "cvae", "--epochs", "1", "--limit", "200", "--set", "hidden_dims=[16]", "--no-progress",
                 "--eval-samples", "10", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_args"]["num_classes"] == 10
    assert "log p(x | y)" in json.loads((out / "summary.json").read_text())["valid_evaluation"]["method"]
    assert main(["evaluate", str(out), "--num-samples", "5"]) == 0
    unlabelled = tmp_path / "bits.npy"
    np.save(unlabelled, (np.random.default_rng(0).random((50, 6)) < 0.5).astype(np.float32))
    capsys.readouterr()
    assert main(["train", "cvae", "--data", str(unlabelled), "--set", "num_classes=3", "--epochs", "1",
                 "--out", str(tmp_path / "c2")]) == 2
    assert "has none; use a labelled data set" in capsys.readouterr().err


GAN_TINY = ["--epochs", "2", "--limit", "256", "--batch-size", "64", "--no-progress", "--eval-samples", "300"]


def test_gan_trains_evaluates_samples_and_resumes_from_the_cli(tmp_path, capsys):
    out = tmp_path / "gan"
    assert main(["train", "gan", "--data", "ring8", "--out", str(out), "--set", "hidden_dims=[32]",
                 "--set", "d_hidden_dims=[32]", "--loss", "hinge", "--r1-weight", "0.1", *GAN_TINY]) == 0
    text = capsys.readouterr().out
    assert "hinge loss" in text and "valid: modes" in text and "MMD^2" in text
    for name in ("config.json", "checkpoint.pt", "model.safetensors", "samples.png", "curves.png", "summary.json",
                 "grids/epoch-001.png", "grids/epoch-002.png"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all("high_quality" in r and "d_loss" in r for r in records)
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "gan" and config["train"]["loss"] == "hinge" and config["train"]["lr"] == 1e-3
    assert main(["evaluate", str(out), "--split", "test", "--num-samples", "500"]) == 0
    summary = json.loads((out / "summary.json").read_text())["test_evaluation"]
    assert summary["num_modes"] == 8 and sum(summary["counts"]) == round(500 * summary["high_quality"])
    from pprogen.engine import load_run as _load_run
    from pprogen.inference.metrics import evaluate_samples

    _, _, dataset, model, _, _ = _load_run(str(out), torch.device("cpu"))
    assert evaluate_samples(model, dataset, "test", 500) == summary  # the library gives the CLI's figures
    assert main(["sample", str(out), "-n", "9", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (9, 2)
    # the gan card's learning rate decays linearly to 0 at the last epoch: more epochs would not move the weights
    before = (out / "config.json").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 2
    assert "linear schedule ended at epoch 2 with the learning rate at 0" in capsys.readouterr().err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2 and (out / "config.json").read_text() == before


def test_image_gans_report_feature_metrics_and_translations(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PPROGEN_CACHE", str(tmp_path / "cache"))
    assert main(["train", "cgan", "--data", "digits", "--out", str(tmp_path / "c"), "--set", "channels=4",
                 *GAN_TINY]) == 0
    text = capsys.readouterr().out
    assert "Fréchet distance" in text and "label agreement" in text
    assert main(["train", "pix2pix", "--out", str(tmp_path / "p"), "--set", "width=4", *GAN_TINY]) == 0
    text = capsys.readouterr().out
    assert "l1 to target" in text and "Fréchet distance" in text
    assert main(["sample", str(tmp_path / "p"), "-n", "3", "--out", str(tmp_path / "t.npy")]) == 0
    assert np.load(tmp_path / "t.npy").shape == (3, 1, 8, 8)


@pytest.mark.parametrize("argv, message", [
    (["gan", "--data", "ring8", "--loss", "wgan"], "unknown GAN loss 'wgan'; did you mean 'wgan_gp'"),
    (["pix2pix", "--data", "digits2inverted"], "pix2pix learns from paired examples"),
    (["cgan", "--data", "swiss_roll"], "is conditioned on labels, but the 'train' split of 'swiss_roll' has none"),
    (["dcgan", "--data", "ring8"], "dcgan makes images of shape (C, H, W), got x_shape [2]; use gan"),
])
def test_gan_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *argv, "--out", str(out), *GAN_TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_ctrl_c_is_one_line_naming_the_saved_epoch_and_the_resume_command(tmp_path, capsys, monkeypatch):
    import pprogen.engine.trainers.svi as svi_trainer

    real_fit = svi_trainer.fit

    def interrupted_fit(*args, **kwargs):
        def stop(epoch, record):
            if epoch == 2:
                raise KeyboardInterrupt

        return real_fit(*args, callback=stop, **kwargs)

    monkeypatch.setattr(svi_trainer, "fit", interrupted_fit)
    out = tmp_path / "run"
    assert main(["train", "vae", "--out", str(out), *TINY, "--epochs", "4"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"pprogen: interrupted; epoch 2 is saved in {out}: continue with `pprogen train --resume {out}`"
    monkeypatch.setattr(svi_trainer, "fit", real_fit)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_the_training_data_is_checked_once(tmp_path, monkeypatch):
    import sys

    import pprogen.inference.checks as checks

    calls = []
    real = checks.check_data
    for module in list(sys.modules.values()):  # wherever pprogen imported it
        if getattr(module, "__name__", "").startswith("pprogen") and getattr(module, "check_data", None) is real:
            monkeypatch.setattr(module, "check_data", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    assert main(["train", "vae", "--out", str(tmp_path / "r"), *TINY]) == 0
    assert calls == ["training data", "validation data"]


def test_a_refused_resume_leaves_config_json_as_it_was(trained, capsys):
    before = (trained / "config.json").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(trained), "--epochs", "3", "--no-progress", "--override", "lr=-1"]) == 2
    assert "learning rate must be a positive number" in capsys.readouterr().err
    assert (trained / "config.json").read_text() == before


def test_weight_decay_reaches_the_optimizer_and_pulls_the_weights_in(tmp_path):
    norms = {}
    for decay in ("0", "0.5"):
        out = tmp_path / f"wd{decay}"
        assert main(["train", "fvsbn", "--data", "digits_binary", "--epochs", "2", "--optimizer", "adamw",
                     "--weight-decay", decay, "--out", str(out), "--no-progress"]) == 0
        checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
        assert checkpoint["optimizer"]["param_groups"][0]["weight_decay"] == float(decay)
        assert json.loads((out / "config.json").read_text())["train"]["weight_decay"] == float(decay)
        norms[decay] = sum(p.norm() ** 2 for p in checkpoint["params"].values() if p.is_floating_point())
    assert norms["0.5"] < norms["0"]


def test_lr_gamma_sets_the_exponential_decay_per_epoch_and_survives_a_resume(tmp_path, capsys):
    out = tmp_path / "decay"
    common = ["--no-progress", "--eval-samples", "2"]
    assert main(["train", "fvsbn", "--data", "digits_binary", "--epochs", "2", "--schedule", "exponential",
                 "--lr", "0.01", "--lr-gamma", "0.8", "--out", str(out), *common]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "4", *common]) == 0
    rates = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rates == pytest.approx([0.01 * 0.8 ** epoch for epoch in range(4)], rel=1e-9)
    assert json.loads((out / "config.json").read_text())["train"]["lr_gamma"] == 0.8
    capsys.readouterr()
    assert main(["train", "fvsbn", "--data", "digits_binary", "--epochs", "1", "--schedule", "exponential",
                 "--lr-gamma", "0", "--out", str(tmp_path / "bad"), *common]) == 2
    assert "lr_gamma is the schedule's factor on the learning rate, in (0, 1], got 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["train", "fvsbn", "--data", "digits_binary", "--epochs", "1", "--lr-gamma", "0.9",
                 "--out", str(tmp_path / "ignored"), *common]) == 2
    assert "the constant schedule ignores it; add --schedule exponential" in capsys.readouterr().err
    assert not (tmp_path / "ignored").exists()
    assert main(["train", "planar", "--target", "u1", "--epochs", "1", "--schedule", "cosine",
                 "--lr-gamma", "0.9", "--out", str(tmp_path / "target"), "--no-progress"]) == 2
    assert "the cosine schedule ignores it" in capsys.readouterr().err
