"""The sequencer: the one writer of the log.

For each prepared batch, in arrival order, the sequencer applies the stateful rules
(:mod:`gateway.rules`) to every record and appends the accepted ones inside one store
transaction. Batches that queued up behind each other share that transaction (group
commit, :meth:`Sequencer.commit_group`): each is processed exactly as on its own, they
only share the fsync. Only after the commit does it issue a checkpoint (when one
is due) and build the receipt, so a receipt never names a leaf that a crash could lose,
and a crash before the commit leaves no trace (the broker redelivers the batch, which is
then processed as if new). A batch redelivered after its commit is answered again with
the same leaf indices (``duplicate``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.checkpoints import Checkpointer
from gateway.config import Limits
from gateway.fairness import ThrottledLog
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.rules import BatchView, Context, Decision, decide
from gateway.store import LogStore, LogTransaction
from gateway.verify import PreparedBatch, PreparedRecord
from protocol import reasons
from protocol.batch import receipts_topic
from protocol.reasons import Reason
from protocol.receipt import HASH_PREFIX_BYTES, Outcome, Receipt, Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignedReceipt:
    """A receipt ready to publish."""

    topic: str
    payload: bytes
    receipt: Receipt


@dataclass
class _Tally:
    """What one group commit did, counted by typed outcome (turned into metrics once)."""

    accepted: int = 0
    duplicate: int = 0
    unsynced: int = 0
    gaps: int = 0
    evidence_skipped: int = 0
    rejected: Counter[Reason] = field(default_factory=Counter)    # records, by reason
    unreadable: Counter[Reason] = field(default_factory=Counter)  # whole batches, by reason


class Sequencer:
    """Applies prepared batches to the store one at a time and answers each with a receipt."""

    def __init__(self, store: LogStore, checkpointer: Checkpointer, key: GatewayKey, *,
                 limits: Limits, metrics: GatewayMetrics, wall_ms: Callable[[], int],
                 monotonic: Callable[[], float]) -> None:
        """Wire the sequencer; nothing is read or written yet."""
        self._store, self._checkpointer, self._key = store, checkpointer, key
        self._skew_ms = int(limits.max_future_skew_s * 1000)
        self._metrics = metrics
        self._wall_ms, self._monotonic = wall_ms, monotonic
        self._equivocation_log = ThrottledLog(monotonic)
        metrics.log_size.set(store.size())

    def commit(self, batch: PreparedBatch) -> SignedReceipt | None:
        """Apply one batch durably; return the signed receipt to publish (see commit_group)."""
        return self.commit_group([batch])[0]

    def commit_group(self, batches: list[PreparedBatch], within: Callable[[LogTransaction], None]
                     = lambda tx: None) -> list[SignedReceipt | None]:
        """Apply several batches in ONE transaction (group commit); return their receipts.

        Each batch is processed exactly as on its own, in order (a later batch sees what an
        earlier one appended); the group only shares the commit, and its fsync. A receipt
        is None only when the topic names no device (there is nowhere to answer). Raises
        StorageError if the store fails; nothing of the group is then kept. ``within`` runs
        last inside the transaction (gateway.cluster deletes the batches it took from the
        hand-over queue there, so they are sequenced exactly once).
        """
        tally = _Tally()
        now = self._wall_ms()
        results: list[tuple[PreparedBatch, tuple[Outcome, ...], int] | None] = []
        with self._store.transaction() as tx:
            # One view for the group: each device's registry entry and chain neighbours are
            # read once per group, however many of its batches the group holds.
            view = BatchView(tx, [item for batch in batches if batch.reject is None
                                  for item in batch.records])
            for batch in batches:
                results.append(self._apply(view, batch, now, tally))
            within(tx)
        self._count(tally, len(batches))
        if tally.rejected[reasons.EQUIVOCATION]:  # else no outcome need be looked at again
            self._report_equivocations(results)
        done = self._monotonic()
        for batch in batches:
            self._metrics.ingest_lag.observe(max(0.0, done - batch.arrived))
        self.checkpoint_if_due()
        return [None if r is None else self._receipt(r[0].topic_device or b"",
                                                     r[0].batch_id or 0, r[1], r[2])
                for r in results]

    def _apply(self, view: BatchView, batch: PreparedBatch, now: int,
               tally: _Tally) -> tuple[PreparedBatch, tuple[Outcome, ...], int] | None:
        if batch.topic_device is None:
            tally.unreadable[batch.reject or reasons.WRONG_TOPIC] += 1
            return None
        if batch.reject is not None:
            tally.unreadable[batch.reject] += 1
            tally.rejected[batch.reject] += 1
            outcome = Outcome(None, batch.payload_hash[:HASH_PREFIX_BYTES], Status.REJECTED,
                              reason=batch.reject)
            outcomes: tuple[Outcome, ...] = (outcome,)
        else:
            ctx = Context(batch.topic_device, now, self._skew_ms, now)
            outcomes = tuple(_outcome(item, decide(view, item, ctx), tally)
                             for item in batch.records)
        device = view.device(batch.topic_device)  # current: the view re-reads after credit
        return batch, outcomes, device.settled_micro if device is not None else 0

    def _count(self, tally: _Tally, batches: int) -> None:
        """Update the metrics once per group (a Counter.inc per record is measurable)."""
        m = self._metrics
        m.batches.inc(batches)
        m.log_size.set(self._store.size())
        for reason, n in tally.rejected.items():
            m.reject(reason, n)
        for reason, n in tally.unreadable.items():
            m.batches_unreadable.labels(reason=reason.value).inc(n)
        m.records_accepted.inc(tally.accepted)
        m.records_duplicate.inc(tally.duplicate)
        m.unsynced_records.inc(tally.unsynced)
        m.gaps_declared.inc(tally.gaps)
        m.equivocations.inc(tally.rejected[reasons.EQUIVOCATION])
        m.evidence_skipped.inc(tally.evidence_skipped)

    def _report_equivocations(
            self, results: list[tuple[PreparedBatch, tuple[Outcome, ...], int] | None]) -> None:
        """One warning per device per interval, however many equivocations it sends."""
        for result in results:
            if result is None or result[0].topic_device is None:
                continue
            n = sum(1 for o in result[1] if o.reason == reasons.EQUIVOCATION)
            device = result[0].topic_device
            count = self._equivocation_log.event(device, "equivocation", n) if n else None
            if count is not None:
                log.warning("equivocation: device %s signed %d record(s) with an already "
                            "logged seq (evidence kept for its first ones; all counted)",
                            device.hex(), count)

    def checkpoint_if_due(self) -> None:
        """Issue a checkpoint if the interval or leaf count says so."""
        if self._checkpointer.due():
            self._checkpointer.issue()

    def _receipt(self, device_id: bytes, batch_id: int, outcomes: tuple[Outcome, ...],
                 settled: int) -> SignedReceipt:
        receipt = Receipt(device_id, batch_id, outcomes, self._checkpointer.latest_note(),
                          self._wall_ms(), settled)
        return SignedReceipt(receipts_topic(device_id), receipt.sign(self._key.signing_key,
                                                                     self._key.kid), receipt)


def _outcome(item: PreparedRecord, decision: Decision, tally: _Tally) -> Outcome:
    seq = item.record.seq if item.record is not None else None
    prefix = item.hash[:HASH_PREFIX_BYTES]
    if decision.kind is Status.ACCEPTED:
        tally.accepted += 1
        tally.unsynced += decision.unsynced
        tally.gaps += decision.gap
    elif decision.kind is Status.DUPLICATE:
        tally.duplicate += 1
    else:
        assert decision.reason is not None
        tally.rejected[decision.reason] += 1
        tally.evidence_skipped += not decision.evidence_kept
    return Outcome(seq, prefix, decision.kind, leaf_index=decision.leaf_index,
                   reason=decision.reason)
