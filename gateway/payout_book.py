"""The payout book: owners' wallet bindings and distribution epochs, in one SQLite file.

``payout.sqlite`` in the data directory (``synchronous=FULL``, mode 0600). A wallet
binding is stored with its exact signed bytes (served to anyone who recomputes an epoch);
the first binding of an owner is final (a second one is refused: an owner's cumulative
amount moving to another address would pay it twice). Bindings and epoch documents are
also leaves of the log (the book notes where); an epoch computed at a checkpoint of size N
uses exactly the bindings logged below N. An epoch is stored with its signed
document, the JSON dump of its tree, and the state of the transaction that posts its root:
the raw signed transaction is written BEFORE it is broadcast, so a restart resumes it.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from gateway.sqlite_store import GATEWAY_PRAGMAS
from gateway.store import StoredCheckpoint
from osutil.sqlite import connect, transaction, translated

PENDING, POSTED, FAILED = "pending", "posted", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS wallets (
    owner TEXT PRIMARY KEY, address TEXT NOT NULL, document BLOB NOT NULL,
    leaf_index INTEGER NOT NULL, received_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY, checkpoint_size INTEGER NOT NULL, document BLOB NOT NULL,
    tree TEXT NOT NULL, note TEXT NOT NULL, balances BLOB NOT NULL, status TEXT NOT NULL,
    leaf_index INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
    tx_hash TEXT, raw_tx BLOB, nonce INTEGER, block_number INTEGER, detail TEXT,
    created_ms INTEGER NOT NULL, final_ms INTEGER);
CREATE TABLE IF NOT EXISTS funding_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 0), distributor TEXT NOT NULL,
    next_block INTEGER NOT NULL, last_hash TEXT);
CREATE TABLE IF NOT EXISTS funding (terms BLOB PRIMARY KEY, amount TEXT NOT NULL);
"""
_EPOCH_COLUMNS = ("epoch, checkpoint_size, document, tree, note, balances, status, leaf_index, "
                  "attempts, tx_hash, raw_tx, nonce, block_number, detail")


@dataclass(frozen=True)
class StoredEpoch:
    """One epoch as the book holds it."""

    epoch: int
    checkpoint_size: int
    document: bytes
    tree: str  # the StandardMerkleTree JSON dump
    note: str  # the signed checkpoint the epoch was computed at
    balances: bytes  # that checkpoint's canonical balances table
    status: str
    leaf_index: int | None  # where its document was logged (None: not yet)
    attempts: int
    tx_hash: str | None
    raw_tx: bytes | None
    nonce: int | None
    block_number: int | None
    detail: str | None


@dataclass(frozen=True)
class FundingState:
    """How far the distributor's Funded events were read, and their sums (base units)."""

    next_block: int  # the first block not read yet
    last_hash: str | None  # hash of block next_block - 1 when it was read (None: none read)
    totals: dict[bytes, int]  # terms -> sum of Funded amounts


class WalletTaken(ValueError):
    """The owner already has a wallet binding."""


