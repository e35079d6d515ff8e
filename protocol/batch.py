"""Batches: how signed records travel from a device to the gateway.

One MQTT message on ``edgeproof/v1/devices/<device id hex>/records`` carries one batch,
the deterministic CBOR map ``{1: 1, 2: batch_id, 3: [record bytes, ...]}``. Records are
embedded as byte strings so that their exact signed bytes survive the trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import cbor
from protocol.errors import MalformedRecord
from protocol.signed import MAX_SIGNED_RECORD_BYTES

BATCH_VERSION = 1
MAX_BATCH_RECORDS = 1000
MAX_BATCH_BYTES = 512 * 1024
TOPIC_PREFIX = "edgeproof/v1/devices/"


def records_topic(device_id: bytes) -> str:
    """The topic a device publishes its batches on."""
    return f"{TOPIC_PREFIX}{device_id.hex()}/records"


def receipts_topic(device_id: bytes) -> str:
    """The topic the gateway publishes a device's receipts on."""
    return f"{TOPIC_PREFIX}{device_id.hex()}/receipts"


def device_id_from_topic(topic: str, suffix: str = "records") -> bytes:
    """Return the device id named by a records (or receipts) topic.

    Raises MalformedRecord("bad_topic") for any other topic.
    """
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) + "/" != TOPIC_PREFIX or parts[4] != suffix:
        raise MalformedRecord("bad_topic", topic[:120])
    try:
        device_id = bytes.fromhex(parts[3])
    except ValueError:
        raise MalformedRecord("bad_topic", "device id is not hex") from None
    if len(device_id) != 16 or parts[3] != device_id.hex():
        raise MalformedRecord("bad_topic", "device id must be 32 lowercase hex digits")
    return device_id


@dataclass(frozen=True)
class Batch:
    """A numbered group of signed records from one device."""

    batch_id: int
    records: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.batch_id < (1 << 64):
            raise MalformedRecord("bad_batch", "batch id out of range")
        if not 1 <= len(self.records) <= MAX_BATCH_RECORDS:
            raise MalformedRecord("bad_batch", f"1..{MAX_BATCH_RECORDS} records per batch")

    def to_cbor(self) -> bytes:
        """Return the batch's deterministic CBOR encoding."""
        return cbor.encode({1: BATCH_VERSION, 2: self.batch_id, 3: list(self.records)})

    @classmethod
    def from_cbor(cls, data: bytes) -> Batch:
        """Decode a batch (records stay undecoded bytes); raise MalformedRecord on error."""
        limits = cbor.Limits(max_bytes=MAX_BATCH_BYTES, max_depth=2,
                             max_items=MAX_BATCH_RECORDS, max_string=MAX_SIGNED_RECORD_BYTES)
        item = cbor.decode(data, limits)
        if not isinstance(item, dict) or set(item.keys()) != {1, 2, 3}:
            raise MalformedRecord("bad_batch", "batch is {1: version, 2: id, 3: records}")
        if item[1] != BATCH_VERSION:
            raise MalformedRecord("bad_version", f"unsupported batch version {item[1]!r}")
        batch_id, records = item[2], item[3]
        if not isinstance(batch_id, int) or isinstance(batch_id, bool):
            raise MalformedRecord("bad_batch", "batch id must be an integer")
        if not isinstance(records, list) or not all(isinstance(r, bytes) for r in records):
            raise MalformedRecord("bad_batch", "records must be byte strings")
        return cls(batch_id, tuple(r for r in records if isinstance(r, bytes)))
