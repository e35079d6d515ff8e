"""One process per directory: an exclusive lock held for the process's lifetime.

A second agent on the same state directory (or a second gateway on the same data
directory) would sign or log the same sequence numbers twice. :func:`hold_lock` takes an
``flock(2)`` lock on a lock file in the directory and writes the holder's pid into it. The
kernel drops the lock when the process dies, however it dies, so a stale lock file left by
``kill -9`` never blocks a restart; the pid in it is only there to name the holder.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from protocol.errors import ConfigError


class AlreadyRunning(ConfigError):
    """Another process holds the directory's lock."""

    def __init__(self, what: str, path: Path, pid: int | None) -> None:
        holder = f"{what} pid {pid}" if pid is not None else f"another {what}"
        super().__init__(f"{path.parent}: already in use by {holder} (lock {path}); "
                         f"stop it first")
        self.pid = pid


class DirectoryLock:
    """The held lock; released by :meth:`release` or by the process ending."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Let go of the lock (the file stays; the next holder overwrites the pid)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


def hold_lock(directory: Path, what: str) -> DirectoryLock:
    """Lock ``directory`` for this process and write its pid into ``<what>.lock`` there.

    ``what`` names the kind of process ("agent", "gateway"). Returns the held
    lock; keep it for the process's lifetime. Raises AlreadyRunning (naming the holder's
    pid) if another process holds it, ConfigError if the lock file cannot be opened.
    """
    path = directory / f"{what}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open lock file ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pid = _read_pid(fd)
        os.close(fd)
        raise AlreadyRunning(what, path, pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DirectoryLock(path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
