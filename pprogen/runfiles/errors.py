"""The errors of run folders: each is one line that names the file, the problem and the fix."""

from __future__ import annotations


class RunError(ValueError):
    """A run folder that cannot be created, read or resumed."""


class RunWriteError(RunError, OSError):
    """A file of a run that could not be written (a full disk, a read-only folder): one line naming the file,
    the space it needs and what is still intact."""


class RunInUseError(RunError):
    """A run folder that another process is writing (it holds the folder's lock): one line naming that process."""
