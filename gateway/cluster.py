"""Several gateway processes over one PostgreSQL database: who sequences, and the hand-over.

With ``[store] shared = true`` every gateway process of a log subscribes to the same MQTT
shared subscription and verifies what the broker gives it (:mod:`gateway.verify`). One of
them at a time is the *sequencer*: the process whose writer session holds the store's
writer lock (a session-level PostgreSQL advisory lock, :meth:`PostgresLogStore.lead`).
docs/SCALING.md argues the choice of a lock over a lease row.

- The sequencer commits what it verified itself straight away (as a lone gateway does), and
  also takes the batches the others handed over, oldest first, deleting them from the
  ``pending`` table in the transaction that sequences them: a batch is sequenced exactly
  once, and a crash on either side of that COMMIT leaves it either queued or logged. It
  signs checkpoints and publishes every receipt (it has them in hand at the commit).
- Every other process commits its verified batches to ``pending`` with the verdict of each
  record's signature check, and acknowledges the MQTT message only after that COMMIT; it
  publishes no receipt, and with it what it parsed of each record (``parsed``: the
  header fields, see :func:`parsed_records`), so the sequencer neither decodes the records
  nor verifies the signatures again (it splits the batch into its records and hashes
  each), unless the device's key changed in between (rules re-check the key inside the
  transaction, as for a lone gateway). A record rejected by a stateless check, or whose
  body a stateful rule reads (usage, gap, key rotation), is decoded again there.
- Every process tries to take the lock every ``ELECT_EVERY_S``; the lock is free as soon as
  the server notices the sequencer's session ended (at once for a killed process on a live
  machine, after the server's TCP keepalive for a dead machine). On taking it, a process
  rebuilds the tree frontier from the database, reloads the latest checkpoint and signs a
  checkpoint of everything its predecessor logged, so the checkpoint chain continues
  without a fork.

The fence: every write of the log runs on the session that holds the lock (the store
refuses with :class:`NotSequencer` otherwise), and a session that lost its lock has ended
and runs nothing, so a deposed sequencer that still believes it leads cannot append.

The chain duties (the Ethereum anchor's worker, the payout worker) are the sequencer's
alone: :class:`Role` starts each :class:`Duty` when this process takes over (after its
takeover checkpoint) and stops it when an election finds the lock lost, before a new term
of its own, and when the process stops. Their state is in the shared database, written on
the same fenced session (gateway.duty_tables), so a worker that has not stopped yet when
the lock goes can no longer persist, and so never broadcasts, a new transaction.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from gateway.checkpoints import Checkpointer
from gateway.config import Limits
from gateway.metrics import GatewayMetrics
from gateway.sequencer import Sequencer, SignedReceipt
from gateway.store import LogStore, LogTransaction, PendingBatch
from gateway.verify import (
    Header,
    KeyLookup,
    PreparedBatch,
    PreparedRecord,
    RuleBody,
    prepare_batch,
    prepare_record,
)
from protocol.batch import Batch, device_id_from_topic
from protocol.errors import ConfigError, MalformedRecord, StorageError
from protocol.reasons import Reason
from protocol.signed import record_hash

log = logging.getLogger(__name__)
ELECT_EVERY_S = 0.5  # how often every process tries (or re-checks) the sequencer lock
POLL_S = 0.05  # how often the idle sequencer looks at the hand-over queue
TAKE_BATCHES = 16  # handed-over batches sequenced in one transaction
# Bound of the hand-over queue: past it verifiers drop (counted, unacknowledged by receipt:
# the device resends) instead of queueing, so a stalled sequencer does not make the table
# grow with every resend. 4096 batches of 100 records are about 25 s of a million devices.
MAX_PENDING_BATCHES = 4096
DEPTH_EVERY_S = 1.0  # how often a verifier reads the queue's depth
KEY_BYTES = 32
_NONE, _GOOD, _BAD = 0, 1, 2  # a record's verdict: not checked, verified, did not verify


@runtime_checkable
class SharedStore(LogStore, Protocol):
    """A store several gateway processes share (gateway.pg_store with ``shared``)."""

    @property
    def term(self) -> int: ...

    @property
    def leading(self) -> bool: ...

    def lead(self) -> bool: ...

    def enqueue(self, batches: Sequence[PendingBatch], now_ms: int) -> None: ...

    def pending(self, limit: int) -> list[PendingBatch]: ...

    def pending_depth(self) -> int: ...


class Duty(Protocol):
    """Background work only the sequencer does (gateway.eth_anchor, gateway.payout)."""

    def start(self) -> None:
        """Begin (again), resuming from the shared database; ConfigError if misconfigured."""
        ...

    def stop(self) -> None:
        """Stop for now; its state stays in the database for the next sequencer."""
        ...


@runtime_checkable
class QueueTransaction(Protocol):
    """A shared store's transaction, which can take batches off the hand-over queue."""

    def consume_pending(self, ids: Sequence[int]) -> None: ...


