"""The run engine's public face: options declared once, the trainer registry (a new trainer is one class), the
checks that run before anything is written, and ``pprogen.load``."""

import json
import time

import pytest
import torch

import pprogen
from pprogen.cli import main, parser
from pprogen.engine import (OPTIONS, TRAINERS, LoadedRun, Trainer, prepare_run, register_trainer, train_run,
                            trainer_class)
from pprogen.engine import options as opts
from pprogen.engine.config import build
from pprogen.engine.trainer import unregister_trainer
from pprogen.inference.loop import History
from pprogen.registry import get_card

TINY = ["--limit", "60", "--epochs", "2", "--eval-samples", "4", "--no-progress"]


def test_every_option_is_a_flag_and_a_default_of_the_trainers_that_read_it():
    train = next(a for a in parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    dests = {a.dest for a in train._actions}
    for option in OPTIONS:
        assert (option.dest in dests) == (option.type is not None), option.key
        for trainer in option.defaults:
            assert trainer in TRAINERS, (option.key, trainer)
            assert opts.defaults(trainer)[option.key] == option.defaults[trainer]
    # a new run's config["train"] is exactly the trainer's defaults, then the card's, then what was given
    for name, given in (("vae", {"lr": 0.01}), ("dcgan", {}), ("gmm", {"trainer": "em"})):
        card = get_card(name)
        config, _, _, _, _ = prepare_run({"model": name, "limit": 20, **given})
        trainer = config["trainer"]
        expected = {**opts.defaults(trainer),
                    **{k: v for k, v in card.train_defaults.items() if trainer in opts.BY_KEY[k].defaults},
                    **{k: v for k, v in given.items() if k in opts.BY_KEY}}
        assert config["train"] == expected


@pytest.mark.parametrize("argv, message", [
    (["--kl-warmup", "-1"], "kl_warmup must be a non-negative integer, got -1"),
    (["--eval-samples", "0"], "eval_samples must be a positive integer, got 0"),
    (["--beta", "nan"], "beta must be a non-negative number, got nan"),
    (["--ema", "1.5"], "moving average, in [0, 1)"),
    (["--particles", "0"], "particles must be a positive integer, got 0"),
    (["--limit", "0"], "limit must be a positive integer (rows per split) or None, got 0"),
    (["--epochs", "0"], "epochs must be a positive integer, got 0"),
    (["--set", "x_dim=64.5"], "argument 'x_dim' is a whole number, got 64.5"),
    (["--device", "bogus"], "device must be auto, cpu, cuda or cuda:N, got 'bogus'"),
])
def test_bad_settings_are_refused_before_anything_trains_or_is_written(argv, message, tmp_path, capsys, monkeypatch):
    import pprogen.engine.trainers.svi as svi

    monkeypatch.setattr(svi, "fit", lambda *a, **k: pytest.fail("trained with a bad setting"))
    out = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits_binary", "--out", str(out), *TINY, *argv]) == 2
    said = capsys.readouterr()
    assert message in said.err and len(said.err.strip().splitlines()) == 1
    assert said.out == "" and not out.exists()  # no run folder announced, none made


def test_bad_overrides_are_refused_before_training_and_leave_the_config_as_it_was(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits_binary", "--out", str(out), *TINY]) == 0
    before = (out / "config.json").read_text()
    for pair, message in (("kl_warmup=-3", "kl_warmup must be a non-negative integer, got -3"),
                          ("beta=true", "beta must be a non-negative number, got True"),
                          ("eval_samples=-1", "eval_samples must be a positive integer, got -1")):
        capsys.readouterr()
        assert main(["train", "--resume", str(out), "--epochs", "3", "--override", pair, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert (out / "config.json").read_text() == before
        assert [json.loads(r)["epoch"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


class WarmStart(Trainer):
    """A trainer written by a user: no gradient steps, the model's weights as built (one History record an
    epoch, the exact log-likelihood of the training rows as its loss). It reads ``epochs`` only."""

    name = "warm_start"
    reads = {"epochs": 3}

    def __init__(self, config, dataset, device, world, progress, resumed):
        self.config, self.device, self.world = config, device, world
        self.dataset, self.model, self.guide = build(config, dataset)

    def train(self, run, resume):
        nll = -self.model.log_prob(self.dataset.train).mean().item()
        history = History(records=[{"epoch": e + 1, "train_loss": nll, "valid_loss": None, "seconds": 0.0}
                                   for e in range(self.config["train"]["epochs"])])
        if run is not None:
            run.materialize()
            run.write_metrics(history.records)
            run.save_weights("model", self.model)
        history.stop_reason = "finished"
        return history

    def pictures(self, run, split):
        return []


@pytest.fixture
def warm_start():
    register_trainer(WarmStart)
    yield WarmStart
    unregister_trainer("warm_start")
    assert "warm_start" not in opts.BY_KEY["epochs"].defaults


def test_a_trainer_is_one_class_and_one_registration(warm_start, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "fvsbn", "--trainer", "warm_start", "--data", "digits_binary", "--limit", "50",
                 "--eval-samples", "3", "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "trained 3 epochs" in said
    config = json.loads((out / "config.json").read_text())
    assert config["trainer"] == "warm_start" and config["train"] == {"epochs": 3}
    summary = json.loads((out / "summary.json").read_text())
    loaded = pprogen.load(out)
    assert loaded.trainer is WarmStart and trainer_class(config) is WarmStart
    exact = -loaded.model.log_prob(loaded.dataset.valid).double().mean().item()
    assert summary["valid_evaluation"]["nll"] == pytest.approx(exact, rel=1e-5)
    assert main(["train", "fvsbn", "--trainer", "warm_start", "--lr", "0.1", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "--lr does not apply to --trainer warm_start (it reads --epochs)" in err and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="already registered"):
        register_trainer(WarmStart)


def test_pprogen_load_gives_the_run_with_evaluate_and_sample(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits_binary", "--out", str(out), *TINY]) == 0
    loaded = pprogen.load(str(out))
    assert isinstance(loaded, LoadedRun) and loaded.path == out
    run, config, dataset, model, guide, device = loaded  # the tuple scripts unpack
    assert config["model"] == "fvsbn" and device == torch.device("cpu")
    result = loaded.evaluate("valid")
    with torch.no_grad():
        exact = -model.log_prob(dataset.valid).double().mean().item()
    assert result["nll"] == pytest.approx(exact, rel=1e-6)
    assert "valid_evaluation" in json.loads((out / "summary.json").read_text())  # written by train, not evaluate
    before = (out / "summary.json").read_text()
    loaded.evaluate("test")
    assert (out / "summary.json").read_text() == before  # evaluate records nothing unless asked
    loaded.evaluate("test", save=True)
    assert "test_evaluation" in json.loads((out / "summary.json").read_text())
    samples = loaded.sample(5, seed=3)
    assert samples.shape == (5, 64) and set(samples.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(samples, loaded.sample(5, seed=3))
    with pytest.raises(ValueError, match="no likelihood mean"):
        loaded.sample(5, mean=True)


def test_sample_writes_into_the_run_folder_by_default(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits_binary", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "-n", "4"]) == 0
    assert (out / "samples-drawn.png").is_file() and str(out / "samples-drawn.png") in capsys.readouterr().out


def test_old_configs_without_a_trainer_name_pick_the_kind_s_trainer():
    assert trainer_class({"kind": "gan"}).name == "adversarial"
    assert trainer_class({"kind": "latent"}).name == "svi"
    with pytest.raises(ValueError, match="names trainer 'bogus'"):
        trainer_class({"trainer": "bogus"})


def test_a_metric_that_cannot_be_computed_does_not_take_the_run_down(tmp_path, capsys, monkeypatch):
    import pprogen.inference.disentanglement as scores

    def collapsed(*args, **kwargs):
        raise ValueError("every code dimension is collapsed (standard deviation below min_std): nothing to score")

    monkeypatch.setattr(scores, "mig", collapsed)
    out = tmp_path / "run"
    assert main(["train", "vae", "--data", "sprites", "--limit", "40", "--epochs", "1", "--eval-samples", "3",
                 "--set", "hidden_dims=[16]", "--set", "z_dim=2", "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "disentanglement: not computed (every code dimension is collapsed" in said
    summary = json.loads((out / "summary.json").read_text())
    assert summary["valid_evaluation"]["nll"] > 0 and "not_computed" in summary["valid_evaluation"]["disentanglement"]
    assert (out / "samples.png").is_file() and (out / "curves.png").is_file()
    assert main(["evaluate", str(out), "--split", "valid", "--num-samples", "3"]) == 0
    assert "not computed" in capsys.readouterr().out


def test_a_target_run_s_default_folder_is_named_after_its_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "planar", "--target", "u2", "--epochs", "2", "--no-progress"]) == 0
    made = [p.name for p in (tmp_path / "runs").iterdir()]
    assert len(made) == 1 and made[0].startswith("planar-u2-"), made


@pytest.mark.parametrize("argv, message", [
    (["train", "vae", "--set", "z_dim=1000000000000"], "4.02e+14 weights) with its gradients and optimizer state needs at least 6.4 PB"),
    (["train", "vae", "--particles", "1000000000"], "--particles 1000000000 with --batch-size 128 needs at least"),
])
def test_sizes_no_machine_has_are_refused_before_anything_is_built(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PPROGEN_MAX_BYTES", "8e9")
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "PPROGEN_MAX_BYTES" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_memory_limit_is_the_user_s_to_raise(tmp_path, capsys, monkeypatch):
    from pprogen.engine import budget

    monkeypatch.setenv("PPROGEN_MAX_BYTES", "1e4")  # below a small VAE's 4 copies of its weights
    assert main(["train", "vae", "--set", "hidden_dims=[16]", "--out", str(tmp_path / "a"), *TINY]) == 2
    assert "needs at least" in capsys.readouterr().err
    elements = budget.model_elements("vae", {"x_dim": 64, "hidden_dims": [16], "z_dim": 2})
    exact = sum(p.numel() for p in pprogen.create_model("vae", x_dim=64, hidden_dims=[16], z_dim=2).parameters())
    assert elements >= exact
    monkeypatch.setenv("PPROGEN_MAX_BYTES", "1e12")
    assert main(["train", "vae", "--set", "hidden_dims=[16]", "--out", str(tmp_path / "b"), *TINY]) == 0
    monkeypatch.setenv("PPROGEN_MAX_BYTES", "lots")
    assert main(["train", "vae", "--out", str(tmp_path / "c"), *TINY]) == 2
    assert "PPROGEN_MAX_BYTES='lots' is not a number of bytes" in capsys.readouterr().err


def test_sampling_more_than_fits_is_refused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits_binary", "--out", str(out), *TINY]) == 0
    monkeypatch.setenv("PPROGEN_MAX_BYTES", "8e9")
    capsys.readouterr()
    assert main(["sample", str(out), "-n", "1000000000", "--out", str(tmp_path / "s.npy")]) == 2
    assert "-n 1000000000 needs at least" in capsys.readouterr().err and not (tmp_path / "s.npy").exists()


def test_the_cli_lists_the_data_set_registry(capsys):
    from pprogen.data import list_datasets

    assert main(["list", "--data"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_datasets()
    assert any(line.startswith("digits ") and "offline" in line for line in lines)


def test_evaluate_refuses_rows_with_nan_or_inf_in_one_line(tmp_path, capsys):
    import numpy as np

    out = tmp_path / "flow"
    assert main(["train", "realnvp", "--data", "moons", "--limit", "64", "--epochs", "1", "--eval-samples", "2",
                 "--set", "num_layers=2", "--set", "hidden_dims=[8]", "--out", str(out), "--no-progress"]) == 0
    rows = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    for value in (np.nan, np.inf):
        bad = rows.copy()
        bad[3, 1] = value
        np.savez(tmp_path / "bad.npz", train=rows, test=bad)
        capsys.readouterr()
        before = (out / "summary.json").read_text()
        assert main(["evaluate", str(out), "--data", str(tmp_path / "bad.npz")]) == 2
        err = capsys.readouterr().err
        assert "holds NaN or Inf in 1 example(s) (first at index 3)" in err and len(err.strip().splitlines()) == 1
        assert (out / "summary.json").read_text() == before
    json.loads((out / "summary.json").read_text())  # strict JSON throughout


def _hold_lock(path):
    import subprocess
    import sys

    code = ("import sys, time\nfrom pprogen.runs import run_lock\nwith run_lock(sys.argv[1], 'pprogen train'):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_one_writer_per_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits_binary", "--out", str(out), *TINY]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    holder = _hold_lock(out)
    try:
        capsys.readouterr()
        for argv in (["train", "--resume", str(out), "--epochs", "3", "--no-progress"],
                     ["evaluate", str(out), "--num-samples", "2"], ["ship", str(out), str(tmp_path / "shipped")]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"is in use by pid {holder.pid} (pprogen train" in err and len(err.strip().splitlines()) == 1
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 0  # the dead holder's lock


def test_a_run_that_died_before_its_first_checkpoint_starts_again_with_the_same_out(tmp_path, capsys, monkeypatch):
    import pprogen.engine.trainers.svi as svi

    real_fit = svi.fit

    def dies_in_the_first_epoch(*args, run=None, **kwargs):
        run.materialize()
        raise KeyboardInterrupt

    monkeypatch.setattr(svi, "fit", dies_in_the_first_epoch)
    out = tmp_path / "run"
    argv = ["train", "fvsbn", "--data", "digits_binary", "--out", str(out), *TINY]
    assert main(argv) == 130
    assert "start the run again" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["config.json"]
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    assert f"start the run again with the same --out {out}" in capsys.readouterr().err
    monkeypatch.setattr(svi, "fit", real_fit)
    assert main(argv) == 0
    assert [json.loads(r)["epoch"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_resumed_run_s_training_time_adds_up_across_sessions(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits_binary", "--out", str(out), *TINY]) == 0
    first = json.loads((out / "summary.json").read_text())
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 0
    second = json.loads((out / "summary.json").read_text())
    assert second["resumed_at_epoch"] == 2
    assert second["train_seconds"] == pytest.approx(first["train_seconds"] + second["session_train_seconds"], abs=0.02)
    assert main(["train", "--resume", str(out), "--epochs", "4", "--no-progress"]) == 0
    third = json.loads((out / "summary.json").read_text())
    assert third["train_seconds"] == pytest.approx(second["train_seconds"] + third["session_train_seconds"], abs=0.02)


_FLAGS = [o.flag for o in OPTIONS if o.type is not None] + ["--eval-samples", "--limit", "--seed", "--trainer",
                                                              "--guide", "--set", "--override", "--plate-name"]


def _value_texts():
    from hypothesis import strategies as st

    numbers = st.one_of(st.integers(-10**13, 10**13), st.floats(allow_nan=True, allow_infinity=True))
    return st.one_of(numbers.map(str), numbers.map(str), st.sampled_from(["nan", "inf", "-1", "0", "true", "[1e9]", "[-3]", "x=", "=",
                                                        "z_dim=-1", "z_dim=1e12", "hidden_dims=[0]", "kl_warmup=-3",
                                                        "beta=true", "svi", "em", "nuts", "adversarial", "bogus"]),
                     st.text(max_size=6))


def test_random_options_give_a_config_or_one_line_error():
    """Property: whatever the options (parsed as the command line parses them), prepare_run gives a config that
    passes every check, or a one-line ValueError / TypeError; never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(_FLAGS), _value_texts()), max_size=4))
    def check(pairs):
        argv = ["train", "vae", "--limit", "30"]
        for flag, value in pairs:
            argv += [f"{flag}={value}"]
        try:
            args = parser().parse_args(argv)
        except SystemExit:  # argparse's own refusal of a value of the wrong type
            return
        try:
            config, *_ = prepare_run(args)
        except (ValueError, TypeError) as err:
            assert "\n" not in str(err) and str(err), repr(err)
            return
        opts.validate(config)
        json.dumps(config, allow_nan=False)  # what config.json will hold is strict JSON

    check()


def test_sample_and_annealing_sizes_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "vae", "--set", "hidden_dims=[8]", "--set", "z_dim=2", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--traverse", "--span", "inf"]) == 2
    assert "--span must be a positive finite number, got inf" in capsys.readouterr().err
    monkeypatch.setenv("PPROGEN_MAX_BYTES", "8e9")
    assert main(["evaluate", str(out), "--method", "ais", "--chains", "100000000"]) == 2
    err = capsys.readouterr().err
    assert "--chains 100000000 on 60 rows needs at least 1.5 TB" in err and len(err.strip().splitlines()) == 1
