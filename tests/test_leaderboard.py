"""benchmarks/likelihood_leaderboard.py on the embedded digits: resumable, refuses what it cannot honour."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import likelihood_leaderboard as lb  # noqa: E402


def test_the_leaderboard_trains_on_from_its_runs_and_refuses_what_it_cannot_honour(tmp_path, capsys):
    root = tmp_path / "board"
    common = ["--root", str(root), "--data", "digits_binary", "--entries", "fvsbn"]
    with pytest.raises(SystemExit, match="unknown leaderboard entry 'nadee'"):
        lb.main(["--root", str(root), "--entries", "nadee"])
    lb.main(common + ["--max-epochs", "1"])
    state = json.loads((root / "leaderboard.json").read_text())
    first = state["entries"]["fvsbn"]
    assert first["status"] == "finished" and first["epochs"] == 1
    assert first["best"]["method"] == "exact" and first["nll"] > 0
    assert "| fvsbn | `fvsbn` lr=0.003" in (root / "leaderboard.md").read_text()
    lb.main(common + ["--max-epochs", "1"])  # nothing more to do
    assert "finished earlier" in capsys.readouterr().out
    lb.main(common + ["--max-epochs", "2"])  # a larger budget trains on from the checkpoint, not from scratch
    again = json.loads((root / "leaderboard.json").read_text())["entries"]["fvsbn"]
    assert again["epochs"] == 2
    metrics = [json.loads(line) for line in (root / "fvsbn" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if "epoch" in m] == [1, 2]
    assert again["nll"] <= first["nll"]  # the table keeps the better of the two
    with pytest.raises(SystemExit, match="configuration changed since its run started"):
        lb.main(["--root", str(root), "--data", "digits", "--entries", "fvsbn"])