class PayoutBook:
    """Wallet bindings and epochs; safe to use from the API and the payout worker threads."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the book; raise StorageError."""
        self._conn = connect(path, _SCHEMA, GATEWAY_PRAGMAS)
        self._lock = threading.Lock()

    def wallet_of(self, owner: str) -> bytes | None:
        """The signed bytes of the owner's binding, or None."""
        with self._lock, translated("read wallet"):
            row = self._conn.execute("SELECT document FROM wallets WHERE owner = ?",
                                     (owner,)).fetchone()
        return None if row is None else bytes(row[0])

    def add_wallet(self, owner: str, address: str, document: bytes, leaf_index: int,
                   now_ms: int) -> None:
        """Record an owner's binding, logged at ``leaf_index``.

        Raises WalletTaken if the owner already has one, StorageError.
        """
        with self._lock, transaction(self._conn, "add wallet binding"):
            if self._conn.execute("SELECT 1 FROM wallets WHERE owner = ?",
                                  (owner,)).fetchone() is not None:
                raise WalletTaken(owner)
            self._conn.execute("INSERT INTO wallets VALUES (?, ?, ?, ?, ?)",
                               (owner, address, document, leaf_index, now_ms))

    def wallets(self, before_size: int | None = None) -> dict[str, str]:
        """Bindings logged below ``before_size`` (None: all) as owner -> checksum address."""
        limit = 2**63 - 1 if before_size is None else before_size
        with self._lock, translated("read wallets"):
            return dict(self._conn.execute(
                "SELECT owner, address FROM wallets WHERE leaf_index < ? ORDER BY leaf_index",
                (limit,)).fetchall())

    def wallet_documents(self) -> list[tuple[int, bytes]]:
        """(leaf index, signed bytes) of every binding, in log order."""
        with self._lock, translated("read wallets"):
            rows = self._conn.execute(
                "SELECT leaf_index, document FROM wallets ORDER BY leaf_index").fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def add_epoch(self, epoch: int, checkpoint: StoredCheckpoint, document: bytes, tree: str,
                  now_ms: int) -> None:
        """Record a new epoch, pending its root post; older pending ones are superseded."""
        with self._lock, transaction(self._conn, "add epoch"):
            self._conn.execute("UPDATE epochs SET status = ?, detail = 'superseded', "
                               "final_ms = ? WHERE status = ?", (FAILED, now_ms, PENDING))
            self._conn.execute("INSERT INTO epochs (epoch, checkpoint_size, document, tree, "
                               "note, balances, status, created_ms) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (epoch, checkpoint.size, document, tree, checkpoint.note,
                                checkpoint.balances, PENDING, now_ms))

    def set_leaf(self, epoch: int, leaf_index: int) -> None:
        """Record where the epoch's document was logged."""
        with self._lock, transaction(self._conn, "set epoch leaf"):
            self._conn.execute("UPDATE epochs SET leaf_index = ? WHERE epoch = ?",
                               (leaf_index, epoch))

    def record_tx(self, epoch: int, tx_hash: str, raw: bytes, nonce: int) -> None:
        """Persist a signed root post before it is broadcast."""
        with self._lock, transaction(self._conn, "record payout tx"):
            self._conn.execute("UPDATE epochs SET tx_hash = ?, raw_tx = ?, nonce = ? "
                               "WHERE epoch = ?",
                               (tx_hash, raw, nonce, epoch))

    def clear_tx(self, epoch: int, detail: str, *, reverted: bool) -> None:
        """Forget an epoch's transaction (it reverted or its nonce went): sign a new one.

        ``reverted`` counts an attempt (``attempts`` is the number of reverted posts).
        """
        with self._lock, transaction(self._conn, "clear payout tx"):
            self._conn.execute("UPDATE epochs SET tx_hash = NULL, raw_tx = NULL, nonce = NULL, "
                               "detail = ?, attempts = attempts + ? WHERE epoch = ?",
                               (detail, int(reverted), epoch))

    def finish(self, epoch: int, status: str, now_ms: int, *, block_number: int | None = None,
               detail: str | None = None) -> None:
        """Mark an epoch posted (with its block) or failed (with why)."""
        with self._lock, transaction(self._conn, "finish epoch"):
            self._conn.execute("UPDATE epochs SET status = ?, block_number = ?, detail = ?, "
                               "final_ms = ? WHERE epoch = ?",
                               (status, block_number, detail, now_ms, epoch))

    def latest(self, status: str | None = None) -> StoredEpoch | None:
        """The newest epoch (of ``status`` if given)."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        with self._lock, translated("read epoch"):
            row = self._conn.execute(f"SELECT {_EPOCH_COLUMNS} FROM epochs {where} "  # noqa: S608
                                     "ORDER BY epoch DESC LIMIT 1", args).fetchone()
        return None if row is None else _epoch(row)

    def get(self, epoch: int) -> StoredEpoch | None:
        """One epoch by number."""
        with self._lock, translated("read epoch"):
            row = self._conn.execute(f"SELECT {_EPOCH_COLUMNS} FROM epochs "  # noqa: S608
                                     "WHERE epoch = ?", (epoch,)).fetchone()
        return None if row is None else _epoch(row)

    def funding(self, distributor: str) -> FundingState | None:
        """What was read of ``distributor``'s Funded events (None: nothing, or another
        distributor's)."""
        with self._lock, translated("read funding"):
            row = self._conn.execute("SELECT distributor, next_block, last_hash FROM "
                                     "funding_cursor WHERE id = 0").fetchone()
            if row is None or str(row[0]).lower() != distributor.lower():
                return None
            totals = {bytes(t): int(str(a)) for t, a in self._conn.execute(
                "SELECT terms, amount FROM funding").fetchall()}
        return FundingState(int(str(row[1])), None if row[2] is None else str(row[2]),
                            totals)

    def add_funding(self, distributor: str, next_block: int, last_hash: str,
                    added: dict[bytes, int], *, reset: bool = False) -> None:
        """Add the sums of a window of Funded events read up to ``next_block - 1`` (whose
        hash is ``last_hash``); ``reset`` first forgets everything read before."""
        with self._lock, transaction(self._conn, "add funding"):
            if reset:
                self._conn.execute("DELETE FROM funding")
            for terms, amount in added.items():
                row = self._conn.execute("SELECT amount FROM funding WHERE terms = ?",
                                         (terms,)).fetchone()
                before = 0 if row is None else int(str(row[0]))
                self._conn.execute("INSERT OR REPLACE INTO funding VALUES (?, ?)",
                                   (terms, str(before + amount)))
            self._conn.execute("INSERT OR REPLACE INTO funding_cursor VALUES (0, ?, ?, ?)",
                               (distributor, next_block, last_hash))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()


def _epoch(row: sqlite3.Row | tuple[object, ...]) -> StoredEpoch:
    (epoch, size, document, tree, note, balances, status, leaf, attempts, tx_hash, raw, nonce,
     block, detail) = row
    return StoredEpoch(int(str(epoch)), int(str(size)), bytes(document),  # type: ignore[arg-type]
                       str(tree), str(note), bytes(balances),  # type: ignore[arg-type]
                       str(status), None if leaf is None else int(str(leaf)),
                       int(str(attempts)),
                       None if tx_hash is None else str(tx_hash),
                       None if raw is None else bytes(raw),  # type: ignore[arg-type]
                       None if nonce is None else int(str(nonce)),
                       None if block is None else int(str(block)),
                       None if detail is None else str(detail))
