"""Consent gating: which settled credit a company's funding pays, from the log and the chain.

The rule (docs/PROTOCOL.md §19.4), integers only, read in log order (leaf index):

- A consent is *in force* from its own leaf until the leaf of a revocation of it. A usage
  record at leaf ``u`` of device ``d``, made at ``wall_ms`` (its own signed time), earning
  ``k`` micro-credits, counts for every consent in force at ``u`` that names ``d`` and whose
  period ``[not_before_ms, not_after_ms)`` holds ``wall_ms``; the data a consent covers are
  its devices in its period. Consents are counted per REQUEST (two consents of one owner to
  one request count once); with ``m`` requests ``k`` is split into ``k // m`` each, the
  ``k % m`` remaining micro-credits one each to the first requests by request id. A record
  no consent covers earns a *locked* ``k``: settled, never paid (and never later unlocked by
  a consent logged after it).
- A request's shares are paid in log order while its funding lasts: a share ``s`` with
  ``e`` earned before it in that request is paid ``min(s, max(0, funded - e))``. The first
  share that does not fit marks the request *short* (its consents lapse, §19.5); everything
  after it is locked. ``funded`` is the sum of the distributor's ``Funded`` events whose
  ``terms`` is the request id, in base units, divided by the rate (floor).
- An owner's cumulative amount is the sum of what was paid for its devices' records.

Why it is a valid cumulative distribution: the log only grows and funding only grows, and
every paid part above is non-decreasing in both, so no owner's amount ever decreases (the
distributor pays each claim the difference to what was claimed: nothing is paid twice); a
request's paid total never exceeds its funding; each record's credit is split into parts
that add up to it, each part paid at most once.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from protocol import cbor
from protocol.contract import Consent, Revocation
from protocol.documents import Document
from protocol.errors import MalformedRecord
from protocol.keys import signer_id
from protocol.record import Record, Usage


@dataclass(frozen=True)
class UsageLeaf:
    """A logged usage record and the credit the gateway settled for it."""

    leaf: int
    device: bytes
    wall_ms: int
    credit_micro: int


@dataclass(frozen=True)
class ConsentLeaf:
    """A logged consent: its signer (the owner) and the terms that gate credit."""

    leaf: int
    consent: bytes  # document id
    owner: bytes  # owner id (signer id of the owner key)
    request: bytes  # the request's document id: the funding terms
    devices: frozenset[bytes]
    not_before_ms: int
    not_after_ms: int


@dataclass(frozen=True)
class RevocationLeaf:
    """A logged revocation (or, §19.5, lapse notice) of a consent."""

    leaf: int
    consent: bytes


Event = UsageLeaf | ConsentLeaf | RevocationLeaf


@dataclass
class Gated:
    """What an epoch pays: per owner, per request, and what stays locked (micro-credits)."""

    owners: dict[bytes, int] = field(default_factory=dict)  # owner id -> paid
    earned: dict[bytes, int] = field(default_factory=dict)  # request id -> earned
    paid: dict[bytes, int] = field(default_factory=dict)  # request id -> paid (<= funded)
    short_at: dict[bytes, int] = field(default_factory=dict)  # request -> first unfunded leaf
    settled_micro: int = 0
    locked_micro: int = 0
    withheld_micro: int = 0  # credit of records a trusted quality verdict withheld (rule 5)
    # The same per device (device id -> micro-credits), for owners' and demo views.
    device_settled: dict[bytes, int] = field(default_factory=dict)
    device_paid: dict[bytes, int] = field(default_factory=dict)
    device_withheld: dict[bytes, int] = field(default_factory=dict)

    @property
    def total_micro(self) -> int:
        return sum(self.owners.values())


def micro_of(totals: Mapping[bytes, int], rate: int) -> dict[bytes, int]:
    """Funding per terms (request id) in micro-credits from the sums of its Funded amounts
    in base units (:mod:`rewards.funding`): floor(sum / rate)."""
    return {terms: amount // rate for terms, amount in totals.items()}


def split(credit: int, requests: list[bytes]) -> list[tuple[bytes, int]]:
    """``credit`` split over ``requests`` (sorted, distinct): equal parts, the remainder one
    micro-credit each to the first."""
    share, rest = divmod(credit, len(requests))
    return [(r, share + (1 if i < rest else 0)) for i, r in enumerate(requests)]


def gate(events: Iterable[Event], funded: Mapping[bytes, int],
         withheld: Callable[[UsageLeaf], bool] = lambda _: False) -> Gated:
    """Apply the rule to ``events`` (any order: sorted by leaf here); raise ValueError if two
    events claim one leaf. ``withheld(usage)``: the record earns nothing (§19.4 rule 5, see
    :class:`rewards.quality.QualityJudge`); its credit is locked and spends no funding."""
    state = GatingState()
    state.feed(events, withheld)
    return state.settle(funded)


@dataclass
class _Share:
    leaf: int
    owner: bytes
    device: bytes
    left: int  # micro-credits of the share not paid yet


@dataclass
class _Request:
    earned: int = 0
    paid: int = 0
    waiting: deque[_Share] = field(default_factory=deque)  # not paid in full, in log order


class GatingState:
    """The rule run incrementally: feed the leaves of each epoch's new part of the log, then
    settle with that epoch's funding; the result equals :func:`gate` of all leaves fed.

    Why this is exact: a request pays its shares in log order while its funding lasts, so
    with funding that only grows the shares paid in full stay paid, and only the shares not
    paid in full yet (``waiting``, from the first short one on) can change. Memory: the
    consents in force, one entry per owner, per request and per device, and the waiting shares of
    requests whose funding does not cover what they earned (their consents lapse, §19.4);
    not the history of records. ``settle`` with less funding for a request than it already
    paid raises ValueError (funding never shrinks on chain; a caller that re-read the chain
    after a reorganisation starts a new state)."""

    def __init__(self) -> None:
        self.size = 0  # every leaf below it has been fed
        self.in_force: dict[bytes, ConsentLeaf] = {}
        self._naming: dict[bytes, dict[bytes, ConsentLeaf]] = {}  # device -> its in force
        self.ended: set[bytes] = set()  # consents revoked (or lapsed)
        self.owners: dict[bytes, int] = {}
        self.requests: dict[bytes, _Request] = {}
        self.settled_micro = 0
        self.withheld_micro = 0
        # Per device (one entry per device with usage): settled, withheld, paid.
        self.device_settled: dict[bytes, int] = {}
        self.device_withheld: dict[bytes, int] = {}
        self.device_paid: dict[bytes, int] = {}

    def feed(self, events: Iterable[Event],
             withheld: Callable[[UsageLeaf], bool] = lambda _: False) -> None:
        """Apply the consents, revocations and usage records of ``events`` (leaves at or
        above :attr:`size`; any order) in leaf order. ValueError: two events at one leaf, or
        a leaf below :attr:`size`."""
        ordered = sorted(events, key=lambda e: e.leaf)
        for before, after in itertools.pairwise(ordered):
            if before.leaf == after.leaf:
                raise ValueError(f"two events at leaf {after.leaf}")
        if ordered and ordered[0].leaf < self.size:
            raise ValueError(f"leaf {ordered[0].leaf} was fed before (state at {self.size})")
        for event in ordered:
            if isinstance(event, ConsentLeaf):
                self._end(event.consent)  # the same consent logged again: the later leaf
                self.in_force[event.consent] = event
                for device in event.devices:
                    self._naming.setdefault(device, {})[event.consent] = event
            elif isinstance(event, RevocationLeaf):
                self._end(event.consent)
                self.ended.add(event.consent)
            elif withheld(event):
                self.settled_micro += event.credit_micro
                self.withheld_micro += event.credit_micro
                _add(self.device_settled, event.device, event.credit_micro)
                _add(self.device_withheld, event.device, event.credit_micro)
            else:
                self._count(event)
            self.size = event.leaf + 1

    def _end(self, consent_id: bytes) -> None:
        ended = self.in_force.pop(consent_id, None)
        for device in ended.devices if ended is not None else ():
            naming = self._naming[device]
            del naming[consent_id]
            if not naming:
                del self._naming[device]

    def _count(self, usage: UsageLeaf) -> None:
        self.settled_micro += usage.credit_micro
        _add(self.device_settled, usage.device, usage.credit_micro)
        covering: dict[bytes, bytes] = {}  # request -> owner
        for consent in self._naming.get(usage.device, {}).values():
            if consent.not_before_ms <= usage.wall_ms < consent.not_after_ms:
                covering[consent.request] = consent.owner
        if not covering or usage.credit_micro == 0:
            return
        for request, share in split(usage.credit_micro, sorted(covering)):
            state = self.requests.setdefault(request, _Request())
            state.earned += share
            if share:
                state.waiting.append(_Share(usage.leaf, covering[request], usage.device,
                                            share))

    def settle(self, funded: Mapping[bytes, int]) -> Gated:
        """Pay the waiting shares of each request out of ``funded`` (request id -> micro,
        cumulative); return what the leaves fed so far pay."""
        out = Gated(settled_micro=self.settled_micro, withheld_micro=self.withheld_micro)
        for request, state in self.requests.items():
            budget = funded.get(request, 0)
            if budget < state.paid:
                raise ValueError(f"request {request.hex()[:16]}… funded {budget}, "
                                 f"already paid {state.paid}")
            while state.waiting and state.paid < budget:
                share = state.waiting[0]
                pay = min(share.left, budget - state.paid)
                share.left -= pay
                state.paid += pay
                self.owners[share.owner] = self.owners.get(share.owner, 0) + pay
                _add(self.device_paid, share.device, pay)
                if share.left == 0:
                    state.waiting.popleft()
            out.earned[request] = state.earned
            if state.paid:
                out.paid[request] = state.paid
            if state.waiting:
                out.short_at[request] = state.waiting[0].leaf
        out.owners = {owner: paid for owner, paid in self.owners.items() if paid}
        out.locked_micro = out.settled_micro - out.total_micro
        out.device_settled = dict(self.device_settled)
        out.device_withheld = dict(self.device_withheld)
        out.device_paid = {device: paid for device, paid in self.device_paid.items() if paid}
        return out


def _add(totals: dict[bytes, int], key: bytes, amount: int) -> None:
    totals[key] = totals.get(key, 0) + amount


# --- from logged leaves to events (the gateway and the verifier read the same way) ----------


def consent_event(doc: Document, leaf: int) -> ConsentLeaf:
    """The event of a verified consent document logged at ``leaf``."""
    body = doc.body
    assert isinstance(body, Consent)
    return ConsentLeaf(leaf, doc.id, signer_id(doc.signer), body.request,
                       frozenset(body.devices), body.terms.not_before_ms,
                       body.terms.not_after_ms)


def revocation_event(doc: Document, leaf: int) -> RevocationLeaf:
    """The event of a verified revocation document logged at ``leaf``."""
    body = doc.body
    assert isinstance(body, Revocation)
    return RevocationLeaf(leaf, body.consent)


def usage_event(record: Record, device: bytes, leaf: int) -> UsageLeaf | None:
    """The event of a logged record, if it is a usage record (None otherwise)."""
    if not isinstance(record.body, Usage):
        return None
    return UsageLeaf(leaf, device, record.wall_ms, record.body.credit_micro)


# --- the state as a snapshot (gateway/payout_gating.py persists it with each epoch) ---------

MAX_ID = 64  # bytes in an id of a snapshot (device 16, owner 16, request and consent 32)


def snapshot_uint(value: object, what: str) -> int:
    """An unsigned 64-bit integer of a decoded snapshot; MalformedRecord bad_snapshot."""
    if type(value) is not int or not 0 <= value < 2**64:
        raise MalformedRecord("bad_snapshot", f"{what} must be an unsigned integer")
    return value


def snapshot_id(value: object, what: str) -> bytes:
    """An id (1..MAX_ID bytes) of a decoded snapshot; MalformedRecord bad_snapshot."""
    if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_ID:
        raise MalformedRecord("bad_snapshot", f"{what} must be an id of 1..{MAX_ID} bytes")
    return value


def snapshot_list(value: object, what: str, length: int | None = None) -> list[cbor.Value]:
    """An array (of ``length`` items if given) of a decoded snapshot."""
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise MalformedRecord("bad_snapshot", f"{what} must be an array"
                              + ("" if length is None else f" of {length}"))
    return value


def snapshot_totals(value: object, what: str) -> dict[bytes, int]:
    """A map id -> unsigned integer of a decoded snapshot."""
    if not isinstance(value, dict):
        raise MalformedRecord("bad_snapshot", f"{what} must be a map")
    return {snapshot_id(k, what): snapshot_uint(v, what) for k, v in value.items()}


def _leaf_below(leaf: int, size: int, what: str) -> int:
    if leaf >= size:
        raise MalformedRecord("bad_snapshot", f"{what} at leaf {leaf}, not below {size}")
    return leaf


def dump_state(state: GatingState) -> cbor.Value:
    """``state`` as a deterministic CBOR value (:func:`load_state` reads it back): every map
    is sorted by the encoder, the consents in force and the waiting shares are arrays in the
    order the rule reads them (leaf order)."""
    consents: list[cbor.Value] = [
        [c.leaf, c.consent, c.owner, c.request, list(sorted(c.devices)), c.not_before_ms,
         c.not_after_ms] for c in sorted(state.in_force.values(), key=lambda c: c.leaf)]
    requests: dict[cbor.Value, cbor.Value] = {
        request: [r.earned, r.paid, [[s.leaf, s.owner, s.device, s.left] for s in r.waiting]]
        for request, r in state.requests.items()}
    totals = (state.owners, state.device_settled, state.device_withheld, state.device_paid)
    return [state.size, consents, list(sorted(state.ended)), requests, state.settled_micro,
            state.withheld_micro, *[_cbor_map(t) for t in totals]]


def _cbor_map(totals: Mapping[bytes, int]) -> cbor.Value:
    out: dict[cbor.Value, cbor.Value] = {}
    for key, amount in totals.items():
        out[key] = amount
    return out


def load_state(value: cbor.Value) -> GatingState:
    """The state :func:`dump_state` wrote; MalformedRecord bad_snapshot for anything else."""
    (size, consents, ended, requests, settled, withheld, owners, device_settled,
     device_withheld, device_paid) = snapshot_list(value, "gating state", 10)
    state = GatingState()
    state.size = snapshot_uint(size, "state size")
    last = -1
    for item in snapshot_list(consents, "consents in force"):
        leaf, consent, owner, request_id, devices, not_before, not_after = snapshot_list(
            item, "consent", 7)
        event = ConsentLeaf(
            _leaf_below(snapshot_uint(leaf, "consent leaf"), state.size, "consent"),
            snapshot_id(consent, "consent id"), snapshot_id(owner, "owner id"),
            snapshot_id(request_id, "request id"),
            frozenset(snapshot_id(d, "device id") for d in snapshot_list(devices, "devices")),
            snapshot_uint(not_before, "not_before_ms"), snapshot_uint(not_after, "not_after_ms"))
        if event.leaf <= last or event.consent in state.in_force:
            raise MalformedRecord("bad_snapshot", "consents in force out of leaf order")
        last = event.leaf
        state.in_force[event.consent] = event
        for device in event.devices:
            state._naming.setdefault(device, {})[event.consent] = event  # noqa: SLF001
    state.ended = {snapshot_id(c, "ended consent") for c in snapshot_list(ended, "ended")}
    if not isinstance(requests, dict):
        raise MalformedRecord("bad_snapshot", "requests must be a map")
    for request, item in requests.items():
        earned, paid, waiting = snapshot_list(item, "request", 3)
        shares: deque[_Share] = deque()
        for share in snapshot_list(waiting, "waiting shares"):
            at, by, of, left = snapshot_list(share, "share", 4)
            shares.append(_Share(_leaf_below(snapshot_uint(at, "share leaf"), state.size,
                                             "share"),
                                 snapshot_id(by, "owner id"), snapshot_id(of, "device"),
                                 snapshot_uint(left, "share left")))
        state.requests[snapshot_id(request, "request id")] = _Request(
            snapshot_uint(earned, "earned"), snapshot_uint(paid, "paid"), shares)
    state.settled_micro = snapshot_uint(settled, "settled")
    state.withheld_micro = snapshot_uint(withheld, "withheld")
    state.owners = snapshot_totals(owners, "owners")
    state.device_settled = snapshot_totals(device_settled, "device settled")
    state.device_withheld = snapshot_totals(device_withheld, "device withheld")
    state.device_paid = snapshot_totals(device_paid, "device paid")
    return state
