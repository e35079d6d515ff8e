"""Gateway metrics: Prometheus collectors in the gateway's own registry.

A private :class:`prometheus_client.CollectorRegistry` (not the process-global one) so that
several gateways in one test process never share counters. Every rejection is counted per
reason code (:mod:`protocol.reasons`); every batch that could not even be read is counted
per reason too. ``/metrics`` serves :meth:`GatewayMetrics.render`; ``/v1/stats`` serves
:meth:`GatewayMetrics.snapshot`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.http_guard import REJECTION_REASONS
from protocol import reasons
from protocol.reasons import DocumentReason, Reason

PREFIX = "edgeproof_gateway"
CONTENT_TYPE = CONTENT_TYPE_LATEST
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0)


class GatewayMetrics:
    """All counters and gauges of one gateway."""

    def __init__(self) -> None:
        """Create the collectors in a fresh registry, every reason label pre-set to 0."""
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.records_accepted = Counter(f"{PREFIX}_records_accepted", "Records appended to the log",
                                        registry=r)
        self.records_duplicate = Counter(f"{PREFIX}_records_duplicate",
                                         "Records already logged (answered with their leaf)",
                                         registry=r)
        self.rejections = Counter(f"{PREFIX}_rejections", "Records rejected, per reason code",
                                  ["reason"], registry=r)
        for code in sorted(reasons.GATEWAY_REASONS):
            self.rejections.labels(reason=code.value)
        self.batches = Counter(f"{PREFIX}_batches", "MQTT batches processed", registry=r)
        self.batches_unreadable = Counter(
            f"{PREFIX}_batches_unreadable",
            "Messages that were not a readable batch on a well-formed topic, per reason",
            ["reason"], registry=r)
        self.equivocations = Counter(f"{PREFIX}_equivocations",
                                     "Different records signed under an already used seq",
                                     registry=r)
        self.gaps_declared = Counter(f"{PREFIX}_gaps_declared",
                                     "Gap records accepted (sequence numbers a device dropped)",
                                     registry=r)
        self.unsynced_records = Counter(f"{PREFIX}_records_clock_unsynced",
                                        "Accepted records whose device clock was not synced",
                                        registry=r)
        self.receipts = Counter(f"{PREFIX}_receipts_published", "Receipts handed to MQTT",
                                registry=r)
        self.receipt_failures = Counter(f"{PREFIX}_receipt_publish_failures",
                                        "Receipts MQTT refused (the device will resend)",
                                        registry=r)
        self.http_rejections = Counter(
            f"{PREFIX}_http_rejections",
            "HTTP requests or connections refused before the API did any work, per reason",
            ["reason"], registry=r)
        for http_code in REJECTION_REASONS:
            self.http_rejections.labels(reason=http_code)
        self.checkpoints = Counter(f"{PREFIX}_checkpoints", "Checkpoints signed and stored",
                                   registry=r)
        self.log_size = Gauge(f"{PREFIX}_log_size", "Leaves in the Merkle log", registry=r)
        self.checkpoint_size = Gauge(f"{PREFIX}_checkpoint_size",
                                     "Tree size of the latest checkpoint", registry=r)
        self.checkpoint_seconds = Gauge(
            f"{PREFIX}_checkpoint_seconds", "How long the latest checkpoint took to sign, "
            "store and anchor (it covers the whole balances table; checkpoints by leaf count "
            "are spaced to take at most 5 % of the sequencer's time)", registry=r)
        self.ingest_lag = Histogram(f"{PREFIX}_ingest_lag_seconds",
                                    "Time from MQTT arrival to the batch's commit",
                                    buckets=_LAG_BUCKETS, registry=r)
        self.storage_errors = Counter(f"{PREFIX}_storage_errors",
                                      "Batches not processed because the store failed "
                                      "(left unacknowledged for redelivery)", registry=r)
        self.ingest_dropped = Counter(
            f"{PREFIX}_ingest_dropped",
            "MQTT messages dropped before verification (no receipt; the device resends), "
            "per reason and device (hex id, or 'unregistered')", ["reason", "device"],
            registry=r)
        self.ingest_queue_messages = Gauge(f"{PREFIX}_ingest_queue_messages",
                                           "Messages waiting in the ingest queue", registry=r)
        self.ingest_queue_bytes = Gauge(f"{PREFIX}_ingest_queue_bytes",
                                        "Bytes charged to messages in the ingest queue",
                                        registry=r)
        self.ingest_queue_peak_messages = Gauge(
            f"{PREFIX}_ingest_queue_peak_messages",
            "Most messages ever waiting in the ingest queue at once", registry=r)
        self.ingest_queue_peak_bytes = Gauge(
            f"{PREFIX}_ingest_queue_peak_bytes",
            "Most bytes ever charged to the ingest queue at once", registry=r)
        self.ingest_oldest_age = Gauge(f"{PREFIX}_ingest_oldest_age_seconds",
                                       "Age of the oldest message in the ingest queue",
                                       registry=r)
        self.devices_quarantined = Gauge(
            f"{PREFIX}_devices_quarantined",
            "Devices whose messages are dropped after too many bad signatures in a row",
            registry=r)
        self.quarantines = Counter(f"{PREFIX}_quarantines",
                                   "Times a device was put in quarantine for bad signatures",
                                   registry=r)
        self.documents_accepted = Counter(
            f"{PREFIX}_documents_accepted", "Signed documents logged, per type", ["type"],
            registry=r)
        self.documents_rejected = Counter(
            f"{PREFIX}_documents_rejected", "Signed documents refused, per reason code",
            ["reason"], registry=r)
        for doc_code in DocumentReason:
            self.documents_rejected.labels(reason=doc_code.value)
        self.policy_deliveries = Counter(
            f"{PREFIX}_policy_deliveries", "Policy messages (consents, revocations) handed to "
            "MQTT, per kind (push, sync)", ["kind"], registry=r)
        self.policy_syncs_dropped = Counter(
            f"{PREFIX}_policy_syncs_dropped", "Policy-sync requests not answered, per reason",
            ["reason"], registry=r)
        self.evidence_skipped = Counter(
            f"{PREFIX}_equivocation_evidence_skipped",
            "Equivocations counted but not stored (the device's evidence is full)",
            registry=r)
        # Shared store (gateway.cluster): several processes, one elected sequencer.
        self.sequencer_leading = Gauge(f"{PREFIX}_sequencer_leading",
                                       "1 if this process sequences the log, else 0",
                                       registry=r)
        self.sequencer_terms = Counter(f"{PREFIX}_sequencer_terms",
                                       "Times this process took over as the sequencer",
                                       registry=r)
        self.batches_handed_over = Counter(
            f"{PREFIX}_batches_handed_over",
            "Verified batches committed to the sequencer's queue in the database", registry=r)

    def reject(self, reason: Reason, count: int = 1) -> None:
        """Count rejected records."""
        self.rejections.labels(reason=reason.value).inc(count)

    def http_rejected(self, reason: str) -> None:
        """Count an HTTP request or connection refused (gateway.http_guard reasons)."""
        self.http_rejections.labels(reason=reason).inc()

    def render(self) -> bytes:
        """Return the Prometheus text exposition of every collector."""
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, object]:
        """Return the counters as plain JSON-able values (for /v1/stats).

        One pass over the registry: ``get_sample_value`` walks every collector for each
        value, and this runs every second on the sequencer's thread (gateway.history).
        """
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                samples[sample.name, frozenset(sample.labels.items())] = sample.value

        def total(name: str, **labels: str) -> int:
            return int(samples.get((f"{PREFIX}_{name}_total", frozenset(labels.items())), 0))

        names = ("records_accepted", "records_duplicate", "batches", "equivocations",
                 "gaps_declared", "records_clock_unsynced", "receipts_published",
                 "receipt_publish_failures", "checkpoints", "storage_errors")
        snap: dict[str, object] = {name: total(name) for name in names}
        snap["rejections"] = {code.value: total("rejections", reason=code.value)
                              for code in sorted(reasons.GATEWAY_REASONS)}
        unreadable: dict[str, int] = {}
        dropped: dict[str, dict[str, int]] = {}
        for (name, labels), value in samples.items():
            if name == f"{PREFIX}_batches_unreadable_total":
                unreadable[dict(labels)["reason"]] = int(value)
            elif name == f"{PREFIX}_ingest_dropped_total":
                label = dict(labels)
                dropped.setdefault(label["reason"], {})[label["device"]] = int(value)
        snap["batches_unreadable"] = unreadable
        snap["ingest_dropped"] = dropped
        snap["ingest_queue"] = {
            name: int(samples.get((f"{PREFIX}_ingest_queue_{name}", frozenset()), 0))
            for name in ("messages", "bytes", "peak_messages", "peak_bytes")}
        snap["quarantines"] = total("quarantines")
        snap["equivocation_evidence_skipped"] = total("equivocation_evidence_skipped")
        snap["documents_rejected"] = {code.value: total("documents_rejected", reason=code.value)
                                      for code in DocumentReason}
        return snap
