"""The SQLite implementation of :class:`gateway.store.LogStore`.

Durability: WAL journal with ``synchronous=FULL`` (a commit survives a power cut, unlike
``NORMAL``), one transaction per MQTT batch. A batch's leaves, the perfect-subtree nodes
they complete (RFC 9162 §2.1.1 hashes, addressed by ``(level, index)``; level 0, a leaf's
own hash, is computed from the leaf's bytes when read rather than stored), the dedup index
``UNIQUE(device_id, seq)``, usage, gaps, key history and credit change together or not at
all, so a ``kill -9`` can neither duplicate a leaf nor lose one that a receipt announced
(receipts go out only after the commit).

The tree frontier (:class:`protocol.merkle.CompactRange`) is rebuilt at open from the
stored nodes: the peaks of a tree of size n are exactly its stored perfect subtrees, so no
separate state can disagree with the leaves. Appends are O(1) amortised; a proof reads
O(log n) nodes by primary key.

Connections: one for the sequencer's writes, one (locked) for registry writes from the
API, and one per reading thread. sqlite3 errors are re-raised as StorageError.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from gateway import doc_sql
from gateway.store import (
    DEVICE_EQUIVOCATED,
    MAX_PAGE,
    MAX_STORED_INT,
    STATUS_ACTIVE,
    STATUS_REVOKED,
    STORED_NODE_LEVEL,
    Balance,
    Device,
    DeviceCounts,
    DeviceExists,
    DeviceNotFound,
    DeviceStatus,
    GapEntry,
    KeyEntry,
    LastRecord,
    Leaf,
    LoggedLink,
    NewLeaf,
    OwnerCredit,
    RecipientEntry,
    RecipientExists,
    StoredCheckpoint,
    StoredDocument,
    UsageEntry,
    low_node_hash,
    stored_nodes,
)
from osutil.sqlite import Pragmas, connect, transaction, translated
from protocol import merkle
from protocol.errors import StorageError
from protocol.keys import device_id_for

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leaves (
    idx INTEGER PRIMARY KEY, device_id BLOB NOT NULL, seq INTEGER NOT NULL,
    hash BLOB NOT NULL, prev BLOB NOT NULL, raw BLOB NOT NULL, stream TEXT NOT NULL,
    received_ms INTEGER NOT NULL, flags INTEGER NOT NULL,
    UNIQUE (device_id, seq));
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    device_id BLOB PRIMARY KEY, name TEXT NOT NULL UNIQUE, public_key BLOB NOT NULL UNIQUE,
    owner TEXT NOT NULL, rate_micro_per_hour INTEGER NOT NULL, status TEXT NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0, settled_micro INTEGER NOT NULL DEFAULT 0,
    registered_ms INTEGER NOT NULL, revoked_ms INTEGER, owner_key BLOB,
    owner_sealing_key BLOB);
CREATE TABLE IF NOT EXISTS device_keys (
    device_id BLOB NOT NULL, from_seq INTEGER NOT NULL, public_key BLOB NOT NULL UNIQUE,
    PRIMARY KEY (device_id, from_seq));
CREATE TABLE IF NOT EXISTS gaps (
    device_id BLOB NOT NULL, seq INTEGER NOT NULL, first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (device_id, seq));
CREATE TABLE IF NOT EXISTS usage (
    device_id BLOB NOT NULL, seq INTEGER NOT NULL, boot INTEGER NOT NULL,
    start_mono_ms INTEGER NOT NULL, end_mono_ms INTEGER NOT NULL, usage_ms INTEGER NOT NULL,
    credit_micro INTEGER NOT NULL, PRIMARY KEY (device_id, seq));
CREATE INDEX IF NOT EXISTS usage_by_boot ON usage (device_id, boot, start_mono_ms);
CREATE INDEX IF NOT EXISTS devices_by_owner ON devices (owner);
CREATE TABLE IF NOT EXISTS equivocations (
    device_id BLOB NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL, raw BLOB NOT NULL,
    received_ms INTEGER NOT NULL, PRIMARY KEY (device_id, seq, hash));
CREATE TABLE IF NOT EXISTS checkpoints (
    number INTEGER PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL,
    note TEXT NOT NULL, issued_ms INTEGER NOT NULL, balances BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS anchors (
    checkpoint_number INTEGER NOT NULL, backend TEXT NOT NULL, reference TEXT NOT NULL,
    anchored_ms INTEGER NOT NULL, PRIMARY KEY (checkpoint_number, backend));
""" + doc_sql.schema("BLOB", "INTEGER")
_LEAF_COLUMNS = "idx, device_id, seq, hash, raw, stream, received_ms, flags"
_CHECKPOINT_COLUMNS = "number, size, root, note, issued_ms, balances"


