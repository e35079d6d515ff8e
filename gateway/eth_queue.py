"""The persisted queue of the ``ethereum`` anchor: checkpoints to anchor and their transactions.

One SQLite file in the gateway's data directory (``anchor-ethereum.sqlite``, WAL,
``synchronous=FULL``), separate from the log store because only the anchor's worker thread
and :meth:`AnchorQueue.add` (the sequencer) touch it. Two tables:

``anchors``: one row per checkpoint handed to the backend, keyed by its checkpoint hash,
with its state::

    queued ──send──▶ sending ──receipt status 1──▶ confirmed
      ▲  │              │──receipt status 0 / would revert──▶ queued (retry) or failed
      │  └─newer checkpoint queued──▶ superseded
      └──── nonce used by someone else ──┘

``txs``: every transaction signed for a checkpoint, written BEFORE it is broadcast
(write-ahead), so that after a crash the gateway knows what it may have sent and never
signs a second transaction for the same checkpoint with a new nonce while an earlier one
could still be mined. Every row of a ``sending`` checkpoint shares one nonce: at most one
of them can ever be mined.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum, unique
from pathlib import Path
from typing import Any

from gateway.sqlite_store import GATEWAY_PRAGMAS
from osutil.sqlite import connect, transaction
from protocol.errors import StorageError


@unique
class AnchorState(StrEnum):
    """Where a checkpoint's anchoring stands (the diagram above); the value is stored."""

    QUEUED = "queued"
    SENDING = "sending"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    SUPERSEDED = "superseded"


QUEUED, SENDING, CONFIRMED = AnchorState.QUEUED, AnchorState.SENDING, AnchorState.CONFIRMED
FAILED, SUPERSEDED = AnchorState.FAILED, AnchorState.SUPERSEDED

_SCHEMA = """
CREATE TABLE IF NOT EXISTS anchors (
    checkpoint_hash BLOB PRIMARY KEY, size INTEGER NOT NULL, note TEXT NOT NULL,
    queued_ms INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    nonce INTEGER, tx_hash TEXT, block_number INTEGER, status INTEGER, chain_id INTEGER,
    final_ms INTEGER, detail TEXT);
CREATE INDEX IF NOT EXISTS anchors_by_state ON anchors (state, size);
CREATE TABLE IF NOT EXISTS txs (
    tx_hash TEXT PRIMARY KEY, checkpoint_hash BLOB NOT NULL, nonce INTEGER NOT NULL,
    gas_price INTEGER NOT NULL, gas INTEGER NOT NULL, raw BLOB NOT NULL,
    created_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS txs_by_checkpoint ON txs (checkpoint_hash, nonce);
"""
_ANCHOR_COLUMNS = ("checkpoint_hash, size, note, queued_ms, state, attempts, nonce, tx_hash, "
                   "block_number, status, chain_id, final_ms, detail")


@dataclass(frozen=True)
class QueuedAnchor:
    """A checkpoint handed to the backend, and how far its anchoring got."""

    checkpoint_hash: bytes
    size: int
    note: str
    queued_ms: int
    state: AnchorState
    attempts: int  # transactions (or estimates) that reverted
    nonce: int | None  # the nonce of the transactions in flight (state sending)
    tx_hash: str | None  # the mined transaction (confirmed, or the last reverted one)
    block_number: int | None
    status: int | None  # receipt status of tx_hash: 1 success, 0 reverted
    chain_id: int | None
    final_ms: int | None
    detail: str | None  # why it failed, was superseded or re-queued


@dataclass(frozen=True)
class SentTx:
    """A signed transaction, persisted before it is broadcast."""

    tx_hash: str
    checkpoint_hash: bytes
    nonce: int
    gas_price: int
    gas: int
    raw: bytes
    created_ms: int


