"""Writing a run's files: whole or not at all, strict JSON, and one line for any write that fails.

Every write goes to a temporary file ``.NAME.XXXXXXXX.tmp`` in the same folder and is moved over ``NAME`` with
``os.replace``, so a process killed mid-write leaves the previous file untouched and at most a temporary, which the
next command that opens or locks the folder removes (:func:`sweep_temporaries`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pprogen.runfiles.errors import RunError, RunWriteError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # atomic_write's: mkstemp(prefix=".NAME.", suffix=".tmp")
CLAIMED = re.compile(r"\..+\.claimed")  # the spare name earlier versions took while creating a config.json
_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_SHORT_WRITE = ("unexpected pos", "no space left", "disk quota", "file too large", "os error 28", "os error 27")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _size(path: str | Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def atomic_write(path: Path, write: Callable[[str], None], size: int | None = None) -> None:
    """Call ``write(tmp_path)`` then move the result over ``path`` in one step. The file gets the mode the
    umask gives a new file (``mkstemp`` alone would leave it 0600). Any failure of the write (a full disk, which
    torch reports as "unexpected pos", a quota, a folder that turned read-only, a writer's own error) raises one
    :class:`RunWriteError` line naming the file, the space it needs (``size``: the bytes it should take, where the
    caller knows) and what is intact: the file it would have replaced is untouched and no temporary is left.
    A :class:`RunError` of the writer's own, Ctrl-C and ``SystemExit`` pass through unchanged."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err, 0, size) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        written = _size(tmp)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, RunError) or not isinstance(err, Exception):
            raise
        raise write_error(path, err, written, size) from err


def write_new(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, which must not exist yet: complete or not at all, and never over a file
    another process created in the meantime (the name is taken with a hard link, which fails if it exists)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err, 0, len(text)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.link(tmp, path)
    except FileExistsError:
        raise RunError(f"{path} was created by another run while this one started; choose another --out") from None
    except Exception as err:
        raise write_error(path, err, _size(tmp), len(text.encode())) from err
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _amount(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{max(1, round(nbytes / 2**10))} KiB"


def write_error(path: Path, err: BaseException, written: int, size: int | None = None) -> RunWriteError:
    """One line for a write that failed: the file, why, the space it needs (the bytes the caller expected, the
    part written before the failure or the previous file's size, whichever is largest) and what is intact."""
    text = str(err).strip()
    first = text.splitlines()[0][:200].strip() if text else type(err).__name__
    code = getattr(err, "errno", None) if isinstance(err, OSError) else None
    space = code in _SPACE or any(s in text.lower() for s in _SHORT_WRITE)
    denied = code in _DENIED
    if isinstance(err, OSError) and err.strerror:
        reason = err.strerror
    elif "unexpected pos" in text:
        reason = f"the disk is full or the write was cut short: {first}"
    else:
        reason = first
    try:
        exists = path.is_file()
    except OSError:
        exists = False
    parts = [f"could not write {path} ({reason})"]
    if space:
        need = max(size or 0, written, _size(path) if exists else 0)
        try:
            free = f" ({_amount(shutil.disk_usage(path.parent).free)} free now)"
        except OSError:
            free = ""
        parts.append(f"it needs about {_amount(need)} free in {path.parent}{free}" if need else
                     f"free space in {path.parent}{free}")
    elif denied:
        parts.append(f"{path.parent} is not writable: make it writable or choose another folder")
    fix = "free space and " if space else "make the folder writable and " if denied else ""
    if path.name == CHECKPOINT:
        parts.append(f"the last complete checkpoint is intact: {fix}resume with --resume {path.parent}" if exists else
                     f"no checkpoint was saved yet: {fix}start the run again with the same --out {path.parent}")
    elif exists:
        parts.append(f"the previous {path.name} is intact")
    else:
        parts.append("no partial file was left behind")
    return RunWriteError("; ".join(parts))


# ------------------------------------------------------------------ strict JSON


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None:
        return json.dumps(key)
    if isinstance(key, float):
        return repr(float(key)) if math.isfinite(key) else str(key)
    return str(int(key)) if isinstance(key, int) else str(key)


def plain(obj: Any) -> Any:
    """``obj`` as plain JSON values: NaN and ±inf become None (null), at any depth; tensors and NumPy values
    become numbers and lists, tuples lists, keys strings, anything else its ``str``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_key(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray, torch.Tensor)):
        return plain(obj.tolist())
    if isinstance(obj, (set, frozenset)):
        return [plain(v) for v in sorted(obj, key=str)]
    return str(obj)


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (:func:`plain`): no ``NaN`` or ``Infinity`` tokens, which other readers refuse."""
    return json.dumps(plain(obj), indent=indent, allow_nan=False)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as strict JSON (non-finite numbers as null), written atomically."""
    text = dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), size=len(text.encode()))


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; anything else (unreadable, truncated, not JSON, not an object) is one
    :class:`RunError` line naming the file and ``fix``."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
        obj = json.loads(text)
    except OSError as err:
        raise RunError(f"{path} is unreadable ({err.strerror or err}); {fix}") from None
    except UnicodeDecodeError:
        raise RunError(f"{path} is damaged: it is not JSON text (binary data); {fix}") from None
    except json.JSONDecodeError as err:
        raise RunError(f"{path} is damaged: it is not JSON ({err.msg}: line {err.lineno}, column {err.colno}); "
                       f"{fix}") from None
    except (ValueError, RecursionError) as err:
        raise RunError(f"{path} is damaged: it is not JSON ({type(err).__name__}); {fix}") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path} is damaged: it holds a JSON {type(obj).__name__}, not an object; {fix}")
    return obj


# ------------------------------------------------------------------ leftovers of killed processes


def temporaries(folder: Path, min_age: float = 0.0) -> list[str]:
    """The names of the temporary files in ``folder`` that pprogen's writes make (``.NAME.XXXXXXXX.tmp``), regular
    files only, last written at least ``min_age`` seconds ago: a killed process's leftovers when no process writes
    the folder."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    before = time.time() - min_age
    names = []
    for entry in entries:
        if (TEMPORARY.fullmatch(entry.name) or CLAIMED.fullmatch(entry.name)) and entry.is_file(follow_symlinks=False):
            try:
                if not min_age or entry.stat(follow_symlinks=False).st_mtime <= before:
                    names.append(entry.name)
            except OSError:
                pass
    return sorted(names)


def sweep_temporaries(folder: Path, min_age: float = 0.0) -> list[str]:
    """Remove :func:`temporaries` of ``folder``; only call it holding the folder's lock. Returns what went."""
    removed = []
    for name in temporaries(folder, min_age):
        try:
            os.unlink(Path(folder) / name)
            removed.append(name)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except (OverflowError, ValueError, OSError):
        return False
    return True


def remove_stale_partials(target: str | Path) -> list[str]:
    """Remove the staging folders ``.TARGET.PID.NS.partial`` that `pprogen ship` leaves beside ``target`` when it
    is killed: only real folders (no links) of that naming whose process has exited. Returns what went."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.\d+\.partial")
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir(follow_symlinks=False) and not _alive(int(match[1])):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return sorted(removed)


def staging_target(path: Path) -> Path | None:
    """The target of a `pprogen ship` staging folder ``.TARGET.PID.NS.partial``, else None."""
    match = re.fullmatch(r"\.(.+)\.\d+\.\d+\.partial", Path(path).name)
    return Path(path).parent / match[1] if match else None