def _refuse_claimed(conn: sqlite3.Connection, name: str, public_key: bytes) -> None:
    """Raise DeviceExists if the name is taken or the key belongs to a device already.

    A public key belongs for good to the first device that claims it, by enrolment or by
    an accepted rotation (docs/PROTOCOL.md, "Key rotation"); the error names that device.
    """
    row = conn.execute("SELECT device_id FROM devices WHERE name = ?", (name,)).fetchone()
    if row is not None:
        raise DeviceExists(f"a device named {name!r} exists (device {bytes(row[0]).hex()})")
    row = conn.execute(
        "SELECT d.name, d.device_id, k.from_seq FROM device_keys k JOIN devices d "
        "ON d.device_id = k.device_id WHERE k.public_key = ?", (public_key,)).fetchone()
    if row is not None:
        how = "enrolled with it" if row[2] == 0 else f"rotated to it at seq {row[2] - 1}"
        raise DeviceExists(f"this public key belongs to device {row[0]!r} "
                           f"({bytes(row[1]).hex()}, {how}); a key belongs to one device "
                           "for good: make a new key")


# FULL: a committed batch (and so every receipt we sent) survives a power cut. No
# quick_check at open (it reads the whole log, which grows without bound) and never moved
# aside: a damaged log stops the gateway with the error instead of starting a new one.
GATEWAY_PRAGMAS = Pragmas(synchronous="FULL", page_size=None, journal_size_limit=None,
                          busy_timeout_s=30.0, quick_check=False)


def _connect(path: Path) -> sqlite3.Connection:
    return connect(path, pragmas=GATEWAY_PRAGMAS)


def _runner(conn: sqlite3.Connection) -> doc_sql.Run:
    return lambda sql, params: conn.execute(sql, params).fetchall()


def _add_owner_columns(conn: sqlite3.Connection) -> None:
    """Give a store made before owners had keys the devices' owner key columns, and give
    every store the index that lists one owner's devices by name (created here, after the
    columns: a store made before them cannot index them in ``_SCHEMA``)."""
    columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(devices)")}
    for column in ("owner_key", "owner_sealing_key"):
        if column not in columns:
            conn.execute(f"ALTER TABLE devices ADD COLUMN {column} BLOB")
    conn.execute("CREATE INDEX IF NOT EXISTS devices_by_owner_key ON devices (owner_key, name)")


def _storage_errors(what: str) -> AbstractContextManager[None]:
    return translated(f"gateway store: {what} failed")


def _leaf(row: tuple[int, bytes, int, bytes, bytes, str, int, int]) -> Leaf:
    return Leaf(*row)


def _checkpoint(row: tuple[int, int, bytes, str, int, bytes]) -> StoredCheckpoint:
    return StoredCheckpoint(*row)


