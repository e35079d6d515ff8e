"""The outbox's tables and the queries that need no outbox state (also used by ``status``)."""

from __future__ import annotations

import sqlite3

from agent.outbox.model import OutboxStats
from protocol.receipt import hash_prefix

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, protected INTEGER NOT NULL,
    raw BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL, raw BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value);
"""


def seq_by_hash(conn: sqlite3.Connection, prefix: bytes,
                candidates: tuple[int, ...]) -> int | None:
    """The sequence number among ``candidates`` whose stored record has ``prefix``."""
    for seq in candidates:
        row = conn.execute("SELECT raw FROM records WHERE seq = ?", (seq,)).fetchone()
        if row is not None and hash_prefix(row[0]) == prefix:
            return seq
    return None


def prune_dead_letters(conn: sqlite3.Connection, keep: int) -> int:
    """Delete the oldest dead letters beyond ``keep``; return how many went."""
    count = int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
    excess = count - keep
    if excess <= 0:
        return 0
    conn.execute("DELETE FROM dead_letters WHERE seq IN "
                 "(SELECT seq FROM dead_letters ORDER BY seq LIMIT ?)", (excess,))
    return excess


def read_stats(conn: sqlite3.Connection, corrupt_outboxes: int) -> OutboxStats:
    """Read :class:`OutboxStats` from an outbox database (also used by ``status``)."""
    depth, size = conn.execute(
        "SELECT count(*), coalesce(sum(length(raw)), 0) FROM records").fetchone()
    dead = dict(conn.execute(
        "SELECT reason, count(*) FROM dead_letters GROUP BY reason ORDER BY reason").fetchall())
    meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    counters = {k[2:]: int(v) for k, v in meta.items() if k.startswith("c_")}
    last = conn.execute("SELECT max(seq) FROM records").fetchone()[0]
    head = max(int(meta.get("head_seq", -1)), -1 if last is None else int(last))
    return OutboxStats(depth=int(depth), bytes=int(size), head_seq=head,
                       dead_letters={str(k): int(v) for k, v in dead.items()},
                       counters=counters, corrupt_outboxes=corrupt_outboxes)


def within_bytes(rows: list[tuple[int, bytes]], max_bytes: int) -> list[tuple[int, bytes]]:
    """The leading ``rows`` whose raw bytes fit in ``max_bytes`` (always at least one)."""
    out: list[tuple[int, bytes]] = []
    total = 0
    for seq, raw in rows:
        if out and total + len(raw) > max_bytes:
            break
        out.append((seq, raw))
        total += len(raw)
    return out
