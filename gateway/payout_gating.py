"""Consent gating (PROTOCOL.md §19.4) for the payout worker, one new part of the log at a time.

Each consent-gated epoch reads only the leaves logged since the previous one: the consents,
revocations and lapse notices (a notice's leaf acts as a revocation's), the trusted
validators' quality attestations, and the usage records in that index range
(``LogStore.stream_leaves``), and feeds them to a :class:`rewards.gating.GatingState` that
carries the rule's running state (consents in force, per owner and per request totals, the
shares a request's funding has not covered yet). The cost of an epoch is bounded by the
leaves logged since the last one, not by the log's history. Every leaf here was verified
when it was logged, so it is only parsed. The verifier recomputes the same from scratch
through the API (verifier/gating.py).

The state lives in memory: a restarted gateway builds it again from the whole log once (its
first epoch), and so does a worker whose state cannot go on (funding read again after a
reorganisation came out lower than what was already paid).
"""

from __future__ import annotations

from gateway.store import LogStore
from protocol.contract import Lapse
from protocol.documents import parse_document
from protocol.signed import parse_signed_record
from rewards.gating import (
    Event,
    Gated,
    GatingState,
    RevocationLeaf,
    consent_event,
    revocation_event,
    usage_event,
)
from rewards.quality import QualityJudge, verdict_events

PAGE = 1000


class IncrementalGating:
    """The gating rule's state up to a log size; :meth:`advance` feeds the leaves since."""

    def __init__(self, trusted: tuple[bytes, ...]) -> None:
        self.trusted = trusted
        self.state = GatingState()
        self.judge = QualityJudge((), trusted)
        self.leaves_read = 0  # usage records and documents read, all epochs (for tests)
        self._size = 0

    @property
    def size(self) -> int:
        """Every leaf below this size has been fed."""
        return self._size

    def advance(self, store: LogStore, size: int) -> None:
        """Feed the leaves in ``[self.size, size)``. Raises StorageError (then the state is
        unusable: start a new one)."""
        start = self._size
        if size <= start:
            return
        events: list[Event] = []
        for doc_type in ("consent", "revocation", "lapse", "quality"):
            if doc_type == "quality" and not self.trusted:
                continue
            after = start - 1
            while True:
                page = store.documents(doc_type, after, PAGE)
                for stored in page:
                    if stored.index >= size:
                        break
                    self.leaves_read += 1
                    doc = parse_document(stored.raw)
                    if doc_type == "consent":
                        events.append(consent_event(doc, stored.index))
                    elif doc_type == "revocation":
                        events.append(revocation_event(doc, stored.index))
                    elif doc_type == "lapse":
                        assert isinstance(doc.body, Lapse)
                        events.append(RevocationLeaf(stored.index, doc.body.consent_id))
                    else:
                        self.judge.add(verdict_events(doc, stored.index))
                if len(page) < PAGE or page[-1].index >= size:
                    break
                after = page[-1].index
        frm = start
        while True:
            leaves = store.stream_leaves("usage", frm, size, PAGE)
            for leaf in leaves:
                self.leaves_read += 1
                event = usage_event(parse_signed_record(leaf.raw)[1], leaf.device_id,
                                    leaf.index)
                if event is not None:
                    events.append(event)
            if len(leaves) < PAGE:
                break
            frm = leaves[-1].index + 1
        self.state.feed(events, self.judge.withheld)
        self._size = size

    def settle(self, funded: dict[bytes, int]) -> Gated:
        """What the leaves fed so far pay with ``funded`` (request id -> micro, cumulative);
        ValueError if funding shrank below what was paid."""
        return self.state.settle(funded)


def gate_log(store: LogStore, size: int, funded: dict[bytes, int],
             trusted: tuple[bytes, ...] = ()) -> Gated:
    """The rule on the whole log below ``size``, from scratch (tests, the bench)."""
    gating = IncrementalGating(trusted)
    gating.advance(store, size)
    return gating.settle(funded)
