"""benchmarks/likelihood_leaderboard.py on the embedded digits: resumable, refuses what it cannot honour."""

import argparse
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
    assert "| fvsbn | `fvsbn` lr=0.001, batch_size=100, schedule=plateau" in (root / "leaderboard.md").read_text()
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


def test_shipped_entries_score_as_their_runs_and_a_better_shipped_result_is_kept(tmp_path, capsys):
    root, dest = tmp_path / "board", tmp_path / "shipped"
    common = ["--root", str(root), "--data", "digits_binary", "--entries", "fvsbn", "--ship", str(dest)]
    lb.main(common + ["--max-epochs", "1"])
    record = json.loads((root / "leaderboard.json").read_text())["entries"]["fvsbn"]
    shipped = json.loads((dest / "fvsbn" / "summary.json").read_text())
    assert shipped["valid_evaluation"]["nll"] == shipped["leaderboard"]["best"]["nll"]  # scored from the folder
    assert abs(shipped["leaderboard"]["best"]["nll"] - record["nll"]) <= 0.05
    assert shipped["leaderboard"]["dtype"] == "float16" and shipped["leaderboard"]["epochs"] == 1
    spot = shipped["leaderboard"]["spot_check"]  # the first validation rows, scored from the shipped folder
    assert spot["rows"] == 270 and abs(spot["nll"] - shipped["valid_evaluation"]["nll"]) < 1e-4  # 270: all of them
    assert lb.shipped_table(dest) == (dest / "leaderboard.md").read_text()
    config = "lr=0.001, batch_size=100, schedule=plateau, weight_decay=3.0, ema=0.999"
    assert f"| fvsbn | `fvsbn` {config} | {shipped['leaderboard']['best']['nll']:.2f} ± " \
        in (dest / "leaderboard.md").read_text()
    del shipped["leaderboard"]["spot_check"]  # shipped before spot checks existed: shipping again adds it
    (dest / "fvsbn" / "summary.json").write_text(json.dumps(shipped))
    lb.main(common + ["--max-epochs", "1"])
    assert "shipped already" in capsys.readouterr().out
    assert json.loads((dest / "fvsbn" / "summary.json").read_text())["leaderboard"]["spot_check"] == spot
    lb.main(common)  # --ship with no budget given ships only: it does not train on with the default budget
    assert "shipped already" in capsys.readouterr().out
    assert json.loads((root / "leaderboard.json").read_text())["entries"]["fvsbn"]["epochs"] == 1
    shipped["leaderboard"]["best"]["nll"] = 1.0  # pretend the shipped result is better than anything trained next
    (dest / "fvsbn" / "summary.json").write_text(json.dumps(shipped))
    with pytest.raises(SystemExit, match=r"holds a better result of fvsbn \(1.00 nats\)"):
        lb.main(common + ["--max-epochs", "2"])
    assert json.loads((dest / "fvsbn" / "summary.json").read_text())["leaderboard"]["epochs"] == 1
    assert sorted(p.name for p in dest.iterdir()) == ["fvsbn", "leaderboard.md"]  # no staging folder left


def test_the_trend_is_the_best_validation_nll_fallen_over_the_last_hour_and_the_target_says_how_far(tmp_path):
    lines = [{"epoch": i + 1, "valid_loss": v, "seconds": 1800.0} for i, v in enumerate([100.0, 98.0, 99.0, 96.5])]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert lb.trend(tmp_path) == pytest.approx(1.5)  # best 98.0 one hour before the end, 96.5 at the end
    record = {"spec": {"literature": 88.33}, "status": "finished", "best": {"nll": 90.33},
              "stop_reason": "finished", "falls_per_hour": 1.5}
    assert lb.target("nade", record) == "≤ 89.83: missed by 0.50 (still falling 1.50 nats/h)"
    assert lb.target("nade", {**record, "best": {"nll": 89.0}}) == "≤ 89.83: met"
    assert lb.target("eonade", record) == "-"  # reported against the literature, without a target
    refined = {**record, "refined": {"nll": 89.5}}  # the refined proposal's tighter estimate judges the target
    assert lb.target("nade", refined) == "≤ 89.83: met (by the refined proposal's estimate)"
    assert lb.target("nade", {**record, "refined": {"nll": 90.0}}) == \
        "≤ 89.83: missed by 0.17 (by the refined proposal's estimate; still falling 1.50 nats/h)"
    assert lb.target("nade", {**record, "refined": {"nll": 91.0}}) == "≤ 89.83: missed by 0.50 (still falling 1.50 nats/h)"


