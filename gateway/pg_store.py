"""The PostgreSQL implementation of :class:`gateway.store.LogStore` (psycopg 3).

It keeps exactly what :mod:`gateway.sqlite_store` keeps, with the same semantics: one
transaction per MQTT batch in which leaves, the perfect-subtree nodes above them they
complete (a leaf's own hash is computed from its bytes, not stored), the
dedup index ``UNIQUE (device_id, seq)``, usage, gaps, key history and credit change together
or not at all; the tree frontier is rebuilt at open from the stored nodes; readers see the
tree size as of the last COMMIT only; a public key belongs for good to the first device that
claims it.

Types: indices, sequence numbers and milliseconds are ``bigint``; hashes, keys and records
``bytea``. Durability is the server's (``synchronous_commit = on``, its default, makes a
COMMIT survive a crash of the server's machine).

Connections (psycopg connections are not shared between threads): one for the sequencer's
writes (under a lock), one for registry writes from the API (under its own lock), and one per
reading thread. All run in autocommit mode and open explicit transactions, so no reader sits
idle in a transaction. A broken connection is replaced on next use; after the writer's loses
a transaction the frontier is rebuilt from the database (a COMMIT whose answer was lost may
or may not have happened). Registry writes and batches take one transaction-scoped advisory
lock, so the key-claim check and its insert are atomic as in SQLite. Statements are prepared
server-side on first use (``prepare_threshold=0``); a batch's leaves and nodes go in with
one binary ``COPY`` per table (twice the rate of a pipelined ``executemany`` of INSERTs in
bench/store_bench.py). psycopg errors are re-raised as StorageError.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

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
    NotSequencer,
    OwnerCredit,
    PendingBatch,
    RecipientEntry,
    RecipientExists,
    StoredCheckpoint,
    StoredDocument,
    UsageEntry,
    low_node_hash,
    stored_nodes,
)
from protocol import merkle
from protocol.errors import StorageError
from protocol.keys import device_id_for

SCHEMA_VERSION = 1
# Advisory lock keys: schema creation and the registry (key claims), held per transaction;
# the log's single writer, held by the writer connection's session.
_SCHEMA_LOCK = 0x65_64_67_65_01  # "edge" 1
_REGISTRY_LOCK = 0x65_64_67_65_02
_WRITER_LOCK = 0x65_64_67_65_03
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS leaves (
    idx bigint PRIMARY KEY, device_id bytea NOT NULL, seq bigint NOT NULL,
    hash bytea NOT NULL, prev bytea NOT NULL, raw bytea NOT NULL, stream text NOT NULL,
    received_ms bigint NOT NULL, flags integer NOT NULL,
    UNIQUE (device_id, seq));
CREATE TABLE IF NOT EXISTS nodes (
    level integer NOT NULL, idx bigint NOT NULL, hash bytea NOT NULL,
    PRIMARY KEY (level, idx));
CREATE TABLE IF NOT EXISTS devices (
    device_id bytea PRIMARY KEY, name text NOT NULL UNIQUE, public_key bytea NOT NULL UNIQUE,
    owner text NOT NULL, rate_micro_per_hour bigint NOT NULL, status text NOT NULL,
    flags integer NOT NULL DEFAULT 0, settled_micro bigint NOT NULL DEFAULT 0,
    registered_ms bigint NOT NULL, revoked_ms bigint);
ALTER TABLE devices ADD COLUMN IF NOT EXISTS owner_key bytea;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS owner_sealing_key bytea;
CREATE INDEX IF NOT EXISTS devices_by_owner_key ON devices (owner_key, name COLLATE "C");
CREATE TABLE IF NOT EXISTS device_keys (
    device_id bytea NOT NULL, from_seq bigint NOT NULL, public_key bytea NOT NULL UNIQUE,
    PRIMARY KEY (device_id, from_seq));
CREATE TABLE IF NOT EXISTS gaps (
    device_id bytea NOT NULL, seq bigint NOT NULL, first_seq bigint NOT NULL,
    last_seq bigint NOT NULL, reason text NOT NULL, PRIMARY KEY (device_id, seq));
CREATE TABLE IF NOT EXISTS usage (
    device_id bytea NOT NULL, seq bigint NOT NULL, boot bigint NOT NULL,
    start_mono_ms bigint NOT NULL, end_mono_ms bigint NOT NULL, usage_ms bigint NOT NULL,
    credit_micro bigint NOT NULL, PRIMARY KEY (device_id, seq));
CREATE INDEX IF NOT EXISTS usage_by_boot ON usage (device_id, boot, start_mono_ms);
CREATE INDEX IF NOT EXISTS devices_by_owner ON devices (owner COLLATE "C");
CREATE INDEX IF NOT EXISTS devices_by_name ON devices (name COLLATE "C");
CREATE TABLE IF NOT EXISTS equivocations (
    device_id bytea NOT NULL, seq bigint NOT NULL, hash bytea NOT NULL, raw bytea NOT NULL,
    received_ms bigint NOT NULL, PRIMARY KEY (device_id, seq, hash));
CREATE TABLE IF NOT EXISTS checkpoints (
    number bigint PRIMARY KEY, size bigint NOT NULL, root bytea NOT NULL,
    note text NOT NULL, issued_ms bigint NOT NULL, balances bytea NOT NULL);
CREATE TABLE IF NOT EXISTS anchors (
    checkpoint_number bigint NOT NULL, backend text NOT NULL, reference text NOT NULL,
    anchored_ms bigint NOT NULL, PRIMARY KEY (checkpoint_number, backend));
CREATE TABLE IF NOT EXISTS pending (
    id bigserial PRIMARY KEY, topic text NOT NULL, payload bytea NOT NULL,
    payload_hash bytea NOT NULL, reject text, verdicts bytea NOT NULL,
    queued_ms bigint NOT NULL, parsed bytea);
ALTER TABLE pending ADD COLUMN IF NOT EXISTS parsed bytea;
""" + doc_sql.schema("bytea", "bigint")
_LEAF_COLUMNS = "idx, device_id, seq, hash, raw, stream, received_ms, flags"
_CHECKPOINT_COLUMNS = "number, size, root, note, issued_ms, balances"
_CONNECT_TIMEOUT_S = 10
# Column types of the binary COPY that appends a batch (in table order).
_LEAF_TYPES = ("int8", "bytea", "int8", "bytea", "bytea", "bytea", "text", "int8", "int4")
_NODE_TYPES = ("int4", "int8", "bytea")

