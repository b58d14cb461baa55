"""The library logs (``logging``, no handler of its own) and only the command line prints: training's line per epoch
and the progress of an autoregressive model's ancestral sampling go through loggers under ``pprogen``; the command
line shows them on stderr as they are."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import pprogen
import pprogen.progress as progress
from pprogen.cli import main
from pprogen.inference import fit

PACKAGE = Path(pprogen.__file__).parent


@pytest.fixture
def no_cli_handler(monkeypatch):
    """The "pprogen" logger as a library user finds it: a test of the command line earlier in this process may have
    given it the command line's handler."""
    monkeypatch.setattr(logging.getLogger("pprogen"), "handlers", [])


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "progress", False)]


def test_no_library_module_prints():
    """print(...) and sys.stdout/stderr.write belong to the command line alone (print passed as a default too)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "cli.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id == "print":
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} print")
            if (isinstance(node, ast.Attribute) and node.attr == "write" and isinstance(node.value, ast.Attribute)
                    and node.value.attr in ("stdout", "stderr")):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} sys.{node.value.attr}.write")
    assert not found, "library code that prints instead of logging: " + ", ".join(found)


def test_without_a_terminal_training_logs_a_line_per_epoch_and_prints_nothing(caplog, capsys, no_cli_handler):
    model = pprogen.create_model("vae", x_dim=6, z_dim=2, hidden_dims=(8,))
    x = (torch.rand(60, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    with caplog.at_level(logging.INFO, logger="pprogen"):
        fit(model, model.default_guide(), x, epochs=3, batch_size=8, progress=True)
    lines = progress_lines(caplog)
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "train " in lines[0] and "seconds " in lines[0]
    assert {r.name for r in caplog.records if getattr(r, "progress", False)} == {"pprogen.inference.progress"}
    assert capsys.readouterr().err == ""  # the library configures no handler: its lines are the caller's to show


def test_training_without_progress_logs_no_epoch_lines(caplog, no_cli_handler):
    model = pprogen.create_model("vae", x_dim=6, z_dim=2, hidden_dims=(8,))
    x = (torch.rand(60, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    with caplog.at_level(logging.INFO, logger="pprogen"):
        fit(model, model.default_guide(), x, epochs=2, batch_size=8, progress=False)
    assert progress_lines(caplog) == []


def test_sampling_an_autoregressive_model_logs_every_tenth_of_the_dimensions(caplog, monkeypatch, no_cli_handler):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    model = pprogen.create_model("fvsbn", x_dim=20).eval()
    with caplog.at_level(logging.INFO, logger="pprogen"):
        samples = model.sample(3)
    assert samples.shape == (3, 20)
    assert progress_lines(caplog) == [f"sampling: {k}/20 dimensions" for k in range(2, 21, 2)]
    assert {r.name for r in caplog.records} == {"pprogen.models.autoregressive"}


def test_an_ensemble_counts_the_dimensions_of_each_ordering_it_samples_with(caplog, monkeypatch, no_cli_handler):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    model = pprogen.create_model("made", x_dim=10, hidden_dims=(8,), num_masks=2, order_agnostic=True).eval()
    with caplog.at_level(logging.INFO, logger="pprogen"):
        model.sample(40)  # 40 rows: both orderings draw some
    lines = progress_lines(caplog)
    assert lines[0] == "sampling: 2/20 dimensions (10 in each of 2 orderings)" and len(lines) == 10
    assert lines[-1] == "sampling: 20/20 dimensions (10 in each of 2 orderings)"


def test_pixelcnn_logs_pixels_and_imputation_logs_dimensions(caplog, monkeypatch, no_cli_handler):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    model = pprogen.create_model("pixelcnn", x_shape=(1, 4, 5), hidden_channels=4, num_blocks=1).eval()
    with caplog.at_level(logging.INFO, logger="pprogen"):
        model.sample(2)
    assert progress_lines(caplog) == [f"sampling: {k}/20 pixels" for k in range(2, 21, 2)]
    caplog.clear()
    fvsbn = pprogen.create_model("fvsbn", x_dim=10).eval()
    x = torch.zeros(2, 10)
    missing = torch.zeros(2, 10, dtype=torch.bool)
    missing[:, 5:] = True
    with caplog.at_level(logging.INFO, logger="pprogen"):
        fvsbn.impute(x, missing, num_completions=2)
    assert progress_lines(caplog) == [f"imputing: {k}/10 dimensions" for k in range(1, 11)]


def test_a_quick_sweep_shows_nothing_and_a_slow_one_shows_its_tenths(caplog, monkeypatch, no_cli_handler):
    """Lines start once the sweep has run DELAY_SECONDS (a clock of our own here): a sign of life is for slow ones."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    log = logging.getLogger("pprogen.test")
    with caplog.at_level(logging.INFO, logger="pprogen"):
        with progress.Sweep("sampling", 784, "dimensions", log) as sweep:
            for _ in range(784):
                sweep.advance()
        assert progress_lines(caplog) == []
        with progress.Sweep("sampling", 784, "dimensions", log) as sweep:
            for _ in range(784):
                now[0] += 0.01  # a step takes 10 ms: the first second is silent, then a line every tenth
                sweep.advance()
    assert progress_lines(caplog) == [f"sampling: {k}/784 dimensions" for k in (157, 235, 314, 392, 470, 549, 627,
                                                                                   706, 784)]


def test_on_a_terminal_a_sweep_draws_a_bar_and_logs_nothing(caplog, monkeypatch, no_cli_handler):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    with caplog.at_level(logging.INFO, logger="pprogen"):
        with progress.Sweep("sampling", 50, "dimensions", logging.getLogger("pprogen.test")) as sweep:
            for _ in range(50):
                sweep.advance()
            assert sweep.bar is not None and sweep.bar.n == 50
    assert progress_lines(caplog) == []


def test_the_command_line_shows_epoch_and_sampling_lines_on_stderr_as_they_are(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    out = tmp_path / "run"
    assert main(["train", "fvsbn", "--data", "digits_binary", "--limit", "120", "--epochs", "2", "--eval-samples", "5",
                 "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert said.out.startswith("training fvsbn on digits_binary (120 examples")  # the banner: printed by the CLI
    epochs = [line for line in said.err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"] and "train " in epochs[0]
    assert main(["sample", str(out), "-n", "3", "--out", str(tmp_path / "s.npy")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"sampling: {k}/64 dimensions" for k in (6, 13, 19, 26, 32, 38, 45, 51, 58, 64)]
    assert np.load(tmp_path / "s.npy").shape[0] == 3
