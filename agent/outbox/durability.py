"""Making the outbox's group commits durable: one fsync of its WAL, off the sampling path;
and committing them off it too (:class:`Committer`).

The outbox's SQLite file runs in WAL mode with ``synchronous=NORMAL``: a ``COMMIT`` hands
the transaction's pages to the kernel (it survives a crash of the process, like the
journal) but does not wait for the disk. Durability against a power cut is an explicit
``fsync`` of the ``-wal`` file, which flushes every frame written so far, so one fsync
covers the commit that asked for it and any earlier one.

Who waits for it:

- a **group commit** (the window ended, or ``commit_max_records`` are pending) asks for a
  *background* fsync and returns at once: the thread that samples and signs never waits
  for an SD card. When the fsync returns, :meth:`Durability` reports the commit's token
  (its ``send_limit``) as durable, and only then may the uplink send up to that limit;
- every **other commit** (start-up, a held rotation record, a usage claim, notes, close)
  is made durable *inline* before it returns, because its caller acts on it at once.

A failed fsync is kept and raised by every later commit (:class:`DurabilityLost`): after
a failed fsync Linux may already have dropped the dirty pages and reports the error only
once, so no later fsync can vouch for them and the agent must not go on as if the data
were safe. The service stops on it, with an error, so that systemd starts it again: the
new process replays the journal and checks the files from what is on the disk. Tests
replace the background thread by ``background=False`` (the power-cut model snapshots the
files at each fsync, which needs the fsync to happen at a known moment); everything else
is the same code.

Both background threads, the fsync thread and the committing thread, are a :class:`Worker`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from protocol.errors import StorageError

log = logging.getLogger(__name__)

Token = tuple[int, int]
"""What a commit made durable: (file epoch, send limit) as the outbox defines them."""

T = TypeVar("T")


class DurabilityLost(StorageError):
    """An fsync of the outbox failed: nothing committed since the last good one can be
    reported durable any more, by this process. Raised by every later commit."""


def fsync_path(path: Path) -> None:
    """fsync the file at ``path`` (a missing file has nothing to flush). Raises OSError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Worker(Generic[T]):
    """A thread, started by the first :meth:`put`, that hands each item put to ``handle``,
    in order, until :meth:`close` (which lets it finish what was put, then joins it).

    ``latest_only``: an item put replaces one not yet taken (each covers those before it).
    An exception of a type in ``fatal`` stops the thread, dropping what was still put:
    :meth:`check` and every later :meth:`put` raise it. Any other exception ends the thread
    through the threading excepthook, so ``handle`` catches whatever it can go on after.
    """

    def __init__(self, name: str, handle: Callable[[T], None], *, latest_only: bool = False,
                 fatal: tuple[type[Exception], ...] = ()) -> None:
        self._name = name
        self._handle = handle
        self._fatal = fatal
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[T] = deque(maxlen=1 if latest_only else None)
        self._error: Exception | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Raise the fatal error the thread met, if any."""
        with self._cond:
            if self._error is not None:
                raise self._error

    def put(self, item: T) -> None:
        """Hand ``item`` to the thread (started now if need be). Raises the fatal error the
        thread met, if any, and then puts nothing."""
        with self._cond:
            if self._error is not None:
                raise self._error
            self._items.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name,
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        """Let the thread handle what was put, then stop it and wait for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
            try:
                self._handle(item)
            except self._fatal as exc:  # raised (and so logged) by the owner's next call
                with self._cond:
                    self._error = exc
                return


class Durability:
    """fsyncs one SQLite file's WAL, inline or on its own thread, and reports the token."""

    def __init__(self, db_path: Path, on_durable: Callable[[Token], None], *,
                 background: bool = True, fsync: Callable[[Path], None] = fsync_path) -> None:
        """``fsync`` flushes one path (tests pass one that blocks or fails)."""
        self._fsync_path = fsync
        self._wal = db_path.with_name(db_path.name + "-wal")
        self._dir = db_path.parent
        self._on_durable = on_durable
        self._background = background
        # A later commit's fsync covers every earlier one; after a failed fsync nothing
        # more may be reported durable, so the thread stops there.
        self._worker: Worker[Token] = Worker("outbox-fsync", self._sync, latest_only=True,
                                             fatal=(DurabilityLost,))
        self._dir_synced = False
        self.fsyncs = 0

    def check(self) -> None:
        """Raise the error a background fsync met, if any (the caller's next commit)."""
        self._worker.check()

    def sync_now(self, token: Token) -> None:
        """fsync now (the caller waits), then report ``token``. Raises StorageError."""
        self.check()
        self._sync(token)

    def request(self, token: Token) -> None:
        """Make ``token`` durable soon; inline when not in the background. Raises
        StorageError (a failure of an earlier background fsync)."""
        if not self._background:
            self.sync_now(token)
            return
        self._worker.put(token)

    def close(self) -> None:
        """Finish a requested fsync and stop the thread."""
        self._worker.close()

    def _sync(self, token: Token) -> None:
        self._fsync()
        self._on_durable(token)

    def _fsync(self) -> None:
        try:
            self._fsync_path(self._wal)
            if not self._dir_synced:  # the WAL's directory entry, once per process
                self._fsync_path(self._dir)
                self._dir_synced = True
        except OSError as exc:
            raise DurabilityLost(f"{self._wal}: fsync failed: {exc.strerror}") from None
        self.fsyncs += 1


class Committer:
    """Runs the outbox's group commits (SQLite INSERT and COMMIT) on their own thread.

    The thread that samples and signs hands a group over and goes on appending to the
    journal; the outbox's connection lock, taken by the sampling thread and released by
    the job when its COMMIT is done, keeps one group in flight at a time (the next hand
    over waits for it) and keeps every other use of the connection out meanwhile. Not on
    the fsync thread: a slow ``fsync`` must never hold the connection. With
    ``background=False`` (the power-cut model in the tests) a job runs at once, inline.
    """

    def __init__(self, *, background: bool = True) -> None:
        self.background = background
        self._worker: Worker[Callable[[], None]] = Worker("outbox-commit", _run_job)

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` soon (at once when not in the background). The job reports its own
        failure (the outbox keeps it for its next commit)."""
        if not self.background:
            job()
            return
        self._worker.put(job)

    def close(self) -> None:
        """Run the jobs handed over, then stop the thread."""
        self._worker.close()


def _run_job(job: Callable[[], None]) -> None:
    try:
        job()
    except Exception:  # a job keeps its own failure; this thread must go on
        log.exception("outbox: a group commit failed unexpectedly")