def verdicts(batch: PreparedBatch) -> bytes:
    """Per record, one byte (not checked / verified / did not verify) and the key (32 bytes)."""
    out = bytearray()
    for item in batch.records:
        if item.good_key is not None:
            out += bytes([_GOOD]) + item.good_key
        elif item.bad_key is not None:
            out += bytes([_BAD]) + item.bad_key
        else:
            out += bytes([_NONE]) + bytes(KEY_BYTES)
    return bytes(out)


# ``parsed``, per record: one byte, then for _HEADER the fields of gateway.verify.Header
# (signer, boot, seq, prev, wall_ms, clock_synced, mono_ms, the stream's UTF-8 length)
# and the stream; for _AGAIN nothing (the sequencer prepares that record again).
_AGAIN, _HEADER = 0, 1
_FIELDS = struct.Struct(">16sqq32sq?qH")


def parsed_records(batch: PreparedBatch) -> bytes:
    """What the verifying process parsed of each record, for the sequencer (no bodies)."""
    out = bytearray()
    pack = _FIELDS.pack
    for item in batch.records:
        r = item.record
        if r is None or item.reject is not None or isinstance(r.body, RuleBody):
            out.append(_AGAIN)
            continue
        stream = r.stream.encode()
        out.append(_HEADER)
        out += pack(item.signer, r.boot, r.seq, r.prev, r.wall_ms, r.clock_synced, r.mono_ms,
                    len(stream))
        out += stream
    return bytes(out)


def pending_batch(batch: PreparedBatch, payload: bytes) -> PendingBatch:
    """What a verifying process hands over for one message (id is the database's)."""
    reject = None if batch.reject is None else batch.reject.value
    if reject is not None:
        return PendingBatch(0, batch.topic, b"", batch.payload_hash, reject, verdicts(batch))
    return PendingBatch(0, batch.topic, payload, batch.payload_hash, reject, verdicts(batch),
                        parsed_records(batch))


def _from_parsed(pending: PendingBatch, arrived: float, limits: Limits) -> PreparedBatch | None:
    """The batch rebuilt from its payload's records and ``parsed``; None if they disagree."""
    if pending.parsed is None or len(pending.payload) > limits.max_batch_bytes:
        return None
    parsed, unpack, width = pending.parsed, _FIELDS.unpack_from, _FIELDS.size
    no_keys: KeyLookup = lambda _kid: None  # noqa: E731
    try:
        decoded = Batch.from_cbor(pending.payload)
        topic_device = device_id_from_topic(pending.topic)
        records: list[PreparedRecord] = []
        at = 0
        for raw in decoded.records:
            kind = parsed[at]
            at += 1
            if kind == _AGAIN:
                records.append(prepare_record(raw, limits, no_keys, {}))
                continue
            if kind != _HEADER:
                return None
            signer, boot, seq, prev, wall, synced, mono, n = unpack(parsed, at)
            at += width
            stream = parsed[at:at + n].decode()
            at += n
            if at > len(parsed):
                return None
            header = Header(boot, seq, prev, wall, synced, mono, stream, None)
            records.append(PreparedRecord(raw, record_hash(raw), None, header, None, None,
                                          None, signer))
    except (MalformedRecord, ValueError, IndexError, struct.error):
        return None
    if at != len(parsed):
        return None
    return PreparedBatch(pending.topic, topic_device, arrived, record_hash(pending.payload),
                         decoded.batch_id, None, records)


def reprepare(pending: PendingBatch, arrived: float, limits: Limits,
              keys: KeyLookup) -> PreparedBatch:
    """The sequencer's PreparedBatch for a handed-over one: rebuilt, verdicts applied.

    Rebuilt from what the verifier parsed (``parsed``), or decoded again when that is
    missing or does not fit the payload. A verdict list that does not match the records
    (never from our own code) is ignored and every signature verified here instead.
    """
    if pending.reject is not None:
        batch = prepare_batch(pending.topic, b"", arrived, limits, keys)
        batch.records, batch.payload_hash = [], pending.payload_hash
        batch.reject = Reason(pending.reject)
        return batch
    batch = _from_parsed(pending, arrived, limits) or prepare_batch(
        pending.topic, pending.payload, arrived, limits, lambda _kid: None)
    width = 1 + KEY_BYTES
    if len(pending.verdicts) != width * len(batch.records):
        return prepare_batch(pending.topic, pending.payload, arrived, limits, keys)
    for i, item in enumerate(batch.records):
        _apply_verdict(item, pending.verdicts[i * width:(i + 1) * width])
    return batch


def _apply_verdict(item: PreparedRecord, verdict: bytes) -> None:
    kind, key = verdict[0], verdict[1:]
    if kind == _GOOD:
        item.good_key = key
    elif kind == _BAD:
        item.bad_key = key


