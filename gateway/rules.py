"""Stateful verification: the rules that need the registry and the log.

:func:`decide` runs inside the sequencer's write transaction, for one record that passed
the stateless checks of :mod:`gateway.verify`, and returns a :class:`Decision`. Rules, in
order (the first that fails names the reason; docs/GATEWAY.md has the table):

1. the signer (COSE kid) is a registered device (``unknown_device``), not revoked
   (``revoked_device``), and the device named by the topic (``wrong_topic``);
2. the same bytes already logged under (device, seq): ``duplicate`` with the original
   leaf index, no further checks (they passed when it was logged);
3. the signature verifies under the device's key for that sequence number, which is the
   enrolled key or the key announced by the last accepted rotation before it
   (``bad_signature``);
4. another record already logged under (device, seq): ``equivocation``, the device
   flagged, and the evidence kept for the first ``Context.max_evidence`` of the device
   (the sequencer counts every one and logs them once per device per interval);
5. chain (``chain_mismatch``): seq 0 has prev = 32 zero bytes; if seq-1 is logged, prev is
   its hash; if seq+1 is logged, its prev is this record's hash;
6. time: a synced wall clock more than ``max_future_skew`` ahead of the gateway's clock is
   ``future_timestamp``; an unsynced clock is accepted and flagged on the leaf;
7. body rules: usage (``rate_mismatch``, ``usage_future``, ``usage_too_long``,
   ``usage_overlap``), key rotation (``bad_rotation``); gaps are recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from gateway.store import (
    FLAG_CLOCK_UNSYNCED,
    MAX_STORED_INT,
    STATUS_REVOKED,
    Device,
    GapEntry,
    KeyEntry,
    LoggedLink,
    LogTransaction,
    NewLeaf,
    UsageEntry,
)
from gateway.verify import ParsedRecord, PreparedRecord
from protocol import reasons
from protocol.reasons import Reason
from protocol.receipt import Status
from protocol.record import (
    GENESIS_PREV,
    Gap,
    KeyRotation,
    Usage,
    credit_micro,
)

# The most keys one device may hold over its life (its enrolment key and 63 rotations): a
# rotation past it is ``bad_rotation``, and the device is enrolled again with a new key.
MAX_DEVICE_KEYS = 64


class Decision(NamedTuple):
    """What happened to one record: the receipt's status, with its leaf index or reason.

    A NamedTuple rather than a frozen dataclass: one per record on the sequencer's thread.
    """

    kind: Status
    leaf_index: int | None = None
    reason: Reason | None = None
    unsynced: bool = False
    gap: bool = False
    evidence_kept: bool = True  # for an equivocation: False once the device's evidence is full

    @classmethod
    def rejected(cls, reason: Reason) -> Decision:
        return cls(Status.REJECTED, reason=reason)


@dataclass(frozen=True)
class Context:
    """Per-batch facts the rules need besides the store."""

    topic_device: bytes
    now_ms: int  # the gateway's wall clock
    max_future_skew_ms: int
    received_ms: int
    max_evidence: int = 16  # equivocation records kept per device; later ones only counted


class BatchView:
    """A group commit's cached view of the registry and of its devices' chain neighbours.

    Built from every record of the group's batches; read once per device inside the
    transaction (neighbours for the range of seqs the group holds), then kept current as
    the batches append in order, so a group of n records costs a few queries per device
    rather than 3n.
    """

    def __init__(self, tx: LogTransaction, items: list[PreparedRecord]) -> None:
        self.tx = tx
        self._devices: dict[bytes, Device | None] = {}
        self._links: dict[bytes, dict[int, LoggedLink]] = {}
        # Each device's seqs in the group as runs [low, high]: a batch is one run, and so
        # are batches that follow each other; a batch resent from long ago is a run of its
        # own, so its lookup does not read every logged record in between.
        self._runs: dict[bytes, list[list[int]]] = {}
        runs = self._runs
        for item in items:
            record = item.record
            if record is not None and item.reject is None:
                seq, kid = record.seq, item.signer  # signer: PreparedRecord.kid, unchecked
                own = runs.get(kid)
                if own is None:
                    runs[kid] = [[seq, seq]]
                    continue
                last = own[-1]
                if last[0] - 1 <= seq <= last[1] + 1:
                    last[0], last[1] = min(last[0], seq), max(last[1], seq)
                else:
                    own.append([seq, seq])

    def device(self, device_id: bytes) -> Device | None:
        if device_id not in self._devices:
            self._devices[device_id] = self.tx.device(device_id)
        return self._devices[device_id]

    def refresh(self, device_id: bytes) -> None:
        """Forget the cached device (after a rotation or credit changed it)."""
        self._devices.pop(device_id, None)

    def links(self, device_id: bytes) -> dict[int, LoggedLink]:
        """The logged records at the group's seqs of this device and one either side."""
        found = self._links.get(device_id)
        if found is None:
            found = self._links[device_id] = {}
            for low, high in _merged(self._runs[device_id]):
                found.update(self.tx.links(device_id, low - 1, high + 1))
        return found


