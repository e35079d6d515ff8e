"""SQLite plumbing shared by every database a runtime package keeps.

The agent's outbox, device state file and usage meter, the gateway's log store and its
anchor queue are opened the same way (each with its own :class:`Pragmas`): WAL
journal, ``synchronous=FULL`` (in WAL mode ``NORMAL`` can lose a committed transaction
after a power cut; ``FULL`` fsyncs the WAL at each commit; the outbox alone opens with
``NORMAL`` and fsyncs its WAL itself, off the sampling thread), explicit transactions, and on
the device a corruption check at open, with a damaged file moved aside, never crash-looped
over (the gateway's log is never moved aside: it stops with the error). sqlite3
exceptions stop here: callers see :class:`~protocol.errors.StorageError` or
:class:`DatabaseCorrupt`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import StorageError

log = logging.getLogger(__name__)

_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
# Smaller pages mean fewer bytes written per small commit (an SD card wears per byte
# written); records are a few hundred bytes, so a 1 KiB page wastes little.
PAGE_SIZE = 1024


class DatabaseCorrupt(StorageError):
    """The database file is not a readable SQLite database (moved aside by the caller)."""


def is_corruption(exc: sqlite3.Error) -> bool:
    """Whether a sqlite3 error means the file itself is damaged (not busy, not disk full)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def storage_error(exc: sqlite3.Error, what: str) -> StorageError:
    """Translate a sqlite3 error into our tree (corruption gets its own type)."""
    if isinstance(exc, sqlite3.DatabaseError) and is_corruption(exc):
        return DatabaseCorrupt(f"{what}: {exc}")
    return StorageError(f"{what}: {exc}")


@dataclass(frozen=True)
class Pragmas:
    """How a database is opened: each database states its own durability choices.

    The defaults are the device's (an SD card): 1 KiB pages, a 4 MiB cap on the WAL left
    behind after a checkpoint, and a ``quick_check`` at every open so a damaged file is
    found before it is written to. ``synchronous`` is FULL everywhere we keep data that a
    peer was told is safe (a record, a receipt, a signed transaction): in WAL mode NORMAL
    can lose a committed transaction after a power cut.
    """

    synchronous: str = "FULL"
    page_size: int | None = PAGE_SIZE  # None: SQLite's default (applies to new files only)
    journal_size_limit: int | None = 4 * 1024 * 1024
    busy_timeout_s: float = 10.0
    quick_check: bool = True


DEVICE = Pragmas()


def connect(path: Path, schema: str = "", pragmas: Pragmas = DEVICE) -> sqlite3.Connection:
    """Open (or create) ``path`` in WAL mode with ``pragmas``, check it, apply ``schema``.

    Returns the connection in autocommit mode (transactions are explicit, see
    :func:`transaction`) usable from any thread. Raises DatabaseCorrupt if the file is not
    a healthy SQLite database and StorageError for any other failure (missing directory,
    permissions, disk full).
    """
    if pragmas.synchronous not in ("FULL", "EXTRA", "NORMAL"):
        raise ValueError(f"synchronous={pragmas.synchronous!r}")
    conn = None
    try:
        create_private_file(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=pragmas.busy_timeout_s)
        _prepare(conn, path, schema, pragmas)
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise storage_error(exc, str(path)) from None
    except StorageError:
        if conn is not None:
            conn.close()
        raise
    except OSError as exc:
        if conn is not None:
            conn.close()
        raise StorageError(f"{path}: {exc.strerror or exc}") from None
    return conn


def _prepare(conn: sqlite3.Connection, path: Path, schema: str, pragmas: Pragmas) -> None:
    """Set ``pragmas`` on a new connection, check the file, apply ``schema``.

    Raises StorageError if WAL cannot be used, DatabaseCorrupt if the check fails, and
    sqlite3.Error as SQLite raises it.
    """
    if pragmas.page_size is not None:  # takes effect only on a new file
        conn.execute(f"PRAGMA page_size={int(pragmas.page_size)}")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StorageError(f"{path}: cannot use WAL journal (got {mode})")
    conn.execute(f"PRAGMA synchronous={pragmas.synchronous}")
    if pragmas.journal_size_limit is not None:
        conn.execute(f"PRAGMA journal_size_limit={int(pragmas.journal_size_limit)}")
    if pragmas.quick_check:
        check = conn.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise DatabaseCorrupt(f"{path}: quick_check failed: {check[:3]}")
    if schema:
        conn.executescript(schema)


def create_private_file(path: Path) -> None:
    """Create ``path`` readable by the owner only, if missing (its directory must exist).

    SQLite gives the ``-wal`` and ``-shm`` files the mode of the database file, so the
    three are 0600 whatever the umask (outside systemd it is often 022). Files an older
    version left readable by others are tightened. Raises OSError.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if part.exists() and part.stat().st_mode & 0o077:
            part.chmod(0o600)


def move_aside(path: Path, wall_ms: int) -> Path:
    """Rename a damaged database (and its WAL) to ``<name>.corrupt-<UTC time>``; return it.

    The shared-memory index is deleted (it is rebuilt from the WAL). Raises StorageError if
    the rename fails.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall_ms / 1000))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        if path.exists():
            os.replace(path, target)
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            os.replace(wal, target.with_name(target.name + "-wal"))
        path.with_name(path.name + "-shm").unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"{path}: cannot move damaged database aside: {exc.strerror}") from None
    return target


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Run a block, turning sqlite3 errors into StorageError / DatabaseCorrupt."""
    try:
        yield
    except sqlite3.Error as exc:
        raise storage_error(exc, what) from None


@contextmanager
def transaction(conn: sqlite3.Connection, what: str) -> Iterator[None]:
    """Run a block in one ``BEGIN IMMEDIATE`` ... ``COMMIT`` on an autocommit connection.

    Any exception rolls the transaction back and propagates; sqlite3 errors come out as
    StorageError (DatabaseCorrupt for a damaged file) naming ``what``.
    """
    with translated(what):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def open_or_move_aside(path: Path, schema: str, wall_ms: Callable[[], int],
                       on_corrupt: Callable[[Path, str], None],
                       pragmas: Pragmas = DEVICE) -> tuple[sqlite3.Connection, bool]:
    """Open ``path``; if it is corrupt, move it aside, report, and start a new file.

    Returns the connection and whether a damaged file was replaced. Raises StorageError if
    even a fresh file cannot be opened (the agent then stops with that one error instead of
    crash-looping over a damaged file).
    """
    try:
        return connect(path, schema, pragmas), False
    except DatabaseCorrupt as exc:
        moved = move_aside(path, wall_ms())
        on_corrupt(moved, str(exc))
        return connect(path, schema, pragmas), True