class SQLiteLogStore:
    """A :class:`gateway.store.LogStore` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the store at ``path``; raise StorageError on failure."""
        self.path = path
        with _storage_errors("open"):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._writer = _connect(path)
            self._writer.executescript(_SCHEMA)
            _add_owner_columns(self._writer)
            self._writer.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
            doc_sql.fill_streams_once(_runner(self._writer))
            self._registry = _connect(path)
        self._registry_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._range = self._restore_range()
        # What readers may see: the tree size as of the last COMMIT (the frontier moves
        # ahead during a transaction, before its nodes are visible to other connections).
        self._committed_size = self._range.size

    def _restore_range(self) -> merkle.CompactRange:
        with _storage_errors("restore tree"):
            row = self._writer.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves").fetchone()
            size = int(row[0])
            peaks = []
            position = 0
            for level in range(size.bit_length() - 1, -1, -1):
                if size & (1 << level):
                    peaks.append((level, self._node(self._writer, level, position >> level)))
                    position += 1 << level
        return merkle.CompactRange.from_state(peaks)

    # --- connections ----------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with _storage_errors("open reader"):
                conn = _connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection (the store cannot be used afterwards)."""
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in [self._writer, self._registry, *readers]:
            conn.close()

    # --- the sequencer's transaction ---------------------------------------------------

    def size(self) -> int:
        """The number of committed leaves."""
        return self._committed_size

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        """Open the single writer's transaction; commit on exit, roll back on any error.

        Raises StorageError if the database fails (the transaction is then rolled back and
        the in-memory tree frontier restored).
        """
        with self._write_lock:
            saved = self._range.to_state()
            try:
                with transaction(self._writer, "gateway store: transaction failed"):
                    tx = _Transaction(self._writer, self._range)
                    yield tx
                    tx.flush()
            except BaseException:
                self._range = merkle.CompactRange.from_state(saved)
                raise
            self._committed_size = self._range.size

    # --- reads -------------------------------------------------------------------------------

    @staticmethod
    def _node(conn: sqlite3.Connection, level: int, index: int) -> bytes:
        if level < STORED_NODE_LEVEL:  # not stored: hashed from the leaves' bytes
            first = index << level
            rows = conn.execute("SELECT raw FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
                                (first, first + (1 << level))).fetchall()
            found = low_node_hash(level, [bytes(row[0]) for row in rows])
            if found is not None:
                return found
        else:
            row = conn.execute("SELECT hash FROM nodes WHERE level = ? AND idx = ?",
                               (level, index)).fetchone()
            if row is not None:
                return bytes(row[0])
        raise StorageError(f"gateway store: tree node ({level}, {index}) is missing")

    def get_node(self, level: int, index: int) -> bytes:
        """Return a stored perfect-subtree hash; raise StorageError if it is missing."""
        with _storage_errors("read node"):
            return self._node(self._reader(), level, index)

    def root(self, size: int) -> bytes:
        """Return the Merkle root of the first ``size`` leaves (RFC 9162 §2.1.1)."""
        return merkle.root_from_nodes(self, size)

    def leaf(self, index: int) -> Leaf | None:
        """Return the leaf at ``index``, or None."""
        with _storage_errors("read leaf"):
            row = self._reader().execute(
                f"SELECT {_LEAF_COLUMNS} FROM leaves WHERE idx = ?", (index,)).fetchone()  # noqa: S608
        return None if row is None else _leaf(row)

    def device_records(self, device_id: bytes, after_seq: int, limit: int) -> list[Leaf]:
        """Return a device's leaves with seq > after_seq in seq order, at most ``limit``."""
        with _storage_errors("read records"):
            rows = self._reader().execute(
                f"SELECT {_LEAF_COLUMNS} FROM leaves WHERE device_id = ? AND seq > ? "  # noqa: S608
                "ORDER BY seq LIMIT ?", (device_id, after_seq, limit)).fetchall()
        return [_leaf(r) for r in rows]

    def stream_leaves(self, stream: str | None, from_index: int, to_index: int,
                      limit: int) -> list[Leaf]:
        """Return the leaves of ``stream`` (None: all) in ``[from_index, to_index)``."""
        with _storage_errors("read leaves"):
            rows = self._reader().execute(
                f"SELECT {_LEAF_COLUMNS} FROM leaves WHERE idx >= ? AND idx < ? "  # noqa: S608
                "AND (? IS NULL OR stream = ?) ORDER BY idx LIMIT ?",
                (from_index, to_index, stream, stream, limit)).fetchall()
        return [_leaf(r) for r in rows]

    def device(self, device_id: bytes) -> Device | None:
        """Return the registered device, or None."""
        with _storage_errors("read device"):
            return _load_device(self._reader(), device_id)

    def devices(self, after_name: str = "", limit: int = MAX_PAGE) -> list[Device]:
        """Return devices named after ``after_name`` (SQLite compares text bytewise)."""
        with _storage_errors("list devices"):
            conn = self._reader()
            ids = [r[0] for r in conn.execute(
                "SELECT device_id FROM devices WHERE name > ? ORDER BY name LIMIT ?",
                (after_name, min(limit, MAX_PAGE)))]
            found = [_load_device(conn, bytes(i)) for i in ids]
        return [d for d in found if d is not None]

    def owner_devices(self, owner_key: bytes, after_name: str = "",
                      limit: int = MAX_PAGE) -> list[Device]:
        """Return the devices pinned to ``owner_key`` named after ``after_name`` (bytewise),
        a range of the index devices_by_owner_key."""
        with _storage_errors("list owner devices"):
            conn = self._reader()
            ids = [r[0] for r in conn.execute(
                "SELECT device_id FROM devices WHERE owner_key = ? AND name > ? "
                "ORDER BY name LIMIT ?", (owner_key, after_name, min(limit, MAX_PAGE)))]
            found = [_load_device(conn, bytes(i)) for i in ids]
        return [d for d in found if d is not None]

    def last_records(self, device_ids: Sequence[bytes]) -> dict[bytes, LastRecord]:
        """Return each device's newest logged record (one index probe per device)."""
        found: dict[bytes, LastRecord] = {}
        with _storage_errors("read last records"):
            conn = self._reader()
            for device_id in device_ids[:MAX_PAGE]:
                row = conn.execute("SELECT seq, received_ms FROM leaves WHERE device_id = ? "
                                   "ORDER BY seq DESC LIMIT 1", (device_id,)).fetchone()
                if row is not None:
                    found[device_id] = LastRecord(int(row[0]), int(row[1]))
        return found

    def owner_credits(self, after_owner: str, limit: int) -> list[OwnerCredit]:
        """Return owners after ``after_owner`` with their settled credit and device count."""
        with _storage_errors("read owners"):
            rows = self._reader().execute(
                "SELECT owner, SUM(settled_micro), COUNT(*) FROM devices WHERE owner > ? "
                "GROUP BY owner ORDER BY owner LIMIT ?",
                (after_owner, min(limit, MAX_PAGE))).fetchall()
        return [OwnerCredit(str(o), int(total), int(n)) for o, total, n in rows]

    def balances(self) -> list[Balance]:
        """Return the settled balance of every owner that has a device, ordered by owner."""
        with _storage_errors("read balances"):
            return _balances(self._reader())

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """Return the newest checkpoint, or None before the first."""
        with _storage_errors("read checkpoint"):
            row = self._reader().execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints "  # noqa: S608
                "ORDER BY number DESC LIMIT 1").fetchone()
        return None if row is None else _checkpoint(row)

    def checkpoints(self, after_number: int, limit: int) -> list[StoredCheckpoint]:
        """Return checkpoints with number > after_number, oldest first."""
        with _storage_errors("read checkpoints"):
            rows = self._reader().execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE number > ? "  # noqa: S608
                "ORDER BY number LIMIT ?", (after_number, limit)).fetchall()
        return [_checkpoint(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Return table counts for /v1/stats."""
        queries = {
            "devices": "SELECT COUNT(*) FROM devices",
            "devices_revoked": "SELECT COUNT(*) FROM devices WHERE status = 'revoked'",
            "devices_equivocated": "SELECT COUNT(*) FROM devices WHERE flags & 1",
            "gaps_declared": "SELECT COUNT(*) FROM gaps",
            "equivocations": "SELECT COUNT(*) FROM equivocations",
            "usage_records": "SELECT COUNT(*) FROM usage",
            "checkpoints": "SELECT COUNT(*) FROM checkpoints",
        }
        with _storage_errors("count"):
            conn = self._reader()
            counts = {name: int(conn.execute(q).fetchone()[0]) for name, q in queries.items()}
            return counts | doc_sql.document_counts(_runner(conn))

    def document(self, doc_id: bytes) -> StoredDocument | None:
        """Return a logged document by id, or None."""
        with _storage_errors("read document"):
            return doc_sql.document(_runner(self._reader()), doc_id)

    def documents(self, doc_type: str | None, after_index: int,
                  limit: int) -> list[StoredDocument]:
        """Return documents with index > after_index in log order, at most ``limit``."""
        with _storage_errors("read documents"):
            return doc_sql.documents(_runner(self._reader()), doc_type, after_index, limit)

    def device_documents(self, device_id: bytes, from_index: int,
                         limit: int) -> list[StoredDocument]:
        """Return a device's consents and revocations with index >= from_index."""
        with _storage_errors("read device documents"):
            return doc_sql.device_documents(_runner(self._reader()), device_id, from_index,
                                            limit)

    def recipients(self) -> list[RecipientEntry]:
        """Return every registered recipient, by name."""
        with _storage_errors("read recipients"):
            return doc_sql.recipients(_runner(self._reader()))

    def device_counts(self) -> DeviceCounts:
        """Count registered, revoked and equivocated devices (one pass over the registry)."""
        with _storage_errors("count devices"):
            row = self._reader().execute(
                "SELECT COUNT(*), COALESCE(SUM(status = 'revoked'), 0), "
                "COALESCE(SUM(flags & 1 <> 0), 0) FROM devices").fetchone()
        return DeviceCounts(int(row[0]), int(row[1]), int(row[2]))

    # --- checkpoints and anchors (written by the sequencer thread) --------------------

    def add_checkpoint(self, size: int, root_hash: bytes, note: str, issued_ms: int,
                       balances: bytes) -> StoredCheckpoint:
        """Persist a signed checkpoint durably; return it with its number."""
        with self._write_lock, _storage_errors("store checkpoint"):
            cur = self._writer.execute(
                "INSERT INTO checkpoints (size, root, note, issued_ms, balances) "
                "VALUES (?, ?, ?, ?, ?)", (size, root_hash, note, issued_ms, balances))
            number = int(cur.lastrowid or 0)
        return StoredCheckpoint(number, size, root_hash, note, issued_ms, balances)

    def add_anchor(self, checkpoint_number: int, backend: str, reference: str,
                   anchored_ms: int) -> None:
        """Remember where a checkpoint was anchored (idempotent)."""
        with self._write_lock, _storage_errors("store anchor"):
            self._writer.execute("INSERT OR IGNORE INTO anchors VALUES (?, ?, ?, ?)",
                                 (checkpoint_number, backend, reference, anchored_ms))

    # --- registry (the admin API) --------------------------------------------------------

    def register_recipient(self, name: str, signing_key: bytes, sealing_key: bytes,
                           now_ms: int) -> RecipientEntry:
        """Register a recipient; raise RecipientExists if its name or a key is taken."""
        entry = RecipientEntry(name, signing_key, sealing_key, now_ms)
        with self._registry_lock, _storage_errors("register recipient"):
            conn = self._registry
            with transaction(conn, "gateway store: register recipient failed"):
                clash = doc_sql.recipient_clash(_runner(conn), name, signing_key, sealing_key)
                if clash is not None:
                    raise RecipientExists(clash)
                doc_sql.add_recipient(_runner(conn), entry)
        return entry

    def register_device(self, name: str, public_key: bytes, owner: str,
                        rate_micro_per_hour: int, now_ms: int, *,
                        owner_key: bytes | None = None,
                        owner_sealing_key: bytes | None = None) -> Device:
        """Register a device; raise DeviceExists if its name or key is already known."""
        device_id = device_id_for(public_key)
        with self._registry_lock, _storage_errors("register device"):
            conn = self._registry
            with transaction(conn, "gateway store: register device failed"):
                _refuse_claimed(conn, name, public_key)
                conn.execute(
                    "INSERT INTO devices (device_id, name, public_key, owner, "
                    "rate_micro_per_hour, status, registered_ms, owner_key, owner_sealing_key) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (device_id, name, public_key, owner, rate_micro_per_hour, STATUS_ACTIVE.value,
                     now_ms, owner_key, owner_sealing_key))
                conn.execute("INSERT INTO device_keys VALUES (?, 0, ?)", (device_id, public_key))
            found = _load_device(conn, device_id)
        assert found is not None
        return found

    def revoke_device(self, device_id: bytes, now_ms: int) -> Device:
        """Revoke a device at once; raise DeviceNotFound. Revoking twice keeps the first time."""
        with self._registry_lock, _storage_errors("revoke device"):
            conn = self._registry
            conn.execute(
                "UPDATE devices SET status = ?, revoked_ms = COALESCE(revoked_ms, ?) "
                "WHERE device_id = ?", (STATUS_REVOKED.value, now_ms, device_id))
            found = _load_device(conn, device_id)
        if found is None:
            raise DeviceNotFound(f"no device {device_id.hex()}")
        return found


_INSERT_LEAF = "INSERT INTO leaves VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Leaves go in 50 rows to a statement (450 parameters, below SQLite's old limit of 999):
# executemany steps once per row, and the sequencer's thread gives the GIL up and takes it
# back around each step; 1,600 rows measured alone, 4.7-5.2 µs per row against 6.1-6.2
# (docs/GATEWAY.md "Performance").
_LEAVES_PER_INSERT = 50
_INSERT_LEAVES = "INSERT INTO leaves VALUES " + ", ".join(  # noqa: S608 - placeholders only
    ["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * _LEAVES_PER_INSERT)


class _Transaction(doc_sql.DocumentMethods):
    """A :class:`gateway.store.LogTransaction` over the writer connection."""

    def __init__(self, conn: sqlite3.Connection, tree: merkle.CompactRange) -> None:
        self._conn = conn
        self._tree = tree
        # Appended rows wait here and go in with one executemany per table (flush), which
        # is several times cheaper than one INSERT per row; reads that could see them
        # (links) flush first, and the transaction flushes before COMMIT.
        self._leaf_rows: list[tuple[object, ...]] = []
        self._node_rows: list[tuple[int, int, bytes]] = []

    def flush(self) -> None:
        """Write the buffered leaves and nodes (inside the open transaction)."""
        if not self._leaf_rows:
            return
        rows = self._leaf_rows
        whole = len(rows) - len(rows) % _LEAVES_PER_INSERT
        with _storage_errors("append leaves"):
            for first in range(0, whole, _LEAVES_PER_INSERT):
                self._conn.execute(_INSERT_LEAVES, [value for row in
                                                    rows[first:first + _LEAVES_PER_INSERT]
                                                    for value in row])
            self._conn.executemany(_INSERT_LEAF, rows[whole:])
            self._conn.executemany("INSERT INTO nodes VALUES (?, ?, ?)", self._node_rows)
            doc_sql.note_streams(_runner(self._conn), self._leaf_rows)
        self._leaf_rows, self._node_rows = [], []

    @property
    def size(self) -> int:
        return self._tree.size

    def device(self, device_id: bytes) -> Device | None:
        with _storage_errors("read device"):
            return _load_device(self._conn, device_id)

    def links(self, device_id: bytes, first_seq: int, last_seq: int) -> dict[int, LoggedLink]:
        self.flush()
        with _storage_errors("dedup lookup"):
            rows = self._conn.execute(
                "SELECT seq, idx, hash, prev FROM leaves "
                "WHERE device_id = ? AND seq BETWEEN ? AND ?",
                (device_id, max(first_seq, 0), last_seq)).fetchall()
        return {int(s): LoggedLink(int(i), bytes(h), bytes(p)) for s, i, h, p in rows}

    def usage_overlaps(self, device_id: bytes, boot: int, start: int, end: int) -> bool:
        with _storage_errors("usage lookup"):
            row = self._conn.execute(
                "SELECT end_mono_ms FROM usage WHERE device_id = ? AND boot = ? "
                "AND start_mono_ms < ? ORDER BY start_mono_ms DESC, end_mono_ms DESC LIMIT 1",
                (device_id, boot, max(end, start + 1))).fetchone()
        return row is not None and int(row[0]) > start

    def owner_settled_micro(self, owner: str) -> int:
        with _storage_errors("owner credit"):
            # In two halves, each of whose sums fits: exact, and never SQLite's "integer
            # overflow" (a store written before the owner's total was capped).
            high, low = self._conn.execute(
                "SELECT SUM(settled_micro >> 32), SUM(settled_micro & 4294967295) "
                "FROM devices WHERE owner = ?", (owner,)).fetchone()
        return min((int(high or 0) << 32) + int(low or 0), MAX_STORED_INT)

    def append(self, leaf: NewLeaf) -> int:
        index = self._tree.size
        self._leaf_rows.append((index, leaf.device_id, leaf.seq, leaf.record_hash, leaf.prev,
                                leaf.raw, leaf.stream, leaf.received_ms, leaf.flags))
        # Low levels are not stored (gateway.store.STORED_NODE_LEVEL): _node hashes leaves
        self._node_rows += stored_nodes(self._tree.append(merkle.leaf_hash(leaf.raw)))
        return index

    def add_usage(self, usage: UsageEntry) -> None:
        with _storage_errors("add usage"):
            self._conn.execute(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?)",
                (usage.device_id, usage.seq, usage.boot, usage.start_mono_ms,
                 usage.end_mono_ms, usage.usage_ms, usage.credit_micro))
            self._conn.execute(
                "UPDATE devices SET settled_micro = settled_micro + ? WHERE device_id = ?",
                (usage.credit_micro, usage.device_id))

    def add_gap(self, gap: GapEntry) -> None:
        with _storage_errors("add gap"):
            self._conn.execute("INSERT OR IGNORE INTO gaps VALUES (?, ?, ?, ?, ?)",
                               (gap.device_id, gap.seq, gap.first_seq, gap.last_seq,
                                gap.reason))

    def add_key(self, device_id: bytes, entry: KeyEntry) -> None:
        with _storage_errors("add key"):
            self._conn.execute("INSERT INTO device_keys VALUES (?, ?, ?)",
                               (device_id, entry.from_seq, entry.public_key))

    def add_equivocation(self, device_id: bytes, seq: int, raw: bytes, received_ms: int) -> None:
        with _storage_errors("add equivocation"):
            self._conn.execute(
                "INSERT OR IGNORE INTO equivocations VALUES (?, ?, ?, ?, ?)",
                (device_id, seq, merkle.leaf_hash(raw), raw, received_ms))
            self._conn.execute("UPDATE devices SET flags = flags | ? WHERE device_id = ?",
                               (DEVICE_EQUIVOCATED, device_id))

    def equivocation_evidence(self, device_id: bytes) -> int:
        with _storage_errors("count equivocations"):
            row = self._conn.execute("SELECT COUNT(*) FROM equivocations WHERE device_id = ?",
                                     (device_id,)).fetchone()
        return int(row[0])

    def key_in_use(self, public_key: bytes) -> bool:
        """Whether any device ever used ``public_key``."""
        with _storage_errors("key lookup"):
            row = self._conn.execute("SELECT 1 FROM device_keys WHERE public_key = ?",
                                     (public_key,)).fetchone()
        return row is not None

    def _run(self) -> doc_sql.Run:
        return _runner(self._conn)

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return _storage_errors(what)


def _load_device(conn: sqlite3.Connection, device_id: bytes) -> Device | None:
    row = conn.execute(
        "SELECT name, owner, rate_micro_per_hour, status, flags, settled_micro, registered_ms, "
        "revoked_ms, owner_key, owner_sealing_key FROM devices WHERE device_id = ?",
        (device_id,)).fetchone()
    if row is None:
        return None
    keys = tuple(KeyEntry(int(s), bytes(k)) for s, k in conn.execute(
        "SELECT from_seq, public_key FROM device_keys WHERE device_id = ? ORDER BY from_seq",
        (device_id,)))
    name, owner, rate, status, flags, settled, registered, revoked, okey, oseal = row
    return Device(device_id, name, owner, rate, DeviceStatus(status), keys, flags, settled,
                  registered, revoked, None if okey is None else bytes(okey),
                  None if oseal is None else bytes(oseal))


def _balances(conn: sqlite3.Connection) -> list[Balance]:
    rows = conn.execute("SELECT owner, SUM(settled_micro) FROM devices GROUP BY owner")
    # Order by the owner's UTF-8 bytes so the canonical table does not depend on collation.
    found = [Balance(owner, int(total)) for owner, total in rows]
    return sorted(found, key=lambda b: b.owner.encode("utf-8"))
