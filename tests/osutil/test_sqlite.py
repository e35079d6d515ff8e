"""osutil.sqlite: opening, checking, moving aside and transactions for every database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from osutil.sqlite import (
    DatabaseCorrupt,
    Pragmas,
    connect,
    open_or_move_aside,
    transaction,
    translated,
)
from protocol.errors import StorageError

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);"


def test_device_defaults_are_wal_full_small_pages_and_a_capped_journal(tmp_path: Path) -> None:
    conn = connect(tmp_path / "d.sqlite", SCHEMA)
    pragma = {name: conn.execute(f"PRAGMA {name}").fetchone()[0]
              for name in ("journal_mode", "synchronous", "page_size", "journal_size_limit")}
    assert pragma == {"journal_mode": "wal", "synchronous": 2, "page_size": 1024,
                      "journal_size_limit": 4 * 1024 * 1024}
    conn.close()


def test_each_database_keeps_its_own_durability_choices(tmp_path: Path) -> None:
    pragmas = Pragmas(synchronous="EXTRA", page_size=None, journal_size_limit=None,
                      busy_timeout_s=30.0, quick_check=False)
    conn = connect(tmp_path / "g.sqlite", SCHEMA, pragmas)
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 3
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096  # SQLite's own default
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    conn.close()
    with pytest.raises(ValueError, match="synchronous"):
        connect(tmp_path / "x.sqlite", SCHEMA, Pragmas(synchronous="OFF"))


def test_garbage_file_is_corrupt_and_moved_aside_not_crash_looped(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseCorrupt):
        connect(path, SCHEMA)
    reported: list[tuple[Path, str]] = []
    conn, replaced = open_or_move_aside(path, SCHEMA, lambda: 1_700_000_000_000,
                                        lambda moved, why: reported.append((moved, why)))
    assert replaced
    (moved, _), = reported
    assert moved.name.startswith("outbox.sqlite.corrupt-20231114T")
    assert moved.exists()
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    conn.close()


def test_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    conn = connect(tmp_path / "t.sqlite", SCHEMA)
    with transaction(conn, "insert"):
        conn.execute("INSERT INTO t VALUES (1, 'kept')")

    def crash_mid_transaction() -> None:
        with transaction(conn, "insert"):
            conn.execute("INSERT INTO t VALUES (2, 'rolled back')")
            raise RuntimeError("crash mid-transaction")

    def violate_a_key() -> None:
        with transaction(conn, "insert"):
            conn.execute("INSERT INTO t VALUES (3, 'also rolled back')")
            conn.execute("INSERT INTO t VALUES (1, 'duplicate key')")

    with pytest.raises(RuntimeError):
        crash_mid_transaction()
    with pytest.raises(StorageError, match=r"^insert: "):
        violate_a_key()
    assert conn.execute("SELECT k FROM t").fetchall() == [(1,)]
    assert not conn.in_transaction
    conn.close()


def test_sqlite_errors_never_leak_past_the_helpers(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no-such-dir"):
        connect(tmp_path / "no-such-dir" / "x.sqlite", SCHEMA)
    conn = connect(tmp_path / "y.sqlite", SCHEMA)
    with pytest.raises(StorageError, match=r"^select: "), translated("select"):
        conn.execute("SELECT nope FROM t")
    assert not isinstance(StorageError("x"), sqlite3.Error)
    conn.close()
