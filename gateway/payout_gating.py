"""The log's consents, revocations and consented usage records as gating events (§19.4).

The payout worker reads them from the store below an epoch's checkpoint size and gates them
with the funding it read from the chain (:func:`rewards.gating.gate`); the verifier reads
the same leaves through the API (verifier/gating.py). Every leaf here was verified when it
was logged, so it is only parsed. Memory: one event per consent, revocation and usage record
of a consented device below the size (PROTOCOL.md §19.4; a later version can keep the
running state between epochs instead).
"""

from __future__ import annotations

from gateway.payout_lapse import lapse_events
from gateway.store import LogStore
from protocol.documents import parse_document
from protocol.signed import parse_signed_record
from rewards.gating import ConsentLeaf, Event, consent_event, revocation_event, usage_event
from rewards.quality import QualityJudge, VerdictLeaf, verdict_events

PAGE = 1000


def quality_judge(store: LogStore, size: int, trusted: tuple[bytes, ...]) -> QualityJudge:
    """The trusted validators' verdicts logged below ``size`` (§19.4 rule 5)."""
    verdicts: list[VerdictLeaf] = []
    after = -1
    while trusted:
        page = store.documents("quality", after, PAGE)
        for stored in page:
            if stored.index < size:
                verdicts.extend(verdict_events(parse_document(stored.raw), stored.index))
        if len(page) < PAGE:
            break
        after = page[-1].index
    return QualityJudge(verdicts, trusted)


def log_events(store: LogStore, size: int) -> list[Event]:
    """Consents, revocations, lapse notices and the usage records of consented devices
    below ``size``."""
    events: list[Event] = []
    for doc_type in ("consent", "revocation"):
        after = -1
        while True:
            page = store.documents(doc_type, after, PAGE)
            for stored in page:
                if stored.index < size:
                    doc = parse_document(stored.raw)
                    events.append(consent_event(doc, stored.index) if doc_type == "consent"
                                  else revocation_event(doc, stored.index))
            if len(page) < PAGE:
                break
            after = page[-1].index
    events.extend(lapse_events(store, size))  # a lapse notice's leaf acts as a revocation's
    devices = sorted({d for e in events if isinstance(e, ConsentLeaf) for d in e.devices})
    for device in devices:
        events.extend(_usage(store, device, size))
    return events


def _usage(store: LogStore, device: bytes, size: int) -> list[Event]:
    found: list[Event] = []
    after_seq = -1
    while True:
        page = store.device_records(device, after_seq, PAGE)
        for leaf in page:
            if leaf.index < size and leaf.stream == "usage":
                event = usage_event(parse_signed_record(leaf.raw)[1], device, leaf.index)
                if event is not None:
                    found.append(event)
        if len(page) < PAGE:
            return found
        after_seq = page[-1].seq
