"""Run folders that cannot be turned against their user: one writer per run (a lock that names its holder and is
taken over from a dead process), every failed write one line naming the file and what is intact, leftovers of a
killed process swept, a run that died before its first checkpoint started again, strict JSON, and every value read
back (config.json, checkpoints, shipped metadata, int8 block scales) checked before it is used."""

from __future__ import annotations

import errno
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from pprogen.runs import Run, RunError, atomic_write, compact_weights, write_json

CONFIG = {"model": "m", "data": "d"}
ONE_LINE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

HOLDER = """
import sys, time
from pprogen.runs import run_lock
with run_lock(sys.argv[1], "pprogen train"):
    print("ready", flush=True)
    time.sleep(120)
"""


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text.strip() == text
    return text


def hold(path):
    """Another process holding ``path``'s lock (as `pprogen train` would)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def locked_elsewhere(path) -> bool:
    """Whether some open file description holds the flock of ``path/.lock`` (probed with a fresh one)."""
    import fcntl

    try:
        fd = os.open(path / ".lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


LEFTOVERS = (".checkpoint.pt.abcd1234.tmp", ".summary.json.x8y7z6w5.tmp", ".ais-valid.nc.k2_9qz0a.tmp",
             "..config.json.claimed.ab12cd34.tmp")
NOT_OURS = ("notes.tmp", ".hidden.tmp", ".keep.abc.tmp", "data.abcd1234.tmp")


def litter(path, age=0.0):
    """Temporaries of pprogen's writes and files that only look alike, last written ``age`` seconds ago."""
    for name in LEFTOVERS + NOT_OURS:
        (path / name).write_bytes(b"partial")
        os.utime(path / name, (time.time() - age, time.time() - age))


# ------------------------------------------------------------------ one writer per run


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    run = Run.create(CONFIG, tmp_path / "r")
    proc = hold(run.path)
    litter(run.path)  # as if the holder were writing them now
    try:
        with pytest.raises(RunError) as err:
            with Run.open(run.path).lock("pprogen evaluate", wait=0.2):
                pass
        text = one_line(err)
        assert text.startswith(f"run {run.path} is in use by pid {proc.pid} (pprogen train, started ")
        assert text.endswith("); wait for it or stop it")
        assert all((run.path / name).exists() for name in LEFTOVERS)  # not swept under another's lock
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run.path / ".lock").exists()  # a killed holder leaves its lock file: stale, taken over
    with Run.open(run.path).lock("pprogen evaluate") as same:
        assert same.path == run.path and locked_elsewhere(run.path)
        assert json.loads((run.path / ".lock").read_text())["pid"] == os.getpid()
        assert not any((run.path / name).exists() for name in LEFTOVERS)
    assert all((run.path / name).exists() for name in NOT_OURS)
    assert not (run.path / ".lock").exists() and not locked_elsewhere(run.path)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError, SystemExit])
def test_the_lock_is_released_on_any_exit(tmp_path, stop):
    run = Run.create(CONFIG, tmp_path / "r")
    with pytest.raises(stop):
        with run.lock("pprogen train"):
            assert locked_elsewhere(run.path)
            raise stop()
    assert not locked_elsewhere(run.path) and sorted(p.name for p in run.path.iterdir()) == ["config.json"]


def test_locks_nest_in_one_process(tmp_path):
    from pprogen.runs import run_lock

    run = Run.create(CONFIG, tmp_path / "r")
    with run.lock("pprogen train"):
        with run_lock(run.path, "pprogen evaluate"):  # the engine may lock again deeper down
            assert locked_elsewhere(run.path)
        assert locked_elsewhere(run.path)
    assert not locked_elsewhere(run.path)


def test_a_lazy_run_is_locked_at_its_first_write(tmp_path):
    run = Run.create(CONFIG, tmp_path / "lazy", lazy=True)
    with run.lock("pprogen train"):
        assert not run.path.exists()  # nothing on disk until the first write
        run.write_metrics([{"epoch": 1}])
        assert locked_elsewhere(run.path) and run.config == CONFIG
    assert not locked_elsewhere(run.path) and sorted(p.name for p in run.path.iterdir()) == ["config.json",
                                                                                             "metrics.jsonl"]


