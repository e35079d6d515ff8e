"""Recipient access: decrypt the streams a recipient was granted, nothing else.

A recipient fetches a device's logged records (ciphertext stays ciphertext on the gateway),
checks every record's signature (the AEAD alone would let one recipient forge values for
another recipient of the same stream), finds the key epoch each sealed record points to,
unwraps the stream key with its own X25519 key, and opens the values
(docs/PROTOCOL.md §5.3). Streams it was not granted stay closed: it holds no key for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import EdgeproofError
from protocol.keys import RecipientKey
from protocol.record import KeyEpoch, Measurement, Record, Sealed, Values
from protocol.sealing import open_values, unwrap_stream_key
from protocol.signed import verify_signed_record
from verifier.client import LoggedRecord


@dataclass(frozen=True)
class Opened:
    """What a recipient could read of one record."""

    seq: int
    stream: str
    wall_ms: int
    status: str  # "decrypted", "plaintext", "not_granted", "sealed" (no key given), "error"
    values: tuple[Measurement, ...] = ()
    detail: str = ""
    clock_synced: bool = False


def key_for_seq(keys: list[tuple[int, bytes]], seq: int) -> bytes:
    """The device key in force at ``seq`` (keys as (from_seq, key), oldest first)."""
    current = keys[0][1]
    for from_seq, key in keys:
        if from_seq <= seq:
            current = key
    return current


def open_records(records: list[LoggedRecord], keys: list[tuple[int, bytes]],
                 recipient: RecipientKey | None, streams: set[str] | None = None
                 ) -> list[Opened]:
    """Verify and open a device's records for ``recipient``.

    Returns one :class:`Opened` per value-carrying record (optionally only ``streams``).
    A record whose signature fails is reported as ``error``; it is never opened. Without a
    recipient key, plaintext values are shown and sealed ones reported as ``sealed``.
    """
    return Opener(keys, recipient, streams).feed(records)


class Opener:
    """Opens a device's records page by page (``edgeproof-verify records --follow``).

    Keeps only what later pages need: the key-epoch records seen so far (a sealed record
    names its epoch by seq, always an earlier one) and the stream keys unwrapped from them.
    """

    def __init__(self, keys: list[tuple[int, bytes]], recipient: RecipientKey | None,
                 streams: set[str] | None = None) -> None:
        self.keys = keys
        self.recipient = recipient
        self.streams = streams
        self.epochs: dict[int, tuple[bytes, Record]] = {}
        self.stream_keys: dict[tuple[int, str], bytes | None] = {}

    def feed(self, records: list[LoggedRecord]) -> list[Opened]:
        """Verify and open the next records (in sequence order); see :func:`open_records`."""
        verified: list[tuple[bytes, Record]] = []
        opened: list[Opened] = []
        for logged in records:
            try:
                signed = verify_signed_record(logged.record, key_for_seq(self.keys, logged.seq),
                                              logged.device_id)
            except EdgeproofError as exc:
                opened.append(Opened(logged.seq, logged.stream, 0, "error", detail=str(exc)))
                continue
            if isinstance(signed.record.body, KeyEpoch):
                self.epochs[signed.record.seq] = (signed.device_id, signed.record)
            verified.append((signed.device_id, signed.record))
        for device_id, record in verified:
            if self.streams is not None and record.stream not in self.streams:
                continue
            if isinstance(record.body, Values):
                opened.append(Opened(record.seq, record.stream, record.wall_ms, "plaintext",
                                     record.body.values, clock_synced=record.clock_synced))
            elif isinstance(record.body, Sealed):
                opened.append(self._open_sealed(device_id, record))
        return sorted(opened, key=lambda o: o.seq)

    def _open_sealed(self, device_id: bytes, record: Record) -> Opened:
        assert isinstance(record.body, Sealed)
        if self.recipient is None:
            return Opened(record.seq, record.stream, record.wall_ms, "sealed",
                          detail="no key", clock_synced=record.clock_synced)
        epoch_seq = record.seq - record.body.key_delta
        cache_key = (epoch_seq, record.stream)
        if cache_key not in self.stream_keys:
            self.stream_keys[cache_key] = _stream_key(device_id, epoch_seq, record.stream,
                                                      self.epochs, self.recipient)
        stream_key = self.stream_keys[cache_key]
        if stream_key is None:
            return Opened(record.seq, record.stream, record.wall_ms, "not_granted",
                          detail=f"no key for this recipient in key epoch {epoch_seq}",
                          clock_synced=record.clock_synced)
        try:
            values = open_values(device_id, record, stream_key)
        except EdgeproofError as exc:
            return Opened(record.seq, record.stream, record.wall_ms, "error", detail=str(exc),
                          clock_synced=record.clock_synced)
        return Opened(record.seq, record.stream, record.wall_ms, "decrypted", values,
                      clock_synced=record.clock_synced)


def _stream_key(device_id: bytes, epoch_seq: int, stream: str,
                epochs: dict[int, tuple[bytes, Record]], recipient: RecipientKey) -> bytes | None:
    found = epochs.get(epoch_seq)
    if found is None or not isinstance(found[1].body, KeyEpoch):
        return None
    try:
        return unwrap_stream_key(device_id, epoch_seq, found[1].body, stream, recipient)
    except EdgeproofError:
        return None
