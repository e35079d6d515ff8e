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
        """Decode a batch (records stay undecoded bytes); raise MalformedRecord on error.

        Every batch a device sends is read by :func:`_batch_fast`, which gives what
        :meth:`from_cbor_strict` would; any other bytes are the strict decoder's to judge.
        Over MAX_BATCH_BYTES is refused before the first byte is read, on either path.
        """
        fast = _batch_fast(data)
        return fast if fast is not None else cls.from_cbor_strict(data)

    @classmethod
    def from_cbor_strict(cls, data: bytes) -> Batch:
        """Decode with the generic decoder alone, as before the shortcut (for the tests)."""
        item = cbor.decode(data, _BATCH_LIMITS)
        if not isinstance(item, dict) or set(item.keys()) != {1, 2, 3}:
            raise MalformedRecord("bad_batch", "batch is {1: version, 2: id, 3: records}")
        cbor.require_version(item[1], BATCH_VERSION, "batch")
        batch_id, records = item[2], item[3]
        if not isinstance(batch_id, int) or isinstance(batch_id, bool):
            raise MalformedRecord("bad_batch", "batch id must be an integer")
        if not isinstance(records, list) or not all(isinstance(r, bytes) for r in records):
            raise MalformedRecord("bad_batch", "records must be byte strings")
        return cls(batch_id, tuple(r for r in records if isinstance(r, bytes)))


_BATCH_LIMITS = cbor.Limits(max_bytes=MAX_BATCH_BYTES, max_depth=2, max_items=MAX_BATCH_RECORDS,
                            max_string=MAX_SIGNED_RECORD_BYTES)


def _batch_fast(data: bytes) -> Batch | None:
    """The batch exactly as :meth:`Batch.to_cbor` frames it, without the generic decoder.

    A shortcut only, as strict as :meth:`Batch.from_cbor_strict`: ``{1: 1, 2: id, 3:
    [records]}`` with keys in that order, shortest heads (as cbor.read_head checks),
    1..MAX_BATCH_RECORDS byte strings of at most MAX_SIGNED_RECORD_BYTES, nothing after
    the last. Returns None for anything else, and the caller takes the generic path, which
    reports the precise error. Hypothesis tests hold the two paths to the same answers.
    """
    read_head = cbor.read_head
    try:
        if (type(data) is not bytes or len(data) > MAX_BATCH_BYTES
                or data[:3] != b"\xa3\x01\x01"):  # map of 3, 1: version 1
            return None
        batch_id, pos = cbor.read_keyed(data, 3, 2, 0)
        count, pos = cbor.read_keyed(data, pos, 3, 4)
        if not 1 <= count <= MAX_BATCH_RECORDS:
            return None
        end = len(data)
        records = []
        for _ in range(count):
            if data[pos] == 0x58:  # the usual record of 24..255 bytes: a two-byte head
                length = data[pos + 1]
                if length < 24:  # not the shortest form
                    return None
                pos += 2
            else:
                major, length, pos = read_head(data, pos)
                if major != 2 or length > MAX_SIGNED_RECORD_BYTES:
                    return None
            stop = pos + length
            if stop > end:
                return None
            records.append(data[pos:stop])
            pos = stop
        if pos != end:
            return None
    except (MalformedRecord, IndexError):
        return None
    return Batch(batch_id, tuple(records))