def test_a_lock_file_that_is_a_link_is_not_followed(tmp_path):
    run = Run.create(CONFIG, tmp_path / "r")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run.path / ".lock").symlink_to(victim)
    with pytest.raises(RunError) as err:
        with run.lock("pprogen train"):
            pass
    assert ".lock" in one_line(err) and "remove it" in str(err.value)
    assert victim.read_text() == "precious"


# ------------------------------------------------------------------ failed writes


def full_disk_torch_save(state, tmp):
    with open(tmp, "wb") as fh:
        fh.write(b"x" * 4096)
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 45")


def test_torch_on_a_full_disk_is_one_line_naming_the_checkpoint_its_size_and_what_is_intact(tmp_path, monkeypatch):
    run = Run.create(CONFIG, tmp_path / "r")
    run.save_checkpoint({"epoch": 1, "params": {"p0": torch.zeros(1000)}})
    before = (run.path / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(torch, "save", full_disk_torch_save)
    with pytest.raises(RunError) as err:
        run.save_checkpoint({"epoch": 2, "params": {"p0": torch.zeros(300_000)}})
    text = one_line(err)
    assert text.startswith(f"could not write {run.path / 'checkpoint.pt'} (")
    assert "unexpected pos 123 vs 45" in text and "disk" in text
    assert "it needs about 1.1 MiB free in" in text and " free now)" in text  # 300k float32 = 1.14 MiB
    assert f"the last complete checkpoint is intact: free space and resume with --resume {run.path}" in text
    assert (run.path / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoint.pt", "config.json"]


def test_a_first_checkpoint_that_cannot_be_written_says_to_start_again(tmp_path, monkeypatch):
    run = Run.create(CONFIG, tmp_path / "r")

    def enospc(state, tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(RunError) as err:
        run.save_checkpoint({"epoch": 1})
    text = one_line(err)
    assert text.startswith(f"could not write {run.path / 'checkpoint.pt'} (No space left on device)")
    assert "no checkpoint was saved yet" in text and f"with the same --out {run.path}" in text


def file_size_limit(limit):
    """The OS refuses to grow any file past ``limit`` bytes (EFBIG), as a full disk refuses every byte."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    def restore():
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    return restore


def write_bytes(path, n):
    with open(path, "wb") as fh:
        fh.write(b"\0" * n)


WRITERS = {
    "checkpoint.pt": lambda run: run.save_checkpoint({"epoch": 1, "params": {"p": torch.zeros(5000)}}),
    "model.safetensors": lambda run: run.save_weights("model", torch.nn.Linear(100, 50)),
    "summary.json": lambda run: run.write_json("summary.json", {"x": list(range(3000))}),
    "metrics.jsonl": lambda run: run.write_metrics([{"epoch": i, "loss": 1.0} for i in range(500)]),
    "ais-valid.nc": lambda run: atomic_write(run.path / "ais-valid.nc", lambda tmp: write_bytes(tmp, 40_000)),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_writer_turns_a_refused_write_into_one_line(tmp_path, name):
    run = Run.create(CONFIG, tmp_path / "r")
    restore = file_size_limit(2048)
    try:
        with pytest.raises(RunError) as err:
            WRITERS[name](run)
    finally:
        restore()
    text = one_line(err)
    assert text.startswith(f"could not write {run.path / name} (") and "it needs about" in text
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json"]  # no temporary left behind


def test_a_writer_failing_for_another_reason_is_still_one_line(tmp_path):
    target = tmp_path / "picture.png"
    target.write_bytes(b"old")

    def broken(tmp):
        raise ValueError("cannot encode this figure\nsecond line of a traceback-like message")

    with pytest.raises(RunError) as err:
        atomic_write(target, broken)
    text = one_line(err)
    assert text == f"could not write {target} (cannot encode this figure); the previous picture.png is intact"
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["picture.png"]


# ------------------------------------------------------------------ leftovers and restarts


def test_leftover_temporaries_are_swept_when_the_folder_is_opened(tmp_path):
    run = Run.create(CONFIG, tmp_path / "r")
    litter(run.path)
    Run.open(run.path)  # a moment old: perhaps the write in progress of a process that writes without the lock
    assert all((run.path / name).exists() for name in LEFTOVERS)
    litter(run.path, age=600)
    (run.path / ".dir.abcd1234.tmp").mkdir()  # a folder is never ours
    Run.open(run.path)
    names = {p.name for p in run.path.iterdir()}
    assert names == {"config.json", ".dir.abcd1234.tmp", *NOT_OURS}


def test_dead_ship_staging_folders_beside_the_target_are_removed(tmp_path):
    from pprogen.runs import remove_stale_partials

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".shipped.{pid}.123.partial"
    live = tmp_path / f".shipped.{os.getpid()}.456.partial"
    other = tmp_path / f".other.{pid}.123.partial"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    remove_stale_partials(tmp_path / "shipped")
    assert not stale.exists() and live.exists() and other.exists()
    stale.mkdir()
    staging = tmp_path / f".shipped.{os.getpid()}.789.partial"
    staging.mkdir()
    Run.create(CONFIG, staging)  # what `pprogen ship` does: dead attempts at the same target go
    assert not stale.exists() and live.exists() and other.exists() and (staging / "config.json").is_file()


def test_a_run_that_died_before_its_first_checkpoint_starts_again_with_the_same_out(tmp_path):
    out = tmp_path / "r"
    Run.create(CONFIG, out)
    (out / ".checkpoint.pt.abcd1234.tmp").write_bytes(b"half")
    with pytest.raises(RunError) as err:
        Run.open(out).load_checkpoint()
    assert f"start the run again with the same --out {out}" in one_line(err)
    run = Run.create({"model": "m2", "data": "d"}, out, lazy=True, reuse=True)
    assert json.loads((out / "config.json").read_text()) == CONFIG  # replaced at the first write only
    run.save_checkpoint({"epoch": 1})
    assert Run.open(out).config == {"model": "m2", "data": "d"}
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json"]
    with pytest.raises(RunError, match="already holds a run; resume it with --resume"):
        Run.create(CONFIG, out, reuse=True)  # now it has a checkpoint


def test_an_unstarted_run_in_use_by_another_process_is_not_taken_over(tmp_path):
    out = tmp_path / "r"
    Run.create(CONFIG, out)
    proc = hold(out)
    try:
        with pytest.raises(RunError) as err:
            Run.create(CONFIG, out, reuse=True)
        assert f"is in use by pid {proc.pid}" in one_line(err)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    Run.create({"model": "m3", "data": "d"}, out, reuse=True)
    assert Run.open(out).config["model"] == "m3"


# ------------------------------------------------------------------ JSON


def test_summary_json_is_strict_json(tmp_path):
    run = Run.create(CONFIG, tmp_path / "r")
    run.write_json("summary.json", {"nll": float("nan"), "best": math.inf, "worst": -math.inf,
                                    "np": np.float32("nan"), "t": torch.tensor(float("inf")), "ok": np.float64(1.5),
                                    "nested": [{"v": float("nan")}, (1, np.int64(2))], 3: "int key"})

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    summary = json.loads((run.path / "summary.json").read_text(), parse_constant=refuse)
    assert summary == {"nll": None, "best": None, "worst": None, "np": None, "t": None, "ok": 1.5,
                       "nested": [{"v": None}, [1, 2]], "3": "int key"}
    run.write_metrics([{"epoch": 1, "train_loss": float("nan")}])
    assert json.loads((run.path / "metrics.jsonl").read_text(), parse_constant=refuse) == {"epoch": 1,
                                                                                         "train_loss": None}
    write_json(tmp_path / "card.json", {"x": float("inf")})
    assert json.loads((tmp_path / "card.json").read_text(), parse_constant=refuse) == {"x": None}


@pytest.mark.parametrize("content", [b'{"nll": 1.5, "valid_ev', b"\x89PNG\r\n\x1a\n\x00", b"[1, 2]", b""])
def test_a_damaged_json_file_is_one_line_naming_it(tmp_path, content):
    run = Run.create(CONFIG, tmp_path / "r")
    (run.path / "summary.json").write_bytes(content)
    with pytest.raises(RunError) as err:
        run.read_json("summary.json")
    assert str(run.path / "summary.json") in one_line(err)
    (run.path / "config.json").write_bytes(content)
    with pytest.raises(RunError) as err:
        Run.open(run.path).config_with("model")
    assert str(run.path / "config.json") in one_line(err)


def test_a_damaged_metrics_file_is_one_line_naming_it(tmp_path):
    run = Run.create(CONFIG, tmp_path / "r")
    (run.path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "tra')
    with pytest.raises(RunError) as err:
        run.read_metrics()
    assert str(run.path / "metrics.jsonl") in one_line(err) and "line 2" in str(err.value)


# ------------------------------------------------------------------ values read back


@pytest.mark.parametrize("state, problem", [
    ({"history": {}}, "no epoch"),
    ({"epoch": -1}, "'epoch'"),
    ({"epoch": 1.5}, "'epoch'"),
    ({"epoch": True}, "'epoch'"),
    ({"epoch": "3"}, "'epoch'"),
    ({"epoch": torch.tensor(3)}, "'epoch'"),
    ({"epoch": 2, "history": [1, 2]}, "'history'"),
    ({"epoch": 2, "history": {"records": {"a": 1}}}, "'history'"),
    ({"epoch": 2, "history": {"records": [], "best_epoch": -3}}, "'history'"),
    ({"epoch": 2, "bad_epochs": -1}, "'bad_epochs'"),
    ({"epoch": 2, "rng": {"torch": torch.zeros(3)}}, "'rng'"),
    ([1, 2, 3], "not a checkpoint"),
])
def test_a_checkpoint_with_wrong_values_is_one_line_naming_it(tmp_path, state, problem):
    run = Run.create(CONFIG, tmp_path / "r")
    torch.save(state, run.path / "checkpoint.pt")
    with pytest.raises(RunError) as err:
        run.load_checkpoint()
    text = one_line(err)
    assert str(run.path / "checkpoint.pt") in text and problem in text


def test_a_real_checkpoint_passes_the_checks(tmp_path):
    from pprogen.runs import rng_state

    run = Run.create(CONFIG, tmp_path / "r")
    state = {"epoch": 3, "rng": rng_state(), "bad_epochs": 0, "history": {
        "records": [{"epoch": 1, "train_loss": 2.0}], "best_epoch": None, "best_valid_loss": math.inf,
        "stop_reason": "finished"}}
    run.save_checkpoint(state)
    assert run.load_checkpoint()["epoch"] == 3


@pytest.mark.parametrize("key, value", [
    ("device", 3), ("device", ""), ("model_args", [1]), ("model_args", "z_dim=4"), ("flatten", "yes"), ("flatten", 1),
    ("limit", 0), ("limit", -5), ("limit", True), ("limit", 2.5), ("limit", "10"), ("seed", "0"), ("seed", -1),
    ("seed", 2**40), ("train", []), ("model", ""), ("model", 7), ("guide", None), ("eval_samples", 0),
    ("data", 5), ("data_dir", ["a"]), ("plate_name", 1), ("trainer", ""), ("shipped", []), ("overrides", {}),
])
def test_a_config_with_a_wrong_value_is_one_line_naming_config_json(tmp_path, key, value):
    run = Run.create(CONFIG, tmp_path / "r")
    (run.path / "config.json").write_text(json.dumps({**CONFIG, "model_args": {}, "train": {}, key: value}))
    with pytest.raises(RunError) as err:
        Run.open(run.path).config_with("model", "data", "model_args", "train")
    text = one_line(err)
    assert text.startswith(f"{run.path / 'config.json'}: ") and repr(key) in text


SHIPPED = {"dtype": "float16", "data": {"shape": [64], "image_shape": [1, 8, 8], "binary": True, "num_classes": None}}


@pytest.mark.parametrize("change", [
    {"dtype": "int4"}, {"dtype": None}, {"data": [64]},
    {"data": {**SHIPPED["data"], "shape": []}}, {"data": {**SHIPPED["data"], "shape": [0]}},
    {"data": {**SHIPPED["data"], "shape": [-64]}}, {"data": {**SHIPPED["data"], "shape": ["64"]}},
    {"data": {**SHIPPED["data"], "shape": [64.0]}}, {"data": {**SHIPPED["data"], "shape": 64}},
    {"data": {**SHIPPED["data"], "shape": [10**6, 10**6]}},
    {"data": {**SHIPPED["data"], "image_shape": [1, 8, 9]}}, {"data": {**SHIPPED["data"], "image_shape": [64, 0]}},
    {"data": {**SHIPPED["data"], "binary": "yes"}}, {"data": {**SHIPPED["data"], "num_classes": 0}},
    {"data": {**SHIPPED["data"], "num_classes": 2.0}}, {"data": {k: v for k, v in SHIPPED["data"].items()
                                                                 if k != "binary"}},
])
def test_shipped_metadata_is_checked_before_anything_is_allocated(tmp_path, change):
    run = Run.create({**CONFIG, "shipped": SHIPPED}, tmp_path / "r")
    assert Run.open(run.path).config["shipped"] == SHIPPED
    (run.path / "config.json").write_text(json.dumps({**CONFIG, "shipped": {**SHIPPED, **change}}))
    with pytest.raises(RunError) as err:
        Run.open(run.path).config
    assert one_line(err).startswith(f"{run.path / 'config.json'}: ") and "'shipped'" in str(err.value)


def int8_run(tmp_path):
    module = torch.nn.Linear(32, 24)  # 768 weights: three blocks of 256
    run = Run.create(CONFIG, tmp_path / "r")
    run.save_weights("model", module, *compact_weights(module, torch.nn.Linear(32, 24), half=False, int8=True))
    path = run.path / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    return run, module, path, tensors, metadata


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 0.0, -0.5, 1e37])
def test_int8_block_scales_must_be_finite_and_positive(tmp_path, bad):
    from pprogen.runs import SCALE

    run, module, path, tensors, metadata = int8_run(tmp_path)
    run.load_weights("model", torch.nn.Linear(32, 24))  # as written: fine
    tensors["weight" + SCALE][1] = bad
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(RunError) as err:
        run.load_weights("model", torch.nn.Linear(32, 24))
    text = one_line(err)
    assert str(path) in text and "'weight'" in text and "block scale" in text


@pytest.mark.parametrize("key, value", [
    ("pprogen_rebuilt", "[]"), ("pprogen_rebuilt", '{"a": 3}'), ("pprogen_packed", '{"a": 1}'),
    ("pprogen_packed", "[1]"), ("pprogen_int8", '"weight"'), ("pprogen_int8", "not json"),
])
def test_weights_metadata_of_the_wrong_type_is_one_line(tmp_path, key, value):
    run, module, path, tensors, metadata = int8_run(tmp_path)
    save_file(tensors, str(path), metadata={**metadata, key: value})
    with pytest.raises(RunError) as err:
        run.load_weights("model", torch.nn.Linear(32, 24))
    assert str(path) in one_line(err)


# ------------------------------------------------------------------ properties

JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=5),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                   max_size=3), max_leaves=6)
CONFIG_KEYS = ("model", "data", "data_dir", "model_args", "train", "limit", "flatten", "guide", "trainer", "seed",
               "device", "eval_samples", "plate_name", "kind", "target", "overrides", "pprogen_version")


def first_line_only(text: str) -> None:
    assert "\n" not in text


@ONE_LINE
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), JSONISH, max_size=6) | JSONISH)
def test_any_config_json_is_read_or_refused_in_one_line(tmp_path_factory, config):
    folder = tmp_path_factory.mktemp("cfg")
    text = json.dumps(config)
    (folder / "config.json").write_text(text)
    try:
        read = Run.open(folder).config
    except RunError as err:
        first_line_only(str(err))
        assert str(folder / "config.json") in str(err)
        return
    assert json.dumps(read) == text
    for key, value in read.items():  # what the engine relies on once it is read
        if key == "limit":
            assert value is None or (type(value) is int and value > 0)
        if key in ("model_args", "train"):
            assert isinstance(value, dict)
        if key == "flatten":
            assert isinstance(value, bool)
        if key == "device":
            assert isinstance(value, str)


SCALARS = st.none() | st.booleans() | st.integers(-3, 10**13) | st.floats() | st.text(max_size=3)
SHAPES = st.lists(st.integers(-2, 40) | st.sampled_from([10**9, 2.0, "8", None]), max_size=4) | SCALARS


@ONE_LINE
@given(st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["float16", "float32", "int8", "int4", 16]),
    "data": st.fixed_dictionaries({}, optional={"shape": SHAPES, "image_shape": SHAPES, "binary": SCALARS,
                                                 "num_classes": SCALARS}) | SCALARS}) | SCALARS)
def test_any_shipped_metadata_is_refused_in_one_line_or_builds_its_blank_data(tmp_path_factory, shipped):
    from pprogen.engine.loaded import shapes_only

    folder = tmp_path_factory.mktemp("ship")
    (folder / "config.json").write_text(json.dumps({**CONFIG, "shipped": shipped}))
    try:
        config = Run.open(folder).config
    except RunError as err:
        first_line_only(str(err))
        return
    dataset = shapes_only(config)  # nothing else may go wrong once the metadata passed
    if dataset is not None:
        assert dataset.train.shape[0] == 2 and dataset.train.numel() <= 2 * 2**26


CHECKPOINT_VALUES = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(
    st.sampled_from(["records", "best_epoch", "best_valid_loss", "stop_reason", "fast_path"]),
    SCALARS | st.lists(st.dictionaries(st.text(max_size=3), SCALARS, max_size=2) | SCALARS, max_size=2), max_size=4)


@ONE_LINE
@given(st.dictionaries(st.sampled_from(["epoch", "history", "bad_epochs", "lr", "params"]), CHECKPOINT_VALUES,
                       max_size=4))
def test_any_checkpoint_is_loaded_with_sound_values_or_refused_in_one_line(tmp_path_factory, state):
    folder = tmp_path_factory.mktemp("ckpt")
    run = Run.create(CONFIG, folder / "r")
    torch.save(state, run.path / "checkpoint.pt")
    try:
        loaded = run.load_checkpoint()
    except RunError as err:
        first_line_only(str(err))
        assert str(run.path / "checkpoint.pt") in str(err)
        return
    assert type(loaded["epoch"]) is int and loaded["epoch"] >= 0
    assert isinstance(loaded.get("history", {}), dict)
    assert isinstance(loaded.get("history", {}).get("records", []), list)


@ONE_LINE
@given(st.lists(st.floats(width=32) | st.sampled_from([0.0, -1.0, 3e38, 1e-30]), min_size=3, max_size=3))
def test_any_int8_block_scales_give_finite_weights_or_are_refused(tmp_path_factory, scales):
    from pprogen.runs import SCALE, read_weights

    run, module, path, tensors, metadata = int8_run(tmp_path_factory.mktemp("q"))
    tensors["weight" + SCALE] = torch.tensor(scales, dtype=torch.float32)
    save_file(tensors, str(path), metadata=metadata)
    try:
        weights, _, _ = read_weights(path)
    except RunError as err:
        first_line_only(str(err))
        return
    assert torch.isfinite(weights["weight"]).all()