class Role:
    """This process's part in a shared log: elect, hand over, or sequence the queue."""

    def __init__(self, store: LogStore, checkpointer: Checkpointer, sequencer: Sequencer, *,
                 limits: Limits, metrics: GatewayMetrics, wall_ms: Callable[[], int],
                 monotonic: Callable[[], float], duties: Sequence[Duty] = ()) -> None:
        """Raise ConfigError if ``store`` cannot be shared (only PostgreSQL can)."""
        if not isinstance(store, SharedStore):
            raise ConfigError("store.shared needs backend = \"postgresql\"")
        self._store, self._checkpointer, self._sequencer = store, checkpointer, sequencer
        self._limits, self._metrics = limits, metrics
        self._wall_ms, self._monotonic = wall_ms, monotonic
        self._term = 0
        self._elected_at: float | None = None
        self._poll_at = 0.0  # when to look at the queue again (at once while it is busy)
        self._depth_at: float | None = None
        self.queue_full = False  # as of the last look (DEPTH_EVERY_S)
        self._duties = tuple(duties)
        self._duties_term = 0  # the term whose duties run (0: none run)
        metrics.sequencer_leading.set(0)

    @property
    def leading(self) -> bool:
        """Whether this process sequences (as of the last election or write)."""
        return self._store.leading and self._term == self._store.term

    def elect(self, *, now: bool = False) -> bool:
        """Every ELECT_EVERY_S (or ``now``): take or re-check the lock; return whether we lead.

        On a new term it reloads the latest checkpoint, signs one of everything logged
        before it took over, then starts the duties (stopping those of an earlier term
        first); when the lock is gone it stops them. Raises ConfigError if a duty cannot
        start (the process then exits and the lock goes to another).
        """
        at = self._monotonic()
        if not now and self._elected_at is not None and at - self._elected_at < ELECT_EVERY_S:
            return self.leading
        self._elected_at = at
        if not self._store.lead():
            self._metrics.sequencer_leading.set(0)
            self.stop_duties()
            return False
        if self._store.term != self._term:
            self.stop_duties()  # an earlier term's: another process may have led since
            try:
                self._take_over()
            except StorageError as exc:  # retried at the next election (NotSequencer: the
                # session ended meanwhile, and with it the lock)
                log.warning("taking over as the sequencer failed: %s", exc)
                self._metrics.sequencer_leading.set(0)
                return False
        if self._duties_term != self._term:
            for duty in self._duties:
                duty.start()
            self._duties_term = self._term
        self._metrics.sequencer_leading.set(1)
        return True

    def stop_duties(self) -> None:
        """Stop the duties if they run (lost lock, new term, or the process stops)."""
        if self._duties_term == 0:
            return
        self._duties_term = 0
        for duty in self._duties:
            duty.stop()
        log.info("this process no longer does the sequencer's chain duties")

    def _take_over(self) -> None:
        self._checkpointer.reload()
        self._term = self._store.term
        self._metrics.sequencer_terms.inc()
        issued = self._checkpointer.issue()
        log.info("this process sequences the log now (term %d here; log size %d; "
                 "checkpoint %s)", self._term, self._store.size(),
                 "signed" if issued else "unchanged")

    def backlogged(self) -> bool:
        """Whether the hand-over queue is at its bound (read at most every DEPTH_EVERY_S).

        Raises StorageError if the depth cannot be read.
        """
        now = self._monotonic()
        if self._depth_at is None or now - self._depth_at >= DEPTH_EVERY_S:
            self._depth_at = now
            self.queue_full = self._store.pending_depth() >= MAX_PENDING_BATCHES
        return self.queue_full

    def hand_over(self, batches: Sequence[PreparedBatch], payloads: Sequence[bytes]) -> None:
        """Commit verified batches to the sequencer's queue; raise StorageError if it fails."""
        self._store.enqueue([pending_batch(b, p) for b, p in zip(batches, payloads,
                                                                 strict=True)],
                            self._wall_ms())
        self._metrics.batches_handed_over.inc(len(batches))

    def drain(self) -> list[SignedReceipt | None]:
        """Sequence up to TAKE_BATCHES handed-over batches in one transaction (the sequencer).

        Returns their receipts to publish ([] when the queue is empty or was looked at less
        than POLL_S ago and found short). Raises StorageError (NotSequencer when another
        process took over).
        """
        now = self._monotonic()
        if now < self._poll_at:
            return []
        taken = self._store.pending(TAKE_BATCHES)
        self._poll_at = now if len(taken) == TAKE_BATCHES else now + POLL_S
        if not taken:
            return []
        arrived = self._monotonic()
        prepared = [reprepare(p, arrived, self._limits, self._store.device) for p in taken]
        ids = [p.id for p in taken]

        def consume(tx: LogTransaction) -> None:
            if not isinstance(tx, QueueTransaction):
                raise StorageError("gateway store: this store has no hand-over queue")
            tx.consume_pending(ids)

        return self._sequencer.commit_group(prepared, within=consume)