def _merged(runs: list[list[int]]) -> list[tuple[int, int]]:
    """``runs`` sorted, those whose lookups ``[low - 1, high + 1]`` would overlap joined."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(runs):
        if merged and low - 1 <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def decide(view: BatchView, item: PreparedRecord, ctx: Context) -> Decision:
    """Apply the stateful rules to one record and append it if every rule passes."""
    if item.reject is not None:
        return Decision.rejected(item.reject)
    record = item.record
    assert record is not None
    kid = item.signer  # item.kid without its check: the record is there (above)
    device = view.device(kid)
    refused = _check_identity(device, kid, ctx)
    if refused:
        return Decision.rejected(refused)
    assert device is not None
    near = view.links(device.device_id)
    logged = near.get(record.seq)
    if logged is not None and logged.record_hash == item.hash:
        return Decision(Status.DUPLICATE, leaf_index=logged.index)
    if not item.signature_valid(device.key_for_seq(record.seq)):
        return Decision.rejected(reasons.BAD_SIGNATURE)
    if logged is not None:
        kept = view.tx.equivocation_evidence(device.device_id) < ctx.max_evidence
        if kept:
            view.tx.add_equivocation(device.device_id, record.seq, item.raw, ctx.received_ms)
            view.refresh(device.device_id)
        return Decision(Status.REJECTED, reason=reasons.EQUIVOCATION, evidence_kept=kept)
    refused = _check_chain(record, item.hash, near) or _check_time(record, ctx)
    refused = refused or _check_body(view.tx, device, record)
    if refused:
        return Decision.rejected(refused)
    decision = _append(view.tx, device, item, ctx)
    near[record.seq] = LoggedLink(decision.leaf_index or 0, item.hash, record.prev)
    body = record.body
    if body is not None and isinstance(body, Usage | KeyRotation):
        view.refresh(device.device_id)  # usage credit, a new key
    return decision


def _check_identity(device: Device | None, kid: bytes, ctx: Context) -> Reason | None:
    if device is None:
        return reasons.UNKNOWN_DEVICE
    if device.status is STATUS_REVOKED:
        return reasons.REVOKED_DEVICE
    if kid != ctx.topic_device:
        return reasons.WRONG_TOPIC
    return None


def _check_chain(record: ParsedRecord, own_hash: bytes,
                 near: dict[int, LoggedLink]) -> Reason | None:
    if record.seq == 0 and record.prev != GENESIS_PREV:
        return reasons.CHAIN_MISMATCH
    before, after = near.get(record.seq - 1), near.get(record.seq + 1)
    if before is not None and before.record_hash != record.prev:
        return reasons.CHAIN_MISMATCH
    if after is not None and after.prev != own_hash:
        return reasons.CHAIN_MISMATCH
    return None


def _check_time(record: ParsedRecord, ctx: Context) -> Reason | None:
    if record.clock_synced and record.wall_ms > ctx.now_ms + ctx.max_future_skew_ms:
        return reasons.FUTURE_TIMESTAMP
    return None


def _check_body(tx: LogTransaction, device: Device, record: ParsedRecord) -> Reason | None:
    body = record.body
    if body is None:  # a value or sealed value parsed in a worker (verify.Header)
        return None
    if isinstance(body, Usage):
        return _check_usage(tx, device, record, body)
    if isinstance(body, KeyRotation):
        stale = device.keys[-1].from_seq > record.seq
        # Every message of a device reads its whole key history (admission, dispatch, the
        # rules): a device rotating without end would make its own messages, and so the
        # threads every device shares, ever more costly.
        spent = len(device.keys) >= MAX_DEVICE_KEYS
        reused = body.new_public_key == device.current_key or tx.key_in_use(body.new_public_key)
        return reasons.BAD_ROTATION if stale or spent or reused else None
    return None


def _check_usage(tx: LogTransaction, device: Device, record: ParsedRecord,
                 usage: Usage) -> Reason | None:
    if usage.rate_micro_per_hour != device.rate_micro_per_hour:
        return reasons.RATE_MISMATCH
    if usage.end_mono_ms > record.mono_ms:
        return reasons.USAGE_FUTURE
    if usage.usage_ms > usage.end_mono_ms - usage.start_mono_ms:
        return reasons.USAGE_TOO_LONG
    credit = credit_micro(usage.usage_ms, device.rate_micro_per_hour)
    if device.settled_micro + credit > MAX_STORED_INT:  # would overflow the store's integers
        return reasons.USAGE_TOO_LONG
    # ... and so would the owner's balance, a sum over its devices (SQLite's SUM raised
    # "integer overflow" at every checkpoint from then on: the gateway could not go on).
    if credit and tx.owner_settled_micro(device.owner) + credit > MAX_STORED_INT:
        return reasons.USAGE_TOO_LONG
    if tx.usage_overlaps(device.device_id, record.boot, usage.start_mono_ms, usage.end_mono_ms):
        return reasons.USAGE_OVERLAP
    return None


def _append(tx: LogTransaction, device: Device, item: PreparedRecord, ctx: Context) -> Decision:
    record = item.record
    assert record is not None
    flags = 0 if record.clock_synced else FLAG_CLOCK_UNSYNCED
    index = tx.append(NewLeaf(device.device_id, record.seq, item.hash, record.prev, item.raw,
                              record.stream, ctx.received_ms, flags))
    body = record.body
    if body is None:  # a value or sealed value parsed in a worker (verify.Header)
        return Decision(Status.ACCEPTED, index, None, bool(flags))
    if isinstance(body, Usage):
        credit = credit_micro(body.usage_ms, device.rate_micro_per_hour)
        tx.add_usage(UsageEntry(device.device_id, record.seq, record.boot, body.start_mono_ms,
                                body.end_mono_ms, body.usage_ms, credit))
    elif isinstance(body, Gap):
        tx.add_gap(GapEntry(device.device_id, record.seq, body.first_seq, body.last_seq,
                            body.reason))
    elif isinstance(body, KeyRotation):
        # The new key signs every record after this one (docs/GATEWAY.md, "Key rotation").
        tx.add_key(device.device_id, KeyEntry(record.seq + 1, body.new_public_key))
    return Decision(Status.ACCEPTED, leaf_index=index, unsynced=bool(flags),
                    gap=isinstance(body, Gap))
