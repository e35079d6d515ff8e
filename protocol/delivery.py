"""How the gateway hands logged consents and revocations to a device (PROTOCOL.md §17).

Two topics beside a device's records and receipts:

- ``edgeproof/v1/devices/<id>/policy``: gateway -> device, a :class:`PolicyDelivery`
  ``{1: 1, 2: [[leaf_index uint, document bstr], ...], 3: next_index uint, 4: complete bool}``:
  logged documents concerning the device, as the exact signed bytes the log holds, in log
  order, with their leaf index.
- ``edgeproof/v1/devices/<id>/policy-sync``: device -> gateway, a :class:`PolicySync`
  ``{1: 1, 2: from_index uint}``: "send me every document for me logged at an index at or
  above ``from_index``". A device sends it on every connect; the gateway answers with one or
  more deliveries, the last with ``complete`` true and ``next_index`` the log size the
  answer covers. The gateway also pushes each new document at once (``complete`` false).

The delivery itself is not signed: the device trusts each document only after verifying it
under the owner key it pinned (a document the owner did not sign is refused and counted as
``unsigned_policy``). The gateway can withhold a document; it cannot forge one, and the log
shows what it should have delivered.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import cbor
from protocol.batch import TOPIC_PREFIX, device_id_from_topic
from protocol.documents import MAX_DOCUMENT_BYTES
from protocol.errors import MalformedRecord

DELIVERY_VERSION = 1
POLICY_SUFFIX = "policy"
SYNC_SUFFIX = "policy-sync"
MAX_DELIVERY_BYTES = 64 * 1024
MAX_DELIVERY_DOCUMENTS = 64
MAX_SYNC_BYTES = 64
_UINT64_MAX = (1 << 64) - 1
_DELIVERY_LIMITS = cbor.Limits(max_bytes=MAX_DELIVERY_BYTES, max_depth=3,
                               max_items=MAX_DELIVERY_DOCUMENTS, max_string=MAX_DOCUMENT_BYTES)
_SYNC_LIMITS = cbor.Limits(max_bytes=MAX_SYNC_BYTES, max_depth=1, max_items=2, max_string=8)


def policy_topic(device_id: bytes) -> str:
    """The topic the gateway delivers a device's consents and revocations on."""
    return f"{TOPIC_PREFIX}{device_id.hex()}/{POLICY_SUFFIX}"


def sync_topic(device_id: bytes) -> str:
    """The topic a device asks the gateway for its documents on."""
    return f"{TOPIC_PREFIX}{device_id.hex()}/{SYNC_SUFFIX}"


def device_id_from_sync_topic(topic: str) -> bytes:
    """The device id of a policy-sync topic; MalformedRecord("bad_topic") otherwise."""
    return device_id_from_topic(topic, SYNC_SUFFIX)


def _uint(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _UINT64_MAX:
        raise MalformedRecord("bad_delivery", f"{name} must be an unsigned integer")
    return value


@dataclass(frozen=True)
class PolicyDelivery:
    """Logged documents for one device, with their leaf indexes (gateway -> device)."""

    documents: tuple[tuple[int, bytes], ...]
    next_index: int
    complete: bool

    def __post_init__(self) -> None:
        if len(self.documents) > MAX_DELIVERY_DOCUMENTS:
            raise MalformedRecord("bad_delivery", f"more than {MAX_DELIVERY_DOCUMENTS} documents")
        previous = -1
        for index, doc in self.documents:
            if _uint(index, "leaf index") <= previous or index >= self.next_index:
                raise MalformedRecord("bad_delivery", "indexes rise and stay below next_index")
            if not isinstance(doc, bytes) or not 0 < len(doc) <= MAX_DOCUMENT_BYTES:
                raise MalformedRecord("bad_delivery", "a document is 1..8192 bytes")
            previous = index
        _uint(self.next_index, "next_index")
        if not isinstance(self.complete, bool):
            raise MalformedRecord("bad_delivery", "complete must be a bool")

    def to_cbor(self) -> bytes:
        data = cbor.encode({1: DELIVERY_VERSION, 2: [[i, d] for i, d in self.documents],
                            3: self.next_index, 4: self.complete})
        if len(data) > MAX_DELIVERY_BYTES:
            raise MalformedRecord("too_large", f"delivery of {len(data)} bytes")
        return data

    @classmethod
    def from_cbor(cls, data: bytes) -> PolicyDelivery:
        item = cbor.decode(data, _DELIVERY_LIMITS)
        if not isinstance(item, dict) or set(item.keys()) != {1, 2, 3, 4}:
            raise MalformedRecord("bad_delivery", "delivery is {1: version .. 4: complete}")
        cbor.require_version(item[1], DELIVERY_VERSION, "delivery")
        entries = item[2]
        if not isinstance(entries, list):
            raise MalformedRecord("bad_delivery", "documents must be a list")
        docs = []
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], bytes)):
                raise MalformedRecord("bad_delivery", "each document is [leaf index, bytes]")
            docs.append((_uint(entry[0], "leaf index"), entry[1]))
        complete = item[4]
        if not isinstance(complete, bool):
            raise MalformedRecord("bad_delivery", "complete must be a bool")
        return cls(tuple(docs), _uint(item[3], "next_index"), complete)


def pack_deliveries(documents: list[tuple[int, bytes]], next_index: int) -> list[PolicyDelivery]:
    """Split a sync answer into deliveries under the caps; the last is ``complete``.

    Every document index must be below ``next_index``. Always at least one delivery (an
    empty, complete one when there is nothing to send).
    """
    out: list[PolicyDelivery] = []
    chunk: list[tuple[int, bytes]] = []
    size = 16
    for index, doc in documents:
        if chunk and (size + len(doc) + 16 > MAX_DELIVERY_BYTES
                      or len(chunk) == MAX_DELIVERY_DOCUMENTS):
            out.append(PolicyDelivery(tuple(chunk), chunk[-1][0] + 1, False))
            chunk, size = [], 16
        chunk.append((index, doc))
        size += len(doc) + 16
    out.append(PolicyDelivery(tuple(chunk), next_index, True))
    return out


@dataclass(frozen=True)
class PolicySync:
    """A device's request for its documents from ``from_index`` on (device -> gateway)."""

    from_index: int

    def __post_init__(self) -> None:
        _uint(self.from_index, "from_index")

    def to_cbor(self) -> bytes:
        return cbor.encode({1: DELIVERY_VERSION, 2: self.from_index})

    @classmethod
    def from_cbor(cls, data: bytes) -> PolicySync:
        item = cbor.decode(data, _SYNC_LIMITS)
        if not isinstance(item, dict) or set(item.keys()) != {1, 2}:
            raise MalformedRecord("bad_delivery", "sync is {1: version, 2: from_index}")
        cbor.require_version(item[1], DELIVERY_VERSION, "sync")
        return cls(_uint(item[2], "from_index"))
