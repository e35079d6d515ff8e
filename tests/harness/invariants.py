"""The delivery guarantee, checked from the outside.

Nothing here asks a running part for its opinion: the gateway's log is read from its
SQLite file (read-only) and its public HTTP API, each agent's outbox from its SQLite file
(read-only), and, optionally, what travelled on the wire from a :class:`WireObserver`
subscribed to every records topic. The checks:

1. **Every committed record is accounted for.** For every device and every sequence number
   from 0 to the highest it used, the record is in the log, or still in the device's
   outbox (not yet receipted), or declared dropped by a ``gap`` record (logged or pending;
   while an agent runs, a ``reject-new`` outbox's refused run that its next record will
   declare counts too), or in the device's dead letters for an accepted reason (a usage
   claim re-sent after a crash is refused as ``usage_overlap``: that interval is already
   credited).
2. **Exactly once.** The log has no hole in its leaf indices, no record twice, and at most
   one record per (device, seq) (the store's unique index, checked again here).
3. **No sequence number reused.** Wherever the same (device, seq) shows up (log, outbox,
   dead letters, the wire), the bytes are the same; the chain (``prev``) links every pair
   of consecutive logged records; the gateway caught no equivocation.
4. **Checkpoints never fork.** Every stored checkpoint verifies under the gateway key, the
   chain of ``prev`` hashes is unbroken, sizes only grow, every checkpoint seen during the
   run is still there, and each is consistent with the next and with the latest
   (consistency proofs from ``/v1/proofs/consistency``, verified with
   :func:`protocol.merkle.verify_consistency`; consistency is transitive over an
   append-only sequence, so this covers every pair).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol import merkle, reasons
from protocol.batch import Batch, device_id_from_topic
from protocol.checkpoint import Checkpoint, checkpoint_hash
from protocol.errors import EdgeproofError
from protocol.note import NoteVerifier
from protocol.record import GENESIS_PREV, Gap, Usage
from protocol.signed import parse_signed_record


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)


@dataclass
class OutboxView:
    """A read-only snapshot of one agent's outbox."""

    device_id: bytes
    pending: dict[int, bytes]
    dead: dict[int, tuple[str, str, bytes]]  # seq -> (stream, reason, raw)
    head_seq: int
    refusing: tuple[int, int] | None = None  # reject-new: refused run not yet declared

    @classmethod
    def read(cls, path: Path, device_id: bytes) -> OutboxView:
        """Read ``outbox.sqlite`` in one read transaction."""
        conn = _ro(path)
        try:
            conn.execute("BEGIN")
            pending = {int(s): bytes(r) for s, r in conn.execute("SELECT seq, raw FROM records")}
            dead = {int(s): (str(st), str(why), bytes(r)) for s, st, why, r in conn.execute(
                "SELECT seq, stream, reason, raw FROM dead_letters")}
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        finally:
            conn.close()
        head = max([int(meta.get("head_seq", -1)), *pending, *dead])
        refusing = None
        if "rej_first" in meta:  # committed with the refusal; declared by the next record
            refusing = (int(meta["rej_first"]), int(meta["rej_last"]))
        return cls(device_id, pending, dead, head, refusing)


@dataclass
class LogView:
    """A read-only snapshot of the gateway's log."""

    leaves: list[tuple[int, bytes, int, bytes, bytes]]  # idx, device, seq, prev, raw
    gaps: dict[bytes, list[tuple[int, int]]]
    usage: set[tuple[bytes, int, int, int]]  # device, boot, start, end
    equivocations: int

    @classmethod
    def read(cls, db: Path) -> LogView:
        conn = _ro(db)
        try:
            conn.execute("BEGIN")
            leaves = [(int(i), bytes(d), int(s), bytes(p), bytes(r)) for i, d, s, p, r in
                      conn.execute("SELECT idx, device_id, seq, prev, raw FROM leaves "
                                   "ORDER BY idx")]
            gaps: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
            for d, first, last in conn.execute("SELECT device_id, first_seq, last_seq FROM gaps"):
                gaps[bytes(d)].append((int(first), int(last)))
            usage = {(bytes(d), int(b), int(s), int(e)) for d, b, s, e in conn.execute(
                "SELECT device_id, boot, start_mono_ms, end_mono_ms FROM usage")}
            equivocations = int(conn.execute("SELECT count(*) FROM equivocations").fetchone()[0])
        finally:
            conn.close()
        return cls(leaves, dict(gaps), usage, equivocations)

    def of_device(self, device_id: bytes) -> dict[int, tuple[bytes, bytes]]:
        """seq -> (prev, raw) of one device's logged records."""
        return {s: (p, r) for _, d, s, p, r in self.leaves if d == device_id}