def test_a_shipped_latent_entry_is_scored_again_with_its_refined_guide_once(tmp_path, monkeypatch, capsys):
    root, dest = tmp_path / "board", tmp_path / "shipped"
    common = ["--root", str(root), "--data", "digits_binary", "--entries", "vae", "--k", "20", "--ship", str(dest)]
    with pytest.raises(SystemExit, match="give it with --ship DIR"):
        lb.main(["--root", str(root), "--entries", "vae", "--refine", "5"])
    lb.main(common + ["--max-epochs", "1", "--refine", "5"])
    shipped = json.loads((dest / "vae" / "summary.json").read_text())
    refined = shipped["leaderboard"]["refined"]
    assert refined["nll"] == shipped["valid_evaluation_refined"]["nll"] and refined["refine_steps"] == 5
    assert refined["num_samples"] == 20 and shipped["valid_evaluation_refined"]["num_data"] == 270
    assert refined["nll"] != shipped["leaderboard"]["best"]["nll"]  # another proposal, another estimate
    table = (dest / "leaderboard.md").read_text()
    assert f"; guide refined per image (5 steps): {refined['nll']:.2f} ± " in table
    assert lb.shipped_table(dest) == table
    calls = []  # shipped already, refined already at these settings: nothing is scored again
    real = lb.pprogen
    monkeypatch.setattr(lb, "pprogen", lambda *argv: calls.append(argv) or real(*argv))
    lb.main(common + ["--refine", "5"])
    assert calls == []
    lb.main(common + ["--refine", "6"])  # other settings: scored again
    assert [c[-1] for c in calls if c[0] == "evaluate"] == ["6"]


def test_a_latent_entrys_chunks_end_with_a_cheap_estimate_and_the_table_uses_its_own(tmp_path, monkeypatch):
    args = argparse.Namespace(data="binarized_mnist", data_dir=None, k=5000)
    vae = lb.train_command("vae", lb.ENTRIES["vae"], tmp_path / "vae", 3, args)
    assert vae[vae.index("--eval-samples") + 1] == str(lb.CHUNK_EVAL_SAMPLES)
    assert "--eval-samples" not in lb.train_command("nade", lb.ENTRIES["nade"], tmp_path / "nade", 3, args)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "checkpoint.pt").write_bytes(b"")  # a resumed run keeps the setting it started with
    assert "--eval-samples" not in lb.train_command("vae", lb.ENTRIES["vae"], tmp_path / "vae", 6, args)
    calls = []  # the table's figure: `pprogen evaluate` with K = --k draws, not the chunk's K = 10 estimate
    monkeypatch.setattr(lb, "pprogen", lambda *argv: calls.append(argv))
    (tmp_path / "vae" / "summary.json").write_text(json.dumps({"valid_evaluation": {"nll": 90.0, "nll_stderr": 0.3}}))
    assert lb.evaluate("vae", lb.ENTRIES["vae"], tmp_path / "vae", args)["nll"] == 90.0
    assert calls == [("evaluate", str(tmp_path / "vae"), "--split", "valid", "--num-samples", "5000")]


def test_an_entry_too_large_in_float16_ships_as_int8_blocks_or_not_at_all(tmp_path, monkeypatch, capsys):
    root, dest = tmp_path / "board", tmp_path / "shipped"
    common = ["--root", str(root), "--data", "digits_binary", "--entries", "fvsbn", "--max-epochs", "1"]
    lb.main(common)
    record = json.loads((root / "leaderboard.json").read_text())["entries"]["fvsbn"]
    monkeypatch.setattr(lb, "MAX_SHIPPED_BYTES", 6000)  # fvsbn on 64 pixels: float16 about 8.5 kB, int8 under 6
    lb.main(common + ["--ship", str(dest)])
    shipped = json.loads((dest / "fvsbn" / "summary.json").read_text())["leaderboard"]
    assert shipped["dtype"] == "int8" and shipped["weights_bytes"] <= 6000
    assert abs(shipped["best"]["nll"] - record["nll"]) <= 0.05  # scored again from the int8 folder
    monkeypatch.setattr(lb, "MAX_SHIPPED_BYTES", 1000)  # nothing fits: refused, nothing left behind
    with pytest.raises(SystemExit, match=r"no encoding both fits .* \(float16 takes .* MiB; int8 takes .* MiB; "
                                         r"float32 takes .* MiB\); not shipped"):
        lb.main(common + ["--ship", str(tmp_path / "other")])
    assert not any((tmp_path / "other").glob(".*new"))
