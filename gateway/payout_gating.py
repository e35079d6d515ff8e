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

The state is also persisted: each epoch the worker records is stored in the payout book
with a snapshot of the state it was computed from (:meth:`IncrementalGating.snapshot`, in
the same transaction, so a crash never leaves one without the other). A started worker (a
restarted gateway, a new sequencer of a shared log) loads it (:func:`restore`) and reads
only the leaves logged after it. A snapshot is never trusted blindly: one that does not
decode, or was built for other settings (:class:`GatingSettings`: gated or not, trusted
validators, distributor and chain) or from another log (its Merkle root at its size is
not the log's: the store was replaced) is ignored, counted with its reason, and the state
is built again from the whole log. So is a state that cannot go on (funding read again
after a reorganisation came out lower than what was already paid); its snapshot is dropped.

A snapshot is deterministic CBOR followed by its SHA-256 (32 bytes: a stored byte that
changed is caught even where the CBOR would still decode). The CBOR (``SNAPSHOT_VERSION``)
is a map: 0 version, 1 settings
``[gated, [trusted validators, sorted], distributor (20 bytes), chain id]``, 2 the log size
it covers, 3 the log's Merkle root at that size, 4 the gating state
(:func:`rewards.gating.dump_state`), 5 the trusted verdicts (:func:`rewards.quality.dump_judge`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gateway.store import LogStore
from protocol import cbor
from protocol.contract import Lapse
from protocol.documents import parse_document
from protocol.errors import MalformedRecord
from protocol.signed import parse_signed_record
from rewards.gating import (
    Event,
    Gated,
    GatingState,
    RevocationLeaf,
    consent_event,
    dump_state,
    load_state,
    revocation_event,
    usage_event,
)
from rewards.quality import QualityJudge, dump_judge, load_judge, verdict_events

PAGE = 1000
SNAPSHOT_VERSION = 1
# Caps on a stored snapshot: it grows with the consents in force, the owners, devices and
# requests, the unpaid shares of short requests and the trusted verdicts, not with the log.
SNAPSHOT_LIMITS = cbor.Limits(max_bytes=256 * 2**20, max_depth=6, max_items=2**24,
                              max_string=64)
# Why a stored snapshot was not used (counted: payout_gating_snapshots_ignored).
IGNORED_REASONS = ("malformed", "other_version", "other_mode", "other_validators",
                   "other_distributor", "other_log")


@dataclass(frozen=True)
class GatingSettings:
    """The settings a snapshot was built for: a state of other ones is not this worker's."""

    gated: bool
    trusted: tuple[bytes, ...]  # quality validators' signer ids
    distributor: bytes  # 20 bytes: whose funding the state paid out of
    chain_id: int

    def value(self) -> cbor.Value:
        return [self.gated, list(sorted(self.trusted)), self.distributor, self.chain_id]


class SnapshotIgnored(Exception):
    """A snapshot that decodes but is not for this worker; ``reason`` is counted."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


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

    def snapshot(self, settings: GatingSettings, store: LogStore) -> bytes:
        """The state as deterministic CBOR (module docstring), for ``settings``, with the
        log's root at :attr:`size`. Raises StorageError."""
        body = cbor.encode({0: SNAPSHOT_VERSION, 1: settings.value(), 2: self._size,
                            3: store.root(self._size), 4: dump_state(self.state),
                            5: dump_judge(self.judge)})
        return body + hashlib.sha256(body).digest()


def restore(raw: bytes, settings: GatingSettings, store: LogStore, *,
            at_most: int | None = None) -> IncrementalGating:
    """The state a snapshot holds, checked against ``settings`` and ``store``'s log (of
    which it covers at most ``at_most`` leaves: the latest checkpoint's size).

    Raises MalformedRecord (it does not decode: ``bad_version`` for another version),
    SnapshotIgnored (another mode, other validators, distributor or chain, another log),
    StorageError."""
    body, digest = raw[:-32], raw[-32:]
    if len(raw) < 32 or hashlib.sha256(body).digest() != digest:
        raise MalformedRecord("bad_snapshot", "its SHA-256 is not the one stored with it")
    value = cbor.decode(body, SNAPSHOT_LIMITS)
    if not isinstance(value, dict) or set(value) != {0, 1, 2, 3, 4, 5}:
        raise MalformedRecord("bad_snapshot", "a snapshot is a map of keys 0..5")
    cbor.require_version(value[0], SNAPSHOT_VERSION, "gating snapshot")
    stated = value[1]
    if not isinstance(stated, list) or len(stated) != 4 or not isinstance(stated[0], bool) \
            or not isinstance(stated[1], list):
        raise MalformedRecord("bad_snapshot", "settings must be [gated, validators, "
                              "distributor, chain id]")
    if stated[0] != settings.gated:
        raise SnapshotIgnored("other_mode", f"built with gated = {stated[0]}")
    if stated[1] != settings.value()[1]:  # type: ignore[index]
        raise SnapshotIgnored("other_validators", "built for other quality validators")
    if stated[2:] != [settings.distributor, settings.chain_id]:
        raise SnapshotIgnored("other_distributor", "built for another distributor or chain")
    size = value[2]
    if type(size) is not int or size < 0:
        raise MalformedRecord("bad_snapshot", "size must be an unsigned integer")
    if at_most is not None and size > at_most:
        raise SnapshotIgnored("other_log", f"it covers {size} leaves, the latest checkpoint "
                              f"{at_most}")
    if size > store.size() or value[3] != store.root(size):
        raise SnapshotIgnored("other_log", f"the log's root at size {size} is not the one "
                              "the snapshot was built from")
    state = load_state(value[4])
    if state.size > size:
        raise MalformedRecord("bad_snapshot", f"state at {state.size} beyond size {size}")
    gating = IncrementalGating(settings.trusted)
    gating.state, gating.judge = state, load_judge(value[5], settings.trusted, size)
    gating._size = size  # noqa: SLF001 - the state it restores is fed up to there
    return gating


def gate_log(store: LogStore, size: int, funded: dict[bytes, int],
             trusted: tuple[bytes, ...] = ()) -> Gated:
    """The rule on the whole log below ``size``, from scratch (tests, the bench)."""
    gating = IncrementalGating(trusted)
    gating.advance(store, size)
    return gating.settle(funded)
