"""One writer per run folder: an exclusive lock on ``FOLDER/.lock``, held for a whole command.

The lock is ``flock`` on that file, which the operating system releases when its process ends however it ends, so a
lock left by a killed process is stale by construction and the next command takes it over. The file records the
holder's pid, command and start time, for the line that refuses a second writer; it is removed on release. Within
one process the lock nests (the engine may take it again deeper down). A folder not on disk yet (a lazy run's) is
locked when it is first written (:func:`claim`).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import stat
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pprogen.runfiles.errors import RunError, RunInUseError
from pprogen.runfiles.files import write_error, sweep_temporaries, temporaries

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked (a warning says so once)
    fcntl = None

LOCK = ".lock"
WAIT = 2.0  # seconds a writer waits for a lock held for a moment (another command sweeping the folder)
SWEEP_AGE = 30.0  # seconds: a temporary younger than this may be a write in progress of a process without the lock
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)  # never a link; never wait on a FIFO
_FLAGS = os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@dataclass
class _Hold:
    command: str
    depth: int = 1
    fd: int | None = None  # None: wanted, taken when the folder is first written


_HELD: dict[str, _Hold] = {}
_GUARD = threading.RLock()


def _key(path: str | Path) -> str:
    return os.path.realpath(os.fspath(path))


def _default_command() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return shlex.join([name if name not in ("-c", "__main__.py") else "python", *sys.argv[1:]])


def _clean(text: object, limit: int) -> str:
    """A value of a lock file, as printable text of at most ``limit`` characters (the file may be anyone's)."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextmanager
def run_lock(path: str | Path, command: str | None = None, wait: float = WAIT) -> Iterator[None]:
    """Hold the lock of the run folder ``path`` for the ``with`` block, released on any exit (an exception,
    Ctrl-C, ``SystemExit``; a killed process's by the operating system). ``command`` (``"pprogen train"``) is what
    a refused second writer is told holds it; by default this process's command line. Another process holding it
    raises :class:`RunInUseError` after ``wait`` seconds: "run X is in use by pid N (pprogen train, started ...);
    wait for it or stop it". Taking it removes the temporaries a killed writer left in the folder. A folder not on
    disk yet is locked at its first write (:func:`claim`, which :meth:`Run.materialize` calls)."""
    key = _key(path)
    with _GUARD:
        hold = _HELD.get(key)
        if hold is not None:
            hold.depth += 1
        else:
            hold = _Hold(_clean(command or _default_command(), 120))
            if os.path.isdir(key):
                hold.fd = _acquire(Path(key), hold.command, wait, path)
                if hold.fd is not None:  # only under the lock: another writer's temporaries are in use
                    sweep_temporaries(Path(key))
            _HELD[key] = hold
    try:
        yield
    finally:
        with _GUARD:
            hold.depth -= 1
            if hold.depth == 0:
                del _HELD[key]
                if hold.fd is not None:
                    _release(Path(key), hold.fd)


def claim(path: str | Path) -> None:
    """Take the lock this process wants on ``path`` (a :func:`run_lock` entered before the folder existed), now
    that the folder is about to be written; nothing when no lock is wanted or it is held already."""
    key = _key(path)
    with _GUARD:
        hold = _HELD.get(key)
        if hold is None or hold.fd is not None:
            return
        try:
            Path(key).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(Path(key) / LOCK, err, 0) from None
        hold.fd = _acquire(Path(key), hold.command, WAIT, path)
        if hold.fd is not None:
            sweep_temporaries(Path(key))


def holds(path: str | Path) -> bool:
    """Whether this process holds (or waits to take, at the first write) the lock of ``path``."""
    with _GUARD:
        return _key(path) in _HELD


def in_use(path: str | Path) -> str | None:
    """The line that refuses a writer when another process holds the lock of ``path``, else None (the folder is
    free, or this process holds it). Takes nothing."""
    if holds(path) or fcntl is None:
        return None
    lockfile = Path(_key(path)) / LOCK
    try:
        fd = os.open(lockfile, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _in_use(Path(_key(path)), path)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def sweep(path: str | Path, min_age: float = SWEEP_AGE) -> None:
    """Remove the temporaries at least ``min_age`` seconds old that a killed writer left in ``path``, if no process
    writes it now: a moment's lock is taken for it (nothing happens when another process holds the lock, or the
    folder cannot be written). The age spares the write in progress of a process that writes without the lock (a
    library user's loop); taking the lock for a command sweeps every temporary."""
    folder = Path(_key(path))
    if not temporaries(folder, min_age) or holds(path):
        return
    with _GUARD:
        try:
            fd = _acquire(folder, "a sweep of leftover temporaries", 0, path)
        except (RunError, OSError):
            return
        if fd is not None:
            sweep_temporaries(folder, min_age)
            _release(folder, fd)


def _open(lockfile: Path) -> int:
    try:
        return os.open(lockfile, _FLAGS, 0o666)
    except PermissionError as denied:  # another user's lock file: flock needs no write access (the record is theirs)
        try:
            return os.open(lockfile, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            raise denied from None


def _acquire(folder: Path, command: str, wait: float, shown: str | Path) -> int | None:
    """The descriptor holding ``folder``'s lock (None where the file system offers no locks); ``shown``: the
    folder as the user gave it, for the messages."""
    if fcntl is None:
        _unlocked(folder, "this system has no flock")
        return None
    lockfile = folder / LOCK
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = _open(lockfile)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RunError(f"{lockfile} is a link, not pprogen's lock file; remove it (pprogen never follows "
                               "it) and run the command again") from None
            if err.errno in (errno.EISDIR, errno.ENXIO):
                raise RunError(f"{lockfile} is not pprogen's lock file; remove it and run the command again") from None
            raise write_error(lockfile, err, 0) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise RunInUseError(_in_use(folder, shown)) from None
        except OSError as err:
            os.close(fd)
            if err.errno in _UNSUPPORTED:
                _unlocked(folder, err.strerror or str(err))
                return None
            raise
        try:
            on_disk = os.stat(lockfile, follow_symlinks=False)
        except FileNotFoundError:  # its holder removed it while releasing: take the new one
            os.close(fd)
            continue
        mine = os.fstat(fd)
        if (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)
            continue
        if not stat.S_ISREG(mine.st_mode):
            os.close(fd)
            raise RunError(f"{lockfile} is not pprogen's lock file; remove it and run the command again")
        record = json.dumps({"pid": os.getpid(), "command": command, "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        except OSError:  # a full disk: the lock holds without its record
            pass
        return fd


def _release(folder: Path, fd: int) -> None:
    lockfile = folder / LOCK
    try:
        on_disk, mine = os.stat(lockfile, follow_symlinks=False), os.fstat(fd)
        if (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(lockfile)  # while still held: a process that opened it retries on the new file
    except OSError:
        pass
    finally:
        os.close(fd)


def _in_use(folder: Path, shown: str | Path | None = None) -> str:
    """The line that names the holder of ``folder``'s lock (``shown``: the folder as the user gave it)."""
    holder = "another process"
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY | _NOFOLLOW)
        try:
            record = json.loads(os.read(fd, 4096).decode("utf-8", "replace"))
        finally:
            os.close(fd)
        pid, host, command, started = (record.get(k) for k in ("pid", "host", "command", "started"))
        if type(pid) is int and pid > 0:
            where = f" on {_clean(host, 60)}" if isinstance(host, str) and host != socket.gethostname() else ""
            details = [_clean(command, 120)] if isinstance(command, str) and command else []
            details += [f"started {_clean(started, 40)}"] if isinstance(started, str) and started else []
            holder = f"pid {pid}{where}" + (f" ({', '.join(details)})" if details else "")
    except (OSError, ValueError, AttributeError):
        pass
    return f"run {shown or folder} is in use by {holder}; wait for it or stop it"


_WARNED: set[str] = set()


def _unlocked(folder: Path, why: str) -> None:
    if why not in _WARNED:
        _WARNED.add(why)
        warnings.warn(f"run folders on this file system cannot be locked ({why}): nothing stops two commands from "
                      f"writing {folder} at once", RuntimeWarning, stacklevel=4)