Conn = psycopg.Connection[tuple[Any, ...]]
_T = TypeVar("_T")


@contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    """Turn psycopg errors into StorageError naming ``what`` (first line of the message)."""
    try:
        yield
    except psycopg.Error as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StorageError(f"gateway store: {what} failed: {detail}") from None


def _runner(conn: Conn) -> doc_sql.Run:
    def run(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        cur = conn.execute(sql.replace("?", "%s").encode(), params)
        return cur.fetchall() if cur.description is not None else []
    return run


def _within(conn: Conn, namespace: str) -> None:
    """Resolve table names in ``namespace`` until the end of the open transaction."""
    conn.execute("SELECT set_config('search_path', %s, true)", (namespace,))


def _leaf(row: Sequence[Any]) -> Leaf:
    idx, device_id, seq, hash_, raw, stream, received_ms, flags = row
    return Leaf(int(idx), bytes(device_id), int(seq), bytes(hash_), bytes(raw), str(stream),
                int(received_ms), int(flags))


def _checkpoint(row: Sequence[Any]) -> StoredCheckpoint:
    number, size, root, note, issued_ms, balances = row
    return StoredCheckpoint(int(number), int(size), bytes(root), str(note), int(issued_ms),
                            bytes(balances))


def _refuse_claimed(conn: Conn, name: str, public_key: bytes) -> None:
    """Raise DeviceExists if the name is taken or the key belongs to a device already.

    A public key belongs for good to the first device that claims it, by enrolment or by
    an accepted rotation (docs/PROTOCOL.md, "Key rotation"); the error names that device.
    """
    row = conn.execute("SELECT device_id FROM devices WHERE name = %s", (name,)).fetchone()
    if row is not None:
        raise DeviceExists(f"a device named {name!r} exists (device {bytes(row[0]).hex()})")
    row = conn.execute(
        "SELECT d.name, d.device_id, k.from_seq FROM device_keys k JOIN devices d "
        "ON d.device_id = k.device_id WHERE k.public_key = %s", (public_key,)).fetchone()
    if row is not None:
        how = "enrolled with it" if row[2] == 0 else f"rotated to it at seq {row[2] - 1}"
        raise DeviceExists(f"this public key belongs to device {row[0]!r} "
                           f"({bytes(row[1]).hex()}, {how}); a key belongs to one device "
                           "for good: make a new key")


class _Link:
    """One connection, opened on first use and replaced when it breaks."""

    def __init__(self, connect: Callable[[], Conn]) -> None:
        self._connect = connect
        self._conn: Conn | None = None

    def get(self) -> Conn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._connect()
        return self._conn

    @property
    def lost(self) -> bool:
        """Whether the connection is gone (a transaction's outcome may be unknown)."""
        return self._conn is not None and (self._conn.closed or self._conn.broken)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class PostgresLogStore:
    """A :class:`gateway.store.LogStore` in one PostgreSQL database."""

    def __init__(self, dsn: str, password: str | None = None, *,
                 writer_wait_s: float = 10.0, shared: bool = False) -> None:
        """Connect to ``dsn`` and create the tables if needed; raise StorageError on failure.

        ``password`` comes from the operator's 0600 password file, never from the DSN. By
        default the store is the log's only writer: if another process holds the writer lock
        for ``writer_wait_s`` (a gateway killed a moment ago releases it as soon as the
        server notices), opening fails with StorageError. With ``shared`` several gateway
        processes open the same database and :meth:`lead` elects the one that writes
        (docs/SCALING.md); the others raise :class:`NotSequencer` on every log write.
        """
        self._dsn, self._password = dsn, password
        self._shared = shared
        self._writer_wait_ms = max(1, round(writer_wait_s * 1000))
        self._writer = _Link(self._connect_writer)
        self._holds_lock = False  # the writer's current session holds the writer lock
        self._term = 0  # sessions of this process that took the writer lock
        self._frontier_unknown = False  # a transaction lost its connection (see transaction)
        self._registry = _Link(self._connect)
        self._registry_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[_Link] = []
        self._readers_lock = threading.Lock()
        self._range = merkle.CompactRange.from_state([])
        try:
            self._create_schema()
            if not shared:
                self._range = self._restore_range()
                self._frontier_unknown = False
        except BaseException:
            self.close()
            raise
        # What readers may see: the tree size as of the last COMMIT (the frontier moves
        # ahead during a transaction, before its rows are visible to other connections).
        self._committed_size = self._range.size

    def _create_schema(self) -> None:
        with _storage_errors("open"):
            conn = self._registry.get()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement.encode(), prepare=False)
                conn.execute("INSERT INTO meta VALUES ('schema_version', %s) "
                             "ON CONFLICT (key) DO NOTHING", (str(SCHEMA_VERSION),))
                doc_sql.fill_streams_once(_runner(conn))
                row = conn.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise StorageError(f"gateway store: the database has schema version "
                               f"{row[0] if row else None}, this gateway needs "
                               f"{SCHEMA_VERSION}")

    def _connect(self) -> Conn:
        conn: Conn = psycopg.connect(
            self._dsn, password=self._password, autocommit=True, prepare_threshold=0,
            connect_timeout=_CONNECT_TIMEOUT_S, application_name="edgeproof-gateway")
        return conn

    def _connect_writer(self) -> Conn:
        """The writer's connection; every write of the log runs on it.

        Alone (not ``shared``) it takes the writer lock for its whole session, waiting up to
        ``writer_wait_s``: two writers would each extend their own copy of the tree
        frontier, so a second gateway process on the same database fails at start instead.
        Shared, it connects without the lock and :meth:`lead` tries to take it. A new
        session always rebuilds the frontier first: another writer may have appended.
        """
        conn = self._connect()
        self._holds_lock, self._frontier_unknown = False, True
        if self._shared:
            return conn
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, false)",
                         (f"{self._writer_wait_ms}ms",))
            conn.execute("SELECT pg_advisory_lock(%s)", (_WRITER_LOCK,))
            conn.execute("SELECT set_config('lock_timeout', '0', false)")
        except pg_errors.LockNotAvailable:
            conn.close()
            raise StorageError("gateway store: another gateway process writes this database "
                               "(one writer per log: docs/GATEWAY.md, \"The store\")") from None
        except BaseException:
            conn.close()
            raise
        self._holds_lock = True
        return conn

    def _writer_conn(self) -> Conn:
        """The writer's connection, refusing (NotSequencer) unless its session holds the lock.

        This is the fence: the server releases a session-level advisory lock only when the
        session ends, and a session that ended runs no statement, so a write that reaches
        the database ran while its process was the sequencer.
        """
        conn = self._writer.get()
        if not self._holds_lock:
            raise NotSequencer("gateway store: this process is not the sequencer "
                               "(another gateway process holds the writer lock)")
        return conn

    @contextmanager
    def _fenced(self, what: str) -> Iterator[None]:
        """Like _storage_errors; a shared store's writer session that ended is NotSequencer.

        The lock ended with the session, so this process no longer sequences (whether the
        failed statement ran is for the database to say: the next sequencer reads it).
        """
        try:
            with _storage_errors(what):
                yield
        except StorageError as exc:
            if self._shared and not isinstance(exc, NotSequencer) and self._writer.lost:
                self._holds_lock = False
                raise NotSequencer(f"{exc} (the sequencer's session ended)") from None
            raise

    @property
    def term(self) -> int:
        """How many times this process took the writer lock (0: never; changes on each take)."""
        return self._term

    @property
    def leading(self) -> bool:
        """Whether the writer's session held the lock when last used (see :meth:`lead`)."""
        return self._holds_lock and not self._writer.lost

    def lead(self) -> bool:
        """Try to become (or check that this process still is) the sequencer; never blocks.

        Shared stores only. A probe on the writer's session tells whether it still holds the
        lock; if it does not, one ``pg_try_advisory_lock`` on it tries to take it, and on
        success the frontier is rebuilt from the database and the database's sequencer term
        (``meta.sequencer_term``) goes up by one. Returns whether this process leads now.
        """
        assert self._shared, "lead() is for shared stores"
        with self._write_lock:
            try:
                with _storage_errors("elect"):
                    conn = self._writer.get()
                    if self._holds_lock:
                        conn.execute("SELECT 1")
                        return True
                    row = conn.execute("SELECT pg_try_advisory_lock(%s)",
                                       (_WRITER_LOCK,)).fetchone()
                    if row is None or not row[0]:
                        return False
                    self._holds_lock = True
                    self._term += 1
                    self._range = self._restore_range()
                    self._committed_size = self._range.size
                    self._frontier_unknown = False
                    conn.execute(
                        "INSERT INTO meta VALUES ('sequencer_term', '1') ON CONFLICT (key) "
                        "DO UPDATE SET value = (meta.value::bigint + 1)::text")
            except StorageError:
                return False  # the session is gone (and its lock with it); retried next time
            return True

    def _restore_range(self) -> merkle.CompactRange:
        with _storage_errors("restore tree"):
            conn = self._writer.get()
            row = conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves").fetchone()
            size = int(row[0]) if row else 0
            peaks = []
            position = 0
            for level in range(size.bit_length() - 1, -1, -1):
                if size & (1 << level):
                    peaks.append((level, self._node(conn, level, position >> level)))
                    position += 1 << level
        return merkle.CompactRange.from_state(peaks)

    # --- connections ----------------------------------------------------------------------

    def _read(self, what: str, query: Callable[[Conn], _T]) -> _T:
        """Run ``query`` on this thread's reader connection; StorageError if it fails.

        A connection the server dropped (restart, failover) is replaced and the query run
        once more: reads change nothing, so repeating one is safe.
        """
        link: _Link | None = getattr(self._local, "link", None)
        if link is None:
            link = _Link(self._connect)
            self._local.link = link
            with self._readers_lock:
                self._readers.append(link)
        with _storage_errors(what):
            try:
                return query(link.get())
            except psycopg.OperationalError:
                if not link.lost:
                    raise
            return query(link.get())

    def close(self) -> None:
        """Close every connection (the store cannot be used afterwards)."""
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for link in [self._writer, self._registry, *readers]:
            link.close()

    # --- the sequencer's transaction ---------------------------------------------------

    def size(self) -> int:
        """The number of committed leaves (read from the database unless this process leads)."""
        if not self._shared or self.leading:
            return self._committed_size
        row = self._read("read size", lambda conn: conn.execute(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves").fetchone())
        return int(row[0]) if row else 0

    # --- the hand-over queue of a shared store (docs/SCALING.md) ------------------------

    def enqueue(self, batches: Sequence[PendingBatch], now_ms: int) -> None:
        """Commit verified batches to the sequencer's queue in one transaction (any process)."""
        with self._registry_lock, _storage_errors("hand over"):
            conn = self._registry.get()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO pending (topic, payload, payload_hash, reject, verdicts, "
                    "queued_ms, parsed) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(b.topic, b.payload, b.payload_hash, b.reject, b.verdicts, now_ms,
                      b.parsed) for b in batches])

    def pending_depth(self) -> int:
        """About how many batches wait in the queue (id span: two index lookups, any process)."""
        row = self._read("read queue depth", lambda conn: conn.execute(
            "SELECT COALESCE(MAX(id) - MIN(id) + 1, 0) FROM pending").fetchone())
        return int(row[0]) if row else 0

    def pending(self, limit: int) -> list[PendingBatch]:
        """The oldest ``limit`` queued batches (the sequencer's; NotSequencer otherwise)."""
        with self._write_lock, self._fenced("read queue"):
            rows = self._writer_conn().execute(
                "SELECT id, topic, payload, payload_hash, reject, verdicts, parsed "
                "FROM pending ORDER BY id LIMIT %s", (limit,)).fetchall()
        return [PendingBatch(int(i), str(t), bytes(p), bytes(h), None if r is None else str(r),
                             bytes(v), None if x is None else bytes(x))
                for i, t, p, h, r, v, x in rows]

    @contextmanager
    def transaction(self) -> Iterator[PgTransaction]:
        """Open the single writer's transaction; commit on exit, roll back on any error.

        Raises StorageError if the database fails (the transaction is then rolled back and
        the in-memory tree frontier restored, or rebuilt from the database if the connection
        was lost and the COMMIT's outcome is unknown).
        """
        with self._write_lock:
            with self._fenced("transaction"):
                conn = self._writer_conn()  # a new session marks the frontier unknown
            if self._frontier_unknown:
                self._range = self._restore_range()
                self._committed_size = self._range.size
                self._frontier_unknown = False
            saved = self._range.to_state()
            try:
                with self._fenced("transaction"), conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_REGISTRY_LOCK,))
                    tx = PgTransaction(conn, self._range)
                    yield tx
                    tx.flush()
            except BaseException:
                self._range = merkle.CompactRange.from_state(saved)
                # Kept until the next transaction, even if a checkpoint write reconnects
                # in between: only the database knows whether the COMMIT happened.
                self._frontier_unknown = self._frontier_unknown or self._writer.lost
                raise
            self._committed_size = self._range.size

    # --- reads -------------------------------------------------------------------------------

    @staticmethod
    def _node(conn: Conn, level: int, index: int) -> bytes:
        if level < STORED_NODE_LEVEL:  # not stored: hashed from the leaves' bytes
            first = index << level
            rows = conn.execute(
                "SELECT raw FROM leaves WHERE idx >= %s AND idx < %s ORDER BY idx",
                (first, first + (1 << level))).fetchall()
            found = low_node_hash(level, [bytes(row[0]) for row in rows])
            if found is not None:
                return found
        else:
            row = conn.execute("SELECT hash FROM nodes WHERE level = %s AND idx = %s",
                               (level, index)).fetchone()
            if row is not None:
                return bytes(row[0])
        raise StorageError(f"gateway store: tree node ({level}, {index}) is missing")

    def get_node(self, level: int, index: int) -> bytes:
        """Return a stored perfect-subtree hash; raise StorageError if it is missing."""
        return self._read("read node", lambda conn: self._node(conn, level, index))

    def root(self, size: int) -> bytes:
        """Return the Merkle root of the first ``size`` leaves (RFC 9162 §2.1.1)."""
        return merkle.root_from_nodes(self, size)

    def leaf(self, index: int) -> Leaf | None:
        """Return the leaf at ``index``, or None."""
        row = self._read("read leaf", lambda conn: conn.execute(
            f"SELECT {_LEAF_COLUMNS} FROM leaves WHERE idx = %s",  # noqa: S608
            (index,)).fetchone())
        return None if row is None else _leaf(row)

    def device_records(self, device_id: bytes, after_seq: int, limit: int) -> list[Leaf]:
        """Return a device's leaves with seq > after_seq in seq order, at most ``limit``."""
        rows = self._read("read records", lambda conn: conn.execute(
            f"SELECT {_LEAF_COLUMNS} FROM leaves WHERE device_id = %s "  # noqa: S608
            "AND seq > %s ORDER BY seq LIMIT %s", (device_id, after_seq, limit)).fetchall())
        return [_leaf(r) for r in rows]

    def stream_leaves(self, stream: str | None, from_index: int, to_index: int,
                      limit: int) -> list[Leaf]:
        """Return the leaves of ``stream`` (None: all) in ``[from_index, to_index)``."""
        only = "" if stream is None else "AND stream = %s "
        args = (from_index, to_index, *(() if stream is None else (stream,)), limit)
        rows = self._read("read leaves", lambda conn: conn.execute(
            f"SELECT {_LEAF_COLUMNS} FROM leaves WHERE idx >= %s AND idx < %s "  # noqa: S608
            f"{only}ORDER BY idx LIMIT %s", args).fetchall())
        return [_leaf(r) for r in rows]

    def device(self, device_id: bytes) -> Device | None:
        """Return the registered device, or None."""
        return self._read("read device", lambda conn: _load_device(conn, device_id))

    def devices(self, after_name: str = "", limit: int = MAX_PAGE) -> list[Device]:
        """Return devices named after ``after_name``, by the names' bytes (COLLATE "C")."""
        return self._read("list devices",
                          lambda conn: _load_devices(conn, after_name, min(limit, MAX_PAGE)))

    def owner_devices(self, owner_key: bytes, after_name: str = "",
                      limit: int = MAX_PAGE) -> list[Device]:
        """Return the devices pinned to ``owner_key`` named after ``after_name`` (COLLATE
        "C": by the names' bytes), a range of the index devices_by_owner_key."""
        def query(conn: Conn) -> list[Device]:
            ids = [bytes(r[0]) for r in conn.execute(
                'SELECT device_id FROM devices WHERE owner_key = %s AND name COLLATE "C" > %s '
                'ORDER BY name COLLATE "C" LIMIT %s',
                (owner_key, after_name, min(limit, MAX_PAGE))).fetchall()]
            found = [_load_device(conn, i) for i in ids]
            return [d for d in found if d is not None]
        return self._read("list owner devices", query)

    def last_records(self, device_ids: Sequence[bytes]) -> dict[bytes, LastRecord]:
        """Return each device's newest logged record (one index probe per device)."""
        ids = [bytes(i) for i in device_ids[:MAX_PAGE]]
        rows = self._read("read last records", lambda conn: conn.execute(
            "SELECT d.id, l.seq, l.received_ms FROM unnest(%s::bytea[]) AS d(id) "
            "CROSS JOIN LATERAL (SELECT seq, received_ms FROM leaves WHERE device_id = d.id "
            "ORDER BY seq DESC LIMIT 1) AS l", (ids,)).fetchall())
        return {bytes(i): LastRecord(int(seq), int(ms)) for i, seq, ms in rows}

    def owner_credits(self, after_owner: str, limit: int) -> list[OwnerCredit]:
        """Return owners after ``after_owner`` (COLLATE "C": by UTF-8 bytes) with credit."""
        rows = self._read("read owners", lambda conn: conn.execute(
            'SELECT owner, SUM(settled_micro)::bigint, COUNT(*) FROM devices '
            'WHERE owner COLLATE "C" > %s GROUP BY owner ORDER BY owner COLLATE "C" LIMIT %s',
            (after_owner, min(limit, MAX_PAGE))).fetchall())
        return [OwnerCredit(str(o), int(total), int(n)) for o, total, n in rows]

    def balances(self) -> list[Balance]:
        """Return the settled balance of every owner that has a device, ordered by owner."""
        rows = self._read("read balances", lambda conn: conn.execute(
            "SELECT owner, SUM(settled_micro)::bigint FROM devices GROUP BY owner").fetchall())
        # Order by the owner's UTF-8 bytes so the canonical table does not depend on collation.
        found = [Balance(str(owner), int(total)) for owner, total in rows]
        return sorted(found, key=lambda b: b.owner.encode("utf-8"))

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """Return the newest checkpoint, or None before the first."""
        row = self._read("read checkpoint", lambda conn: conn.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints "  # noqa: S608
            "ORDER BY number DESC LIMIT 1").fetchone())
        return None if row is None else _checkpoint(row)

    def checkpoints(self, after_number: int, limit: int) -> list[StoredCheckpoint]:
        """Return checkpoints with number > after_number, oldest first."""
        rows = self._read("read checkpoints", lambda conn: conn.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE number > %s "  # noqa: S608
            "ORDER BY number LIMIT %s", (after_number, limit)).fetchall())
        return [_checkpoint(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Return table counts for /v1/stats."""
        row = self._read("count", lambda conn: conn.execute(
            "SELECT (SELECT COUNT(*) FROM devices),"
            " (SELECT COUNT(*) FROM devices WHERE status = 'revoked'),"
            " (SELECT COUNT(*) FROM devices WHERE flags & 1 <> 0),"
            " (SELECT COUNT(*) FROM gaps), (SELECT COUNT(*) FROM equivocations),"
            " (SELECT COUNT(*) FROM usage), (SELECT COUNT(*) FROM checkpoints)").fetchone())
        assert row is not None
        names = ("devices", "devices_revoked", "devices_equivocated", "gaps_declared",
                 "equivocations", "usage_records", "checkpoints")
        counts = {name: int(value) for name, value in zip(names, row, strict=True)}
        return counts | self._read("count documents",
                                   lambda conn: doc_sql.document_counts(_runner(conn)))

    def document(self, doc_id: bytes) -> StoredDocument | None:
        """Return a logged document by id, or None."""
        return self._read("read document",
                          lambda conn: doc_sql.document(_runner(conn), doc_id))

    def documents(self, doc_type: str | None, after_index: int,
                  limit: int) -> list[StoredDocument]:
        """Return documents with index > after_index in log order, at most ``limit``."""
        return self._read("read documents", lambda conn: doc_sql.documents(
            _runner(conn), doc_type, after_index, limit))

    def device_documents(self, device_id: bytes, from_index: int,
                         limit: int) -> list[StoredDocument]:
        """Return a device's consents and revocations with index >= from_index."""
        return self._read("read device documents", lambda conn: doc_sql.device_documents(
            _runner(conn), device_id, from_index, limit))

    def recipients(self) -> list[RecipientEntry]:
        """Return every registered recipient, by name."""
        return self._read("read recipients", lambda conn: doc_sql.recipients(_runner(conn)))

    def device_counts(self) -> DeviceCounts:
        """Count registered, revoked and equivocated devices (one pass over the registry)."""
        row = self._read("count devices", lambda conn: conn.execute(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'revoked'), "
            "COUNT(*) FILTER (WHERE flags & 1 <> 0) FROM devices").fetchone())
        assert row is not None
        return DeviceCounts(int(row[0]), int(row[1]), int(row[2]))

    # --- checkpoints and anchors (written by the sequencer thread) --------------------

    def add_checkpoint(self, size: int, root_hash: bytes, note: str, issued_ms: int,
                       balances: bytes) -> StoredCheckpoint:
        """Persist a signed checkpoint durably; return it with its number (1, 2, 3, ...).

        The number is the previous one plus one inside the INSERT (no sequence object, whose
        numbers a failed INSERT would skip).
        """
        with self._write_lock, self._fenced("store checkpoint"):
            row = self._writer_conn().execute(
                "INSERT INTO checkpoints (number, size, root, note, issued_ms, balances) "
                "SELECT COALESCE(MAX(number), 0) + 1, %s, %s, %s, %s, %s FROM checkpoints "
                "RETURNING number", (size, root_hash, note, issued_ms, balances)).fetchone()
        assert row is not None
        return StoredCheckpoint(int(row[0]), size, root_hash, note, issued_ms, balances)

    def add_anchor(self, checkpoint_number: int, backend: str, reference: str,
                   anchored_ms: int) -> None:
        """Remember where a checkpoint was anchored (idempotent)."""
        with self._write_lock, self._fenced("store anchor"):
            self._writer_conn().execute(
                "INSERT INTO anchors VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (checkpoint_number, backend, reference, anchored_ms))

    # --- the tables of the sequencer's chain duties (gateway.duty_tables) ----------------

    def create_namespace(self, namespace: str, schema: str) -> None:
        """Create the PostgreSQL schema ``namespace`` and ``schema``'s tables in it if needed.

        Any process may (it changes no data); ``namespace`` is a name from our code.
        """
        if not (namespace.isidentifier() and namespace.islower()):
            raise ValueError(f"not a schema name: {namespace!r}")
        with self._registry_lock, _storage_errors(f"create {namespace} tables"):
            conn = self._registry.get()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {namespace}".encode(), prepare=False)
                _within(conn, namespace)
                for statement in schema.split(";"):
                    if statement.strip():
                        conn.execute(statement.encode(), prepare=False)

    def read_in(self, namespace: str, what: str, query: Callable[[doc_sql.Run], _T]) -> _T:
        """Run ``query`` on the tables of ``namespace`` (reads only; any process)."""
        def run(conn: Conn) -> _T:
            with conn.transaction():
                _within(conn, namespace)
                return query(_runner(conn))
        return self._read(f"{namespace}: {what}", run)

    def write_in(self, namespace: str, what: str, change: Callable[[doc_sql.Run], _T]) -> _T:
        """Run ``change`` in one transaction of the writer's session on ``namespace``'s tables.

        Fenced like the log's writes: NotSequencer unless this process holds the writer
        lock (a shared store), so what a deposed sequencer would write never lands.
        """
        with self._write_lock, self._fenced(f"{namespace}: {what}"):
            conn = self._writer_conn()
            with conn.transaction():
                _within(conn, namespace)
                return change(_runner(conn))

    # --- registry (the admin API) --------------------------------------------------------

    def register_recipient(self, name: str, signing_key: bytes, sealing_key: bytes,
                           now_ms: int) -> RecipientEntry:
        """Register a recipient; raise RecipientExists if its name or a key is taken."""
        entry = RecipientEntry(name, signing_key, sealing_key, now_ms)
        with self._registry_lock, _storage_errors("register recipient"):
            conn = self._registry.get()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_REGISTRY_LOCK,))
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
            conn = self._registry.get()
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_REGISTRY_LOCK,))
                    _refuse_claimed(conn, name, public_key)
                    conn.execute(
                        "INSERT INTO devices (device_id, name, public_key, owner, "
                        "rate_micro_per_hour, status, registered_ms, owner_key, "
                        "owner_sealing_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (device_id, name, public_key, owner, rate_micro_per_hour,
                         STATUS_ACTIVE.value, now_ms, owner_key, owner_sealing_key))
                    conn.execute("INSERT INTO device_keys VALUES (%s, 0, %s)",
                                 (device_id, public_key))
            except pg_errors.UniqueViolation:
                # Only possible if something outside this gateway wrote the registry.
                raise DeviceExists(f"device {name!r} or its key is already registered") from None
            found = _load_device(conn, device_id)
        assert found is not None
        return found

    def revoke_device(self, device_id: bytes, now_ms: int) -> Device:
        """Revoke a device at once; raise DeviceNotFound. Revoking twice keeps the first time."""
        with self._registry_lock, _storage_errors("revoke device"):
            conn = self._registry.get()
            conn.execute(
                "UPDATE devices SET status = %s, revoked_ms = COALESCE(revoked_ms, %s) "
                "WHERE device_id = %s", (STATUS_REVOKED.value, now_ms, device_id))
            found = _load_device(conn, device_id)
        if found is None:
            raise DeviceNotFound(f"no device {device_id.hex()}")
        return found