@dataclass
class Report:
    """What a check found: counts for the log, and every violation in words."""

    violations: list[str] = field(default_factory=list)
    facts: dict[str, int] = field(default_factory=dict)

    def add(self, text: str) -> None:
        if len(self.violations) < 200:  # enough to debug; the count says the rest
            self.violations.append(text)
        self.facts["violations"] = self.facts.get("violations", 0) + 1

    def merge(self, other: Report) -> None:
        for text in other.violations:
            self.add(text)
        for key, value in other.facts.items():
            if key != "violations":
                self.facts[key] = self.facts.get(key, 0) + value


def check_log(log: LogView) -> Report:
    """Invariant 2 and the gateway's equivocation count."""
    report = Report(facts={"leaves": len(log.leaves)})
    if [leaf[0] for leaf in log.leaves] != list(range(len(log.leaves))):
        report.add("the log's leaf indices have a hole or a repeat")
    raws = [leaf[4] for leaf in log.leaves]
    if len(set(raws)) != len(raws):
        report.add(f"{len(raws) - len(set(raws))} records are in the log more than once")
    keys = [(leaf[1], leaf[2]) for leaf in log.leaves]
    if len(set(keys)) != len(keys):
        report.add("two leaves share a (device, seq)")
    if log.equivocations:
        report.add(f"the gateway caught {log.equivocations} equivocations")
    return report


def check_device(log: LogView, outbox: OutboxView,
                 wire: dict[int, set[bytes]] | None = None, *, drained: bool = False) -> Report:
    """Invariants 1 and 3 for one device; ``drained``: its outbox must be empty too."""
    dev, name = outbox.device_id, outbox.device_id.hex()[:8]
    logged = log.of_device(dev)
    report = Report(facts={"logged": len(logged), "pending": len(outbox.pending),
                           "dead_letters": len(outbox.dead)})
    ranges = list(log.gaps.get(dev, []))
    for raw in outbox.pending.values():
        body = _body(raw)
        if isinstance(body, Gap):
            ranges.append((body.first_seq, body.last_seq))
    # A running agent may have made (and the gateway logged) records after the outbox was
    # read; only a stopped agent's outbox bounds everything that was ever used.
    head = max([outbox.head_seq, *logged, *(wire or {})]) if drained else outbox.head_seq
    if outbox.refusing is not None:
        if drained:
            report.add(f"device {name}: refused seqs {outbox.refusing} never declared")
        else:
            ranges.append(outbox.refusing)
    declared = _expand(ranges, head)
    report.facts["declared_dropped"] = len(declared)
    for seq in range(head + 1):
        places = [raw for raw in (logged.get(seq, (b"", b""))[1], outbox.pending.get(seq),
                                  outbox.dead.get(seq, ("", "", b""))[2]) if raw]
        if not places and seq not in declared:
            report.add(f"device {name}: seq {seq} was used but is neither logged, pending, "
                       f"nor declared dropped")
        if len(set(places)) > 1:
            report.add(f"device {name}: seq {seq} holds two different records")
        seen = wire.get(seq, set()) if wire else set()
        if len(seen) > 1 or (seen and places and hashlib.sha256(places[0]).digest() not in seen):
            report.add(f"device {name}: seq {seq} travelled with different bytes")
    for seq, (prev, _) in logged.items():
        if seq - 1 in logged and prev != hashlib.sha256(logged[seq - 1][1]).digest():
            report.add(f"device {name}: chain broken between seq {seq - 1} and {seq}")
    for seq, (stream, reason, raw) in outbox.dead.items():
        if not _duplicate_usage(log, dev, reason, raw):
            report.add(f"device {name}: seq {seq} ({stream}) dead-lettered: {reason}")
    if drained and outbox.pending:
        report.add(f"device {name}: {len(outbox.pending)} records never receipted")
    return report


def _body(raw: bytes) -> object:
    try:
        return parse_signed_record(raw)[1].body
    except EdgeproofError:
        return None


def _expand(ranges: Iterable[tuple[int, int]], head: int) -> set[int]:
    out: set[int] = set()
    for first, last in ranges:
        out.update(range(max(0, first), min(last, head) + 1))
    return out


