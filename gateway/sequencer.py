"""The sequencer: the one writer of the log.

For each prepared batch, in arrival order, :meth:`Sequencer.commit` opens one store
transaction, applies the stateful rules (:mod:`gateway.rules`) to every record, appends
the accepted ones, and commits. Only after the commit does it issue a checkpoint (when one
is due) and build the receipt, so a receipt never names a leaf that a crash could lose,
and a crash before the commit leaves no trace (the broker redelivers the batch, which is
then processed as if new). A batch redelivered after its commit is answered again with
the same leaf indices (``duplicate``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from gateway.checkpoints import Checkpointer
from gateway.config import Limits
from gateway.gatewaykey import GatewayKey
from gateway.metrics import GatewayMetrics
from gateway.rules import ACCEPTED, DUPLICATE, Context, Decision, decide
from gateway.store import LogStore
from gateway.verify import PreparedBatch, PreparedRecord
from protocol.batch import receipts_topic
from protocol.receipt import HASH_PREFIX_BYTES, Outcome, Receipt, Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignedReceipt:
    """A receipt ready to publish."""

    topic: str
    payload: bytes
    receipt: Receipt


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
        metrics.log_size.set(store.size())

    def commit(self, batch: PreparedBatch) -> SignedReceipt | None:
        """Apply one batch durably; return the signed receipt to publish.

        Returns None only when the topic names no device (there is nowhere to answer).
        Raises StorageError if the store fails; nothing of the batch is then kept.
        """
        self._metrics.batches.inc()
        if batch.topic_device is None:
            self._metrics.batches_unreadable.labels(reason=batch.reject or "wrong_topic").inc()
            return None
        if batch.reject is not None:
            self._metrics.batches_unreadable.labels(reason=batch.reject).inc()
            self._metrics.reject(batch.reject)
            outcome = Outcome(None, batch.payload_hash[:HASH_PREFIX_BYTES], Status.REJECTED,
                              reason=batch.reject)
            return self._receipt(batch.topic_device, 0, (outcome,), self._settled(batch))
        now = self._wall_ms()
        ctx = Context(batch.topic_device, now, self._skew_ms, now)
        with self._store.transaction() as tx:
            decisions = [decide(tx, item, ctx) for item in batch.records]
            device = tx.device(batch.topic_device)
        settled = device.settled_micro if device is not None else 0
        self._metrics.ingest_lag.observe(max(0.0, self._monotonic() - batch.arrived))
        self._metrics.log_size.set(self._store.size())
        outcomes = tuple(self._outcome(item, d) for item, d in zip(batch.records, decisions,
                                                                    strict=True))
        self.checkpoint_if_due()
        return self._receipt(batch.topic_device, batch.batch_id or 0, outcomes, settled)

    def checkpoint_if_due(self) -> None:
        """Issue a checkpoint if the interval or leaf count says so."""
        if self._checkpointer.due():
            self._checkpointer.issue()

    def _settled(self, batch: PreparedBatch) -> int:
        device = self._store.device(batch.topic_device) if batch.topic_device else None
        return device.settled_micro if device is not None else 0

    def _outcome(self, item: PreparedRecord, decision: Decision) -> Outcome:
        seq = item.record.seq if item.record is not None else None
        prefix = item.hash[:HASH_PREFIX_BYTES]
        if decision.kind == ACCEPTED:
            self._metrics.records_accepted.inc()
            if decision.unsynced:
                self._metrics.unsynced_records.inc()
            if decision.gap:
                self._metrics.gaps_declared.inc()
            return Outcome(seq, prefix, Status.ACCEPTED, leaf_index=decision.leaf_index)
        if decision.kind == DUPLICATE:
            self._metrics.records_duplicate.inc()
            return Outcome(seq, prefix, Status.DUPLICATE, leaf_index=decision.leaf_index)
        assert decision.reason is not None
        self._metrics.reject(decision.reason)
        if decision.reason == "equivocation":
            self._metrics.equivocations.inc()
        return Outcome(seq, prefix, Status.REJECTED, reason=decision.reason)

    def _receipt(self, device_id: bytes, batch_id: int, outcomes: tuple[Outcome, ...],
                 settled: int) -> SignedReceipt:
        receipt = Receipt(device_id, batch_id, outcomes, self._checkpointer.latest_note(),
                          self._wall_ms(), settled)
        return SignedReceipt(receipts_topic(device_id), receipt.sign(self._key.signing_key,
                                                                     self._key.kid), receipt)