class PgTransaction(doc_sql.DocumentMethods):
    """A :class:`gateway.store.LogTransaction` over the writer connection."""

    def __init__(self, conn: Conn, tree: merkle.CompactRange) -> None:
        self._conn = conn
        self._tree = tree
        # Appended rows wait here and go in with one executemany per table (flush); reads
        # that could see them (links) flush first, and the transaction flushes before COMMIT.
        self._leaf_rows: list[tuple[object, ...]] = []
        self._node_rows: list[tuple[int, int, bytes]] = []

    def flush(self) -> None:
        """Write the buffered leaves and nodes (inside the open transaction)."""
        if not self._leaf_rows:
            return
        with _storage_errors("append leaves"), self._conn.cursor() as cur:
            with cur.copy("COPY leaves FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_LEAF_TYPES)
                for row in self._leaf_rows:
                    copy.write_row(row)
            if self._node_rows:  # one leaf alone completes no stored node
                with cur.copy("COPY nodes FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(_NODE_TYPES)
                    for node in self._node_rows:
                        copy.write_row(node)
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
                "WHERE device_id = %s AND seq BETWEEN %s AND %s",
                (device_id, max(first_seq, 0), last_seq)).fetchall()
        return {int(s): LoggedLink(int(i), bytes(h), bytes(p)) for s, i, h, p in rows}

    def usage_overlaps(self, device_id: bytes, boot: int, start: int, end: int) -> bool:
        with _storage_errors("usage lookup"):
            row = self._conn.execute(
                "SELECT end_mono_ms FROM usage WHERE device_id = %s AND boot = %s "
                "AND start_mono_ms < %s ORDER BY start_mono_ms DESC, end_mono_ms DESC LIMIT 1",
                (device_id, boot, max(end, start + 1))).fetchone()
        return row is not None and int(row[0]) > start

    def owner_settled_micro(self, owner: str) -> int:
        with _storage_errors("owner credit"):
            row = self._conn.execute('SELECT SUM(settled_micro) FROM devices '
                                     'WHERE owner COLLATE "C" = %s', (owner,)).fetchone()
        total = row[0] if row is not None else None
        return min(int(total or 0), MAX_STORED_INT)  # SUM(bigint) is numeric: exact

    def append(self, leaf: NewLeaf) -> int:
        index = self._tree.size
        self._leaf_rows.append((index, leaf.device_id, leaf.seq, leaf.record_hash, leaf.prev,
                                leaf.raw, leaf.stream, leaf.received_ms, leaf.flags))
        # Low levels are not stored (gateway.store.STORED_NODE_LEVEL): _node hashes leaves
        self._node_rows += stored_nodes(self._tree.append(merkle.leaf_hash(leaf.raw)))
        return index

    def consume_pending(self, ids: Sequence[int]) -> None:
        """Delete handed-over batches in the transaction that sequences them (exactly once)."""
        with _storage_errors("consume queue"):
            cur = self._conn.execute("DELETE FROM pending WHERE id = ANY(%s)", (list(ids),))
        if cur.rowcount != len(ids):
            raise StorageError(f"gateway store: {len(ids) - cur.rowcount} queued batch(es) "
                               "were taken by another writer")

    def add_usage(self, usage: UsageEntry) -> None:
        with _storage_errors("add usage"):
            self._conn.execute(
                "INSERT INTO usage VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (usage.device_id, usage.seq, usage.boot, usage.start_mono_ms,
                 usage.end_mono_ms, usage.usage_ms, usage.credit_micro))
            self._conn.execute(
                "UPDATE devices SET settled_micro = settled_micro + %s WHERE device_id = %s",
                (usage.credit_micro, usage.device_id))

    def add_gap(self, gap: GapEntry) -> None:
        with _storage_errors("add gap"):
            self._conn.execute(
                "INSERT INTO gaps VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (gap.device_id, gap.seq, gap.first_seq, gap.last_seq, gap.reason))

    def add_key(self, device_id: bytes, entry: KeyEntry) -> None:
        with _storage_errors("add key"):
            self._conn.execute("INSERT INTO device_keys VALUES (%s, %s, %s)",
                               (device_id, entry.from_seq, entry.public_key))

    def add_equivocation(self, device_id: bytes, seq: int, raw: bytes, received_ms: int) -> None:
        with _storage_errors("add equivocation"):
            self._conn.execute(
                "INSERT INTO equivocations VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (device_id, seq, merkle.leaf_hash(raw), raw, received_ms))
            self._conn.execute("UPDATE devices SET flags = flags | %s WHERE device_id = %s",
                               (DEVICE_EQUIVOCATED, device_id))

    def equivocation_evidence(self, device_id: bytes) -> int:
        with _storage_errors("count equivocations"):
            row = self._conn.execute(
                "SELECT COUNT(*) FROM equivocations WHERE device_id = %s",
                (device_id,)).fetchone()
        return int(row[0]) if row else 0

    def key_in_use(self, public_key: bytes) -> bool:
        """Whether any device ever used ``public_key``."""
        with _storage_errors("key lookup"):
            row = self._conn.execute("SELECT 1 FROM device_keys WHERE public_key = %s",
                                     (public_key,)).fetchone()
        return row is not None

    def _run(self) -> doc_sql.Run:
        return _runner(self._conn)

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return _storage_errors(what)


def _load_devices(conn: Conn, after_name: str, limit: int) -> list[Device]:
    ids = [bytes(r[0]) for r in conn.execute(
        'SELECT device_id FROM devices WHERE name COLLATE "C" > %s ORDER BY name COLLATE "C" '
        "LIMIT %s", (after_name, limit)).fetchall()]
    found = [_load_device(conn, i) for i in ids]
    return [d for d in found if d is not None]


def _load_device(conn: Conn, device_id: bytes) -> Device | None:
    row = conn.execute(
        "SELECT name, owner, rate_micro_per_hour, status, flags, settled_micro, registered_ms, "
        "revoked_ms, owner_key, owner_sealing_key FROM devices WHERE device_id = %s",
        (device_id,)).fetchone()
    if row is None:
        return None
    keys = tuple(KeyEntry(int(s), bytes(k)) for s, k in conn.execute(
        "SELECT from_seq, public_key FROM device_keys WHERE device_id = %s ORDER BY from_seq",
        (device_id,)).fetchall())
    name, owner, rate, status, flags, settled, registered, revoked, okey, oseal = row
    return Device(device_id, str(name), str(owner), int(rate), DeviceStatus(status), keys,
                  int(flags),
                  int(settled), int(registered), None if revoked is None else int(revoked),
                  None if okey is None else bytes(okey), None if oseal is None else bytes(oseal))
