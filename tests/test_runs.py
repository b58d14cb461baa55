import pytest
import torch

from pprogen.runs import Run, RunError, atomic_write


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def broken(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_checkpoint_round_trip_without_pickle(tmp_path):
    run = Run.create({"model": "m", "data": "d"}, tmp_path / "r")
    state = {"epoch": 3, "params": {"p0": torch.arange(4.0)}, "rng": torch.get_rng_state(), "history": {"records": [{"a": 1.5}]}}
    run.save_checkpoint(state)
    loaded = Run.open(tmp_path / "r").load_checkpoint()
    assert loaded["epoch"] == 3 and torch.equal(loaded["params"]["p0"], torch.arange(4.0))
    assert loaded["history"]["records"][0]["a"] == 1.5


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    run = Run.create({"model": "m", "data": "d"}, tmp_path / "r")
    run.save_checkpoint({"epoch": 1})
    raw = (run.path / "checkpoint.pt").read_bytes()
    (run.path / "checkpoint.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RunError, match="unreadable or corrupted"):
        run.load_checkpoint()


def test_existing_run_folder_is_refused_and_left_alone(tmp_path):
    Run.create({"model": "m", "data": "d"}, tmp_path / "r")
    before = (tmp_path / "r" / "config.json").read_text()
    with pytest.raises(RunError, match="already holds a run; resume it with --resume"):
        Run.create({"model": "other", "data": "d"}, tmp_path / "r")
    assert (tmp_path / "r" / "config.json").read_text() == before


def test_opening_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="not a pprogen run folder"):
        Run.open(tmp_path)


def test_default_folder_name_has_model_data_and_time(tmp_path):
    run = Run.create({"model": "vae", "data": "digits_binary"}, root=tmp_path)
    assert run.path.parent == tmp_path and run.path.name.startswith("vae-digits_binary-")