class AnchorQueue:
    """The anchor queue in one SQLite file; every method raises StorageError on failure."""

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the queue at ``path``."""
        self.path = path
        self._lock = threading.Lock()
        with self._errors("open"):
            path.parent.mkdir(parents=True, exist_ok=True)
            # FULL: a transaction we signed must never be forgotten (PITFALLS.md, SQLite).
            self._conn = connect(path, _SCHEMA, GATEWAY_PRAGMAS)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"anchor queue {self.path}: {what} failed: {exc}") from None
        except OSError as exc:
            raise StorageError(f"anchor queue {self.path}: {what} failed: {exc}") from None

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(what), \
                transaction(self._conn, f"anchor queue {self.path}: {what} failed"):
            yield self._conn

    def _one(self, sql: str, params: tuple[object, ...]) -> QueuedAnchor | None:
        with self._lock, self._errors("read"):
            row = self._conn.execute(f"SELECT {_ANCHOR_COLUMNS} FROM anchors {sql}",  # noqa: S608
                                     params).fetchone()
        return _entry(row) if row is not None else None

    # --- writes -----------------------------------------------------------------------------

    def add(self, checkpoint_hash: bytes, size: int, note: str, now_ms: int) -> bool:
        """Queue a checkpoint; return False if it was handed over before (idempotent)."""
        with self._write("queue checkpoint") as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO anchors (checkpoint_hash, size, note, queued_ms, state) "
                "VALUES (?, ?, ?, ?, ?)", (checkpoint_hash, size, note, now_ms, QUEUED.value))
            return cur.rowcount == 1

    def supersede_older(self, size: int, now_ms: int) -> int:
        """Mark queued checkpoints smaller than ``size`` superseded; return how many."""
        with self._write("supersede") as conn:
            cur = conn.execute(
                "UPDATE anchors SET state = ?, final_ms = ?, detail = ? "
                "WHERE state = ? AND size < ?",
                (SUPERSEDED.value, now_ms, f"covered by the checkpoint of size {size}",
                 QUEUED.value, size))
            return cur.rowcount

    def record_tx(self, tx: SentTx) -> None:
        """Persist a signed transaction and mark its checkpoint ``sending`` with its nonce."""
        with self._write("record transaction") as conn:
            conn.execute("INSERT OR IGNORE INTO txs VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (tx.tx_hash, tx.checkpoint_hash, tx.nonce, tx.gas_price, tx.gas,
                          tx.raw, tx.created_ms))
            conn.execute("UPDATE anchors SET state = ?, nonce = ? WHERE checkpoint_hash = ?",
                         (SENDING.value, tx.nonce, tx.checkpoint_hash))

    def finish(self, checkpoint_hash: bytes, state: AnchorState, *, tx_hash: str | None,
               block_number: int | None, status: int | None, chain_id: int, now_ms: int,
               attempts: int, detail: str | None = None) -> None:
        """Record the final outcome of a checkpoint (``confirmed`` or ``failed``)."""
        with self._write("finish anchor") as conn:
            conn.execute(
                "UPDATE anchors SET state = ?, tx_hash = ?, block_number = ?, status = ?, "
                "chain_id = ?, final_ms = ?, attempts = ?, detail = ? WHERE checkpoint_hash = ?",
                (state.value, tx_hash, block_number, status, chain_id, now_ms, attempts, detail,
                 checkpoint_hash))

    def requeue(self, checkpoint_hash: bytes, attempts: int, detail: str,
                tx_hash: str | None = None) -> None:
        """Put a checkpoint back in the queue (its next transaction takes a new nonce)."""
        with self._write("requeue anchor") as conn:
            conn.execute(
                "UPDATE anchors SET state = ?, nonce = NULL, attempts = ?, detail = ?, "
                "tx_hash = COALESCE(?, tx_hash) WHERE checkpoint_hash = ?",
                (QUEUED.value, attempts, detail, tx_hash, checkpoint_hash))

    # --- reads ------------------------------------------------------------------------------

    def in_flight(self) -> QueuedAnchor | None:
        """The checkpoint whose transaction is out (at most one at a time)."""
        return self._one("WHERE state = ? ORDER BY size LIMIT 1", (SENDING.value,))

    def newest_queued(self) -> QueuedAnchor | None:
        """The largest checkpoint waiting to be sent."""
        return self._one("WHERE state = ? ORDER BY size DESC LIMIT 1", (QUEUED.value,))

    def get(self, checkpoint_hash: bytes) -> QueuedAnchor | None:
        """One checkpoint's entry."""
        return self._one("WHERE checkpoint_hash = ?", (checkpoint_hash,))

    def confirmed(self, min_size: int | None) -> QueuedAnchor | None:
        """The latest confirmed anchor, or the earliest one covering ``min_size`` leaves."""
        if min_size is None:
            return self._one("WHERE state = ? ORDER BY size DESC LIMIT 1", (CONFIRMED.value,))
        return self._one("WHERE state = ? AND size >= ? ORDER BY size LIMIT 1",
                         (CONFIRMED.value, min_size))

    def confirmed_after(self, after_size: int, limit: int) -> list[QueuedAnchor]:
        """Up to ``limit`` confirmed anchors with tree size > ``after_size``, smallest first."""
        with self._lock, self._errors("list"):
            rows = self._conn.execute(
                f"SELECT {_ANCHOR_COLUMNS} FROM anchors "  # noqa: S608
                "WHERE state = ? AND size > ? ORDER BY size LIMIT ?",
                (CONFIRMED.value, after_size, limit)).fetchall()
        return [_entry(row) for row in rows]

    def txs(self, checkpoint_hash: bytes, nonce: int) -> list[SentTx]:
        """The transactions signed for a checkpoint with ``nonce``, oldest first."""
        with self._lock, self._errors("read transactions"):
            rows = self._conn.execute(
                "SELECT tx_hash, checkpoint_hash, nonce, gas_price, gas, raw, created_ms "
                "FROM txs "
                "WHERE checkpoint_hash = ? AND nonce = ? ORDER BY rowid",
                (checkpoint_hash, nonce)).fetchall()
        return [SentTx(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        """The number of checkpoints in each state."""
        with self._lock, self._errors("count"):
            rows = self._conn.execute("SELECT state, COUNT(*) FROM anchors GROUP BY state")
            found = dict(rows.fetchall())
        return {s.value: int(found.get(s.value, 0)) for s in AnchorState}

    def close(self) -> None:
        """Close the database."""
        with self._lock, self._errors("close"):
            self._conn.close()


def _entry(row: Any) -> QueuedAnchor:  # a sqlite3 row: its values are untyped
    """A row of ``_ANCHOR_COLUMNS`` as a typed entry (the state as its enum)."""
    (digest, size, note, queued_ms, state, attempts, nonce, tx_hash, block_number, status,
     chain_id, final_ms, detail) = row
    return QueuedAnchor(digest, size, note, queued_ms, AnchorState(state), attempts,
                        nonce, tx_hash, block_number, status, chain_id, final_ms, detail)
