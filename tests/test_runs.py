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


def test_a_failed_write_is_one_line_naming_the_file_and_what_is_intact(tmp_path):
    import errno

    run = Run.create({"model": "m", "data": "d"}, tmp_path / "r")
    run.save_checkpoint({"epoch": 1, "params": {"p0": torch.zeros(1000)}})
    before = (run.path / "checkpoint.pt").read_bytes()

    def full(state, tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    original = torch.save
    torch.save = full
    try:
        with pytest.raises(RunError) as err:
            run.save_checkpoint({"epoch": 2, "params": {"p0": torch.zeros(1000)}})
    finally:
        torch.save = original
    text = str(err.value)
    assert text.startswith(f"could not write {run.path / 'checkpoint.pt'} (No space left on device); it needs about")
    assert f"the last complete checkpoint is intact: free space and resume with --resume {run.path}" in text
    assert "\n" not in text
    assert (run.path / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoint.pt", "config.json"]


def test_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        run = Run.create({"model": "m", "data": "d"}, tmp_path / "r")
        run.save_checkpoint({"epoch": 1})
        os.umask(0o077)
        run.write_json("summary.json", {})
    finally:
        os.umask(old)
    assert (run.path / "config.json").stat().st_mode & 0o777 == 0o644
    assert (run.path / "checkpoint.pt").stat().st_mode & 0o777 == 0o644
    assert (run.path / "summary.json").stat().st_mode & 0o777 == 0o600


def test_a_folder_that_is_not_a_run_is_refused_for_writing_and_reading(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(RunError, match="holds files that are not a pprogen run; choose an empty or new --out"):
        Run.create({"model": "m", "data": "d"}, tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    Run.create({"model": "m", "data": "d"}, tmp_path / "empty")  # an empty folder is fine
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text("{}")
    with pytest.raises(RunError, match=r"lacks 'model', 'data', 'model_args', 'train': it is not the config"):
        Run.open(tmp_path / "bare").config_with("model", "data", "model_args", "train")


def test_a_lazy_run_is_written_at_its_first_write(tmp_path):
    run = Run.create({"model": "m", "data": "d"}, tmp_path / "lazy", lazy=True)
    assert not (tmp_path / "lazy").exists() and not run.exists
    run.write_metrics([{"epoch": 1}])
    assert run.exists and Run.open(tmp_path / "lazy").config == {"model": "m", "data": "d"}


def test_a_lazy_run_never_overwrites_a_run_that_took_its_folder_meanwhile(tmp_path):
    run = Run.create({"model": "m", "data": "d"}, tmp_path / "race", lazy=True)
    (tmp_path / "race").mkdir()
    (tmp_path / "race" / "config.json").write_text('{"model": "other"}')
    with pytest.raises(RunError, match="was created by another run while this one started"):
        run.write_metrics([{"epoch": 1}])
    assert (tmp_path / "race" / "config.json").read_text() == '{"model": "other"}'
    assert sorted(p.name for p in (tmp_path / "race").iterdir()) == ["config.json"]


def test_an_epoch_loop_resumed_after_a_non_finite_stop_is_no_longer_stopped():
    from pprogen.distributed import World
    from pprogen.inference.loop import EpochLoop

    loop = EpochLoop(5, 0, World())
    state = EpochLoop(5, 0, World()).state(2)
    state["history"]["stop_reason"] = "non_finite"
    loop.resume(state)
    assert loop.history.stop_reason == "finished" and loop.start_epoch == 2


def test_weights_that_do_not_match_the_config_are_a_one_line_error(tmp_path):
    run = Run.create({"model": "m", "data": "d"}, tmp_path / "r")
    run.save_weights("model", torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)))
    for other, message in [
        (torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)),
         r"does not match config.json: '0.weight' has shape \(4, 3\) in the weights, \(5, 3\) in the model"),
        (torch.nn.Sequential(torch.nn.Linear(3, 4)), r"holds '1.bias', which the model of config.json has not"),
        (torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2)), r"lacks '2.bias'"),
    ]:
        with pytest.raises(RunError, match=message) as err:
            run.load_weights("model", other)
        assert "\n" not in str(err.value)
