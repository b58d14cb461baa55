"""Runs every script in examples/ with tiny arguments; fails when a script is left out of the list."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXPECTED_OUTPUT = {
    "bayesian_network_queries.py": "P(Rain = yes | GrassWet = yes)      = 0.7079",
    "train_vae.py": "validation NLL",
    "write_a_generative_story.py": "amortized_iaf  stl",
    "importance_sampled_evidence.py": "guide K =     5",
    "flow_energy_2d.py": "  2 u4     radial",
    "gan_modes_2d.py": "grid25      20 steps: modes",
    "conditional_digits.py": "label agreement",
    "impute_figure.py": "ancestral completion (the observed entries come first in the model's order); 2 rows, 2 "
                        "completions each",
}
TINY_ARGS = {
    "bayesian_network_queries.py": ["--num-rows", "2000", "--epochs", "1", "--quiet"],
    "train_vae.py": ["--epochs", "2", "--num-samples", "5", "--hidden", "16", "--quiet"],
    "write_a_generative_story.py": ["--epochs", "1", "--num-train", "300", "--num-valid", "50", "--num-samples", "5",
                                    "--quiet"],
    "importance_sampled_evidence.py": ["--epochs", "1", "--num-train", "300", "--num-test", "20", "--num-samples", "5",
                                       "--quiet"],
    "flow_energy_2d.py": ["--lengths", "2", "--steps", "2", "--batch", "16"],
    "gan_modes_2d.py": ["--steps", "20", "20"],
    "conditional_digits.py": ["--epochs", "1", "--channels", "4"],
    "impute_figure.py": ["--images", "2", "--completions", "2"],  # and a run trained here (see below)
}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TINY_ARGS) == sorted(EXPECTED_OUTPUT)


@pytest.mark.parametrize("script", sorted(TINY_ARGS))
def test_example_runs(script, tmp_path, monkeypatch, capsys):
    args = TINY_ARGS[script] + (["--out", str(tmp_path)] if script == "train_vae.py" else [])
    args += ["--out-dir", str(tmp_path)] if script == "flow_energy_2d.py" else []
    args += ["--out", str(tmp_path / "figure.png")] if script in ("gan_modes_2d.py", "conditional_digits.py") else []
    if script == "impute_figure.py":  # the shipped runs need binarized MNIST: a tiny FVSBN of the digits instead
        from pprogen.cli import main as pprogen

        run = tmp_path / "run"
        assert pprogen(["train", "fvsbn", "--data", "digits_binary", "--limit", "60", "--epochs", "1",
                        "--eval-samples", "5", "--no-progress", "--out", str(run)]) == 0
        args += ["--run", str(run), "--out", str(tmp_path / "figure.png")]
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert EXPECTED_OUTPUT[script] in capsys.readouterr().out
    if script == "impute_figure.py":
        assert (tmp_path / "figure.png").stat().st_size > 0
