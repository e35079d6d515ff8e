"""Turning the usage meter's claims into signed usage records, exactly once.

The meter (``agent.credits.UsageMeter``) hands out a claim durably before the record
exists; this module puts the record in the outbox, commits it, and only then marks the
claim emitted. After a crash between the two, the claim is still pending at the next
start: if the outbox already holds a usage record for it (same boot, start and end), the
claim is just marked emitted; otherwise the record is written again. Either way each
interval is emitted once.
"""

from __future__ import annotations

import logging

from agent.credits import UsageMeter
from agent.outbox import Outbox
from agent.records import RecordWriter
from protocol.errors import MalformedRecord
from protocol.record import USAGE_STREAM, Usage
from protocol.signed import parse_signed_record

log = logging.getLogger(__name__)


class UsageReporter:
    """Emits the meter's claims as usage records."""

    def __init__(self, meter: UsageMeter, writer: RecordWriter, outbox: Outbox) -> None:
        self.meter = meter
        self._writer = writer
        self._outbox = outbox
        self.refused = 0

    def resolve_pending(self) -> int:
        """Settle claims left pending by a crash; return how many were written again."""
        stored = self._stored_usage()
        written = 0
        for claim in self.meter.pending_claims():
            u = claim.usage
            if (claim.boot, u.start_mono_ms, u.end_mono_ms) in stored:
                self.meter.commit_emitted(u, claim.boot)
                continue
            if self.emit(u, claim.boot):
                written += 1
        return written

    def report(self, now_mono_ms: int) -> bool:
        """Claim the usage so far and emit it; return whether a record was written."""
        usage = self.meter.take_usage(now_mono_ms)
        return usage is not None and self.emit(usage, self.meter.boot)

    def emit(self, usage: Usage, boot: int) -> bool:
        """Write, commit, then mark emitted. Returns False if the outbox refused it.

        Raises StorageError if the outbox fails (the claim stays pending and is retried).
        """
        seq = self._writer.write_usage(usage, boot)
        if seq is None:
            self.refused += 1
            return False
        self._outbox.commit()
        self.meter.commit_emitted(usage, boot)
        log.info("usage record %d: %d ms on in [%d, %d] (boot %d), %d micro-credits", seq,
                 usage.usage_ms, usage.start_mono_ms, usage.end_mono_ms, boot,
                 usage.credit_micro)
        return True

    def _stored_usage(self) -> set[tuple[int, int, int]]:
        found = set()
        for _seq, raw in self._outbox.records_of_stream(USAGE_STREAM):
            try:
                _msg, record = parse_signed_record(raw)
            except MalformedRecord:
                continue
            if isinstance(record.body, Usage):
                body = record.body
                found.add((record.boot, body.start_mono_ms, body.end_mono_ms))
        return found