def _duplicate_usage(log: LogView, dev: bytes, reason: str, raw: bytes) -> bool:
    """A re-sent usage claim: refused as overlapping, with its interval already credited."""
    if reason != reasons.USAGE_OVERLAP:
        return False
    try:
        record = parse_signed_record(raw)[1]
    except EdgeproofError:
        return False
    body = record.body
    return isinstance(body, Usage) and (dev, record.boot, body.start_mono_ms,
                                        body.end_mono_ms) in log.usage


def check_checkpoints(base_url: str, verifier_key: str, seen_notes: Iterable[str] = ()
                      ) -> Report:
    """Invariant 4 against the gateway's API."""
    verifier = NoteVerifier.from_text(verifier_key)
    report = Report()
    with httpx.Client(base_url=base_url, timeout=30) as http:
        stored = _all_checkpoints(http)
        report.facts["checkpoints"] = len(stored)
        notes = [str(c["note"]) for c in stored]
        missing = set(seen_notes) - set(notes)
        if missing:
            report.add(f"{len(missing)} checkpoints seen during the run are gone")
        parsed: list[Checkpoint] = []
        for note in notes:
            try:
                parsed.append(Checkpoint.from_note(note, verifier))
            except EdgeproofError as exc:
                report.add(f"checkpoint does not verify: {exc}")
                return report
        _check_chain(parsed, notes, report)
        roots = {cp.size: cp.root_hash for cp in parsed}
        sizes = sorted(s for s in roots if s > 0)
        pairs = set(itertools.pairwise(sizes))
        pairs |= {(s, sizes[-1]) for s in sizes[:-1]}
        for old, new in sorted(pairs):
            proof = http.get("/v1/proofs/consistency",
                             params={"old_size": old, "new_size": new}).json()["proof"]
            try:
                merkle.verify_consistency(old, new, roots[old], roots[new],
                                          [bytes.fromhex(h) for h in proof])
            except EdgeproofError as exc:
                report.add(f"checkpoint {old} is not consistent with {new}: {exc}")
        report.facts["consistency_proofs"] = len(pairs)
    return report


def _all_checkpoints(http: httpx.Client) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    after = 0
    while True:
        page = http.get("/v1/checkpoints", params={"after": after, "limit": 1000}).json()
        out.extend(page)
        if len(page) < 1000:
            return out
        after = int(page[-1]["number"])


def _check_chain(parsed: list[Checkpoint], notes: list[str], report: Report) -> None:
    by_size: dict[int, bytes] = {}
    prev_hash, prev_size = GENESIS_PREV, 0
    for cp, note in zip(parsed, notes, strict=True):
        if by_size.setdefault(cp.size, cp.root_hash) != cp.root_hash:
            report.add(f"two checkpoints of size {cp.size} have different roots (a fork)")
        if cp.size < prev_size:
            report.add(f"checkpoint size went back from {prev_size} to {cp.size}")
        link = [e for e in cp.extensions if e.startswith("prev ")]
        if not link or base64.b64decode(link[0][5:]) != prev_hash:
            report.add(f"checkpoint of size {cp.size} does not name its predecessor")
        prev_hash, prev_size = checkpoint_hash(note), cp.size


class WireObserver:
    """Subscribes to every records topic and remembers each (device, seq)'s record hashes.

    It logs in with a broker user of its own that has the gateway's rights (its ACL reads
    every records topic; the broker makes the user name the client id, so the gateway's own
    login would close the gateway's connection), with QoS 0 and no session, so it never
    takes a message from the gateway. It may miss messages while the broker is down; it
    never invents any.
    """

    def __init__(self, port: int, username: str, password: str) -> None:
        self.seen: dict[bytes, dict[int, set[bytes]]] = defaultdict(lambda: defaultdict(set))
        self.messages = 0
        self._lock = threading.Lock()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username,
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(username, password)
        client.on_connect = lambda c, *_: c.subscribe("edgeproof/v1/devices/+/records", qos=0)
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 2)
        client.connect_async("127.0.0.1", port)
        client.loop_start()
        self._client = client

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            device = device_id_from_topic(msg.topic)
            batch = Batch.from_cbor(bytes(msg.payload))
        except EdgeproofError:
            return
        with self._lock:
            self.messages += 1
            for raw in batch.records:
                try:
                    sign1, record = parse_signed_record(raw)
                except EdgeproofError:
                    continue
                if sign1.kid == device:
                    self.seen[device][record.seq].add(hashlib.sha256(raw).digest())

    def of_device(self, device_id: bytes) -> dict[int, set[bytes]]:
        with self._lock:
            return {seq: set(h) for seq, h in self.seen.get(device_id, {}).items()}

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
