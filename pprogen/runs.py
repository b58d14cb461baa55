"""Run folders: ``runs/<model>-<data>-<time>/`` with config, metrics, weights and a resumable checkpoint.

Every write goes to a temporary file in the same folder and is moved into place with ``os.replace``, so a
killed run never leaves a half-written file; a write that fails (a full disk) is one line naming the file, the
space it needs and what is intact. Weights are safetensors; the checkpoint is read back with
``torch.load(weights_only=True)``, so no pickle code ever runs, and every value read back (config.json, the
checkpoint, a shipped folder's metadata and int8 scales) is checked before it is used. One process writes a run
at a time: :meth:`Run.lock` / :func:`run_lock`. The parts live in :mod:`pprogen.runfiles`.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ContextManager, Iterator

import torch
from safetensors.torch import save_file

from pprogen.runfiles import lock as locks
from pprogen.runfiles.checks import check_checkpoint, check_config
from pprogen.runfiles.errors import RunError, RunInUseError, RunWriteError
from pprogen.runfiles.files import (CHECKPOINT, CONFIG, atomic_write, dumps, read_json_object, remove_stale_partials,
                                    staging_target, sweep_temporaries, temporaries, write_json, write_new)
from pprogen.runfiles.lock import LOCK, run_lock
from pprogen.runfiles.rng import rng_state, seed_everything, set_rng_state
from pprogen.runfiles.weights import (INT8_BLOCK, PACKED, QUANTIZED, REBUILT, SCALE, compact_weights,
                                      dequantize_blocks, load_weights_into, quantize_blocks, read_weights,
                                      state_tensors, tensor_digest)

__all__ = [
    "CHECKPOINT", "CONFIG", "INT8_BLOCK", "LOCK", "PACKED", "QUANTIZED", "REBUILT", "REQUIRED", "SCALE", "Run",
    "RunError", "RunInUseError", "RunWriteError", "atomic_write", "compact_weights", "dequantize_blocks",
    "quantize_blocks", "read_json_object", "read_weights", "remove_stale_partials", "rng_state", "run_lock",
    "seed_everything", "set_rng_state", "sweep_temporaries", "tensor_digest", "write_json",
]

REQUIRED = ("model", "data", "model_args", "train")  # what the config.json of every `pprogen train` run holds
METRICS = "metrics.jsonl"
RESULTS = (CHECKPOINT, METRICS, "summary.json")  # beside weights: what a run that has trained an epoch holds


def _nbytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (a checkpoint): about what saving it takes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _signature(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _unstarted(path: Path) -> tuple[int, ...] | None:
    """The signature of ``path/config.json`` when the folder holds the config of a run that stopped before its
    first checkpoint and nothing else (leftover temporaries and a stale lock file aside), else None."""
    config = path / CONFIG
    try:
        names = {p.name for p in path.iterdir()} - {*temporaries(path), locks.LOCK}
        if names != {CONFIG} or config.is_symlink() or not config.is_file():
            return None
        old = json.loads(config.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return _signature(config) if isinstance(old, dict) and "model" in old else None


class Run:
    """A run folder. ``Run.create`` starts a new one; ``Run.open`` reads an existing one; ``run.lock()`` makes
    this process its only writer for a ``with`` block."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pending: dict[str, Any] | None = None  # the config of a lazily created run not written yet
        self._staged = False  # True: the pending config replaces an existing one (a resumed run)
        self._replaces: tuple[int, ...] | None = None  # the config.json of an unstarted run this one takes over

    @classmethod
    def create(cls, config: dict[str, Any], out: str | Path | None = None, root: str | Path = "runs",
               lazy: bool = False, reuse: bool = False) -> "Run":
        """A new run folder for ``config`` (refused where a run or other files already are); with ``lazy`` the
        folder and config.json are written at the run's first write, not now.

        With ``reuse`` (what `pprogen train` asks for) a folder that holds only the config.json of a run that
        stopped before its first checkpoint (no checkpoint, metrics, weights or summary; Ctrl-C, a full disk or a
        crash in the first epoch) is taken over: its config.json is replaced at this run's first write, as long as
        no other process holds the folder's lock and the file has not changed since. Without it such a folder is
        refused as any run is. A `pprogen ship` staging folder (``.TARGET.PID.NS.partial``) being created first
        removes the staging folders of earlier, killed attempts at the same target."""
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = Path(root) / f"{config['model']}-{Path(str(config['data'])).stem}-{stamp}"
        path = Path(out)
        replaces = None
        if (path / CONFIG).exists() or (path / CHECKPOINT).exists():
            replaces = _unstarted(path) if reuse and path.is_dir() else None
            if replaces is None:
                raise RunError(f"output folder {path} already holds a run; resume it with --resume {path} "
                               "or choose another --out")
            busy = locks.in_use(path)
            if busy:
                raise RunInUseError(busy)
        if path.exists() and not path.is_dir():
            raise RunError(f"output path {path} is a file, not a folder; choose another --out")
        if replaces is None and path.is_dir() and {p.name for p in path.iterdir()} - {*temporaries(path), locks.LOCK}:
            raise RunError(f"output folder {path} exists and holds files that are not a pprogen run; choose an "
                           "empty or new --out")
        target = staging_target(path)
        if target is not None:
            remove_stale_partials(target)
        run = cls(path)
        run._pending, run._replaces = config, replaces
        if not lazy:
            run.materialize()
        return run

    def materialize(self) -> None:
        """Write the folder and its config.json, if that has not happened yet (a lazily created run does it
        at its first write, so that a run whose trainer refuses its data leaves nothing on disk). A new run's
        config.json is created exclusively: a run that took the folder in the meantime is not overwritten. A lock
        this process wants on the folder (:meth:`lock` on a lazy run) is taken here, before anything is written."""
        if self._pending is None:
            return
        locks.claim(self.path)
        if self._staged:
            write_json(self.path / CONFIG, self._pending)
        elif self._replaces is not None:
            with locks.run_lock(self.path):  # this process's own lock, or one for the moment
                if _unstarted(self.path) != self._replaces:
                    raise RunError(f"{self.path / CONFIG} was changed by another run while this one started; "
                                   "choose another --out")
                write_json(self.path / CONFIG, self._pending)
            self._replaces = None
        else:
            locks.sweep(self.path)
            write_new(self.path / CONFIG, dumps(self._pending, indent=2) + "\n")
        self._pending = None

    def stage_config(self, config: dict[str, Any]) -> None:
        """A resumed run's new config.json (more epochs, overrides), written at the run's first write: a resume
        that its trainer refuses leaves the old one in place."""
        self._pending, self._staged = config, True

    def lock(self, command: str | None = None, wait: float = locks.WAIT) -> ContextManager["Run"]:
        """``with run.lock("pprogen train"):`` makes this process the folder's only writer until the block ends
        however it ends (an exception, Ctrl-C; a killed process's lock is released by the operating system and taken
        over by the next command). Another process holding it: :class:`RunInUseError`, "run X is in use by pid N
        (pprogen train, started ...); wait for it or stop it", after ``wait`` seconds. Taking it removes the
        temporaries a killed writer left. A lazy run's folder is locked at its first write. Nests within a process.
        Yields the run."""
        return _hold(self, command, wait)

    @property
    def exists(self) -> bool:
        """Whether the folder and its config.json are on disk (a resumed run's always are)."""
        return self._pending is None or self._staged

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """An existing run folder (one with a config.json); the temporaries a killed writer left in it are removed
        when no process writes it now."""
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise RunError(f"{path} is not a pprogen run folder (no {CONFIG}); pass the folder `pprogen train` printed")
        locks.sweep(path)
        return cls(path)

    @property
    def config(self) -> dict[str, Any]:
        """config.json, each setting it holds checked for its type and range (one line naming the file if not)."""
        path = self.path / CONFIG
        return check_config(read_json_object(path, "the run folder is damaged: restore config.json"), path)

    def config_with(self, *keys: str) -> dict[str, Any]:
        """The config, refused with one line when it lacks any of ``keys`` (what a reader of it needs) or a value
        it holds has the wrong type or range."""
        config = self.config
        missing = [k for k in keys if k not in config]
        if missing:
            raise RunError(f"{self.path / CONFIG} lacks {', '.join(repr(k) for k in missing)}: it is not the config "
                           "of a pprogen run (or was damaged); pass the folder `pprogen train` printed")
        return config

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.materialize()
        atomic_write(self.path / CHECKPOINT, lambda tmp: torch.save(state, tmp), size=_nbytes(state))

    def load_checkpoint(self) -> dict[str, Any]:
        """The checkpoint, read without running pickle code, its epoch, history and random states checked."""
        path = self.path / CHECKPOINT
        if not path.is_file():
            if not any((self.path / name).exists() for name in RESULTS) and not any(self.path.glob("*.safetensors")):
                raise RunError(f"{self.path} holds no checkpoint: the run stopped before its first one was written, "
                               f"so there is nothing to resume; start the run again with the same --out {self.path}")
            raise RunError(f"{self.path} has no checkpoint to resume from ({CHECKPOINT} is missing); restore it from "
                           "a backup or start a new run")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for damaged files
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise RunError(
                f"checkpoint {path} is unreadable or corrupted ({first}); "
                "start a new run or restore the file from a backup"
            ) from None
        return check_checkpoint(state, path)

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """The per-epoch records as metrics.jsonl, one strict JSON object a line (non-finite numbers as null)."""
        text = "".join(dumps(r) + "\n" for r in records)
        self.materialize()
        atomic_write(self.path / METRICS, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                     size=len(text.encode()))

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS
        if not path.is_file():
            return []
        try:
            lines = path.read_bytes().decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise RunError(f"{path} is unreadable ({getattr(err, 'strerror', None) or err}); restore it or delete "
                           "it (the curves are drawn from it)") from None
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                record = None
            if not isinstance(record, dict):
                raise RunError(f"{path} is damaged at line {number} (not a JSON object); restore it, or delete that "
                               "line and those after it")
            records.append(record)
        return records

    def save_weights(self, name: str, module: Any, tensors: dict[str, torch.Tensor] | None = None,
                     rebuilt: dict[str, str] | None = None, packed: list[str] | None = None,
                     quantized: list[str] | None = None) -> None:
        """``module``'s state (or the given ``tensors``, with the digests of the buffers left out to be rebuilt,
        the names of the parameters packed to their masks' entries and of those stored as int8 blocks) as
        ``name.safetensors``."""
        tensors = state_tensors(module) if tensors is None else tensors
        if tensors or rebuilt:
            self.materialize()
            metadata = {**({REBUILT: json.dumps(rebuilt)} if rebuilt else {}),
                        **({PACKED: json.dumps(packed)} if packed else {}),
                        **({QUANTIZED: json.dumps(quantized)} if quantized else {})} or None
            atomic_write(self.path / f"{name}.safetensors", lambda tmp: save_file(tensors, tmp, metadata=metadata),
                         size=_nbytes(tensors))

    def load_weights(self, name: str, module: Any) -> None:
        path = self.path / f"{name}.safetensors"
        if not isinstance(module, torch.nn.Module) or not module.state_dict():
            return
        if not path.is_file():
            raise RunError(f"{path} is missing; the run has not finished an epoch yet or the folder is damaged")
        load_weights_into(module, path)

    def write_json(self, name: str, obj: Any) -> None:
        """``obj`` as strict JSON (NaN and infinities as null) in the folder, written atomically."""
        self.materialize()
        write_json(self.path / name, obj)

    def read_json(self, name: str) -> dict[str, Any]:
        """The JSON object in the folder's file ``name`` ({} when there is none); a damaged file is one line."""
        path = self.path / name
        if not path.is_file():
            return {}
        return read_json_object(path, f"restore {name} from a backup or delete it (what it recorded is then lost)")


@contextmanager
def _hold(run: Run, command: str | None, wait: float) -> Iterator[Run]:
    with locks.run_lock(run.path, command, wait):
        yield run
