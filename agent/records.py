"""Building, sealing and signing the device's records (protocol.record / sealing / signed).

:class:`RecordFactory` turns a body into signed bytes for a given ``(seq, prev)``; the
outbox supplies both inside its transaction. :class:`RecordWriter` is what the service
calls: it keeps the current key epoch, emits a ``keys`` record when one starts (at start,
every ``epoch_records`` sealed records or ``epoch_ms`` of monotonic time, and after the
outbox was replaced), seals the values of streams that have recipients, and sends the
others as plaintext values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.clock import Clock
from agent.outbox import Outbox
from protocol.keys import SigningKey
from protocol.record import (
    GAP_STREAM,
    KEYS_STREAM,
    USAGE_STREAM,
    Body,
    Gap,
    Measurement,
    Record,
    Usage,
    Values,
)
from protocol.sealing import EpochKeys, new_key_epoch, seal_record
from protocol.signed import sign_record

log = logging.getLogger(__name__)



class RecordFactory:
    """Signs records as one device in one boot."""

    def __init__(self, device_id: bytes, key: SigningKey, boot: int, clock: Clock) -> None:
        self.device_id = device_id
        self.boot = boot
        self._key = key
        self._clock = clock

    @property
    def public_key(self) -> bytes:
        """The public half of the key that signs the next record."""
        return self._key.public_key

    def use_key(self, key: SigningKey) -> None:
        """Sign every later record with ``key`` (a key rotation; the device id stays)."""
        self._key = key

    def header(self, seq: int, prev: bytes, stream: str, mono_ms: int, body: Body, *,
               boot: int | None = None) -> Record:
        """Return the record with the header fields of now (wall time and its sync state).

        ``boot`` defaults to this boot; a usage claim left by an earlier boot is signed with
        that boot, because its monotonic times belong to it.
        """
        return Record(boot=self.boot if boot is None else boot, seq=seq, prev=prev,
                      wall_ms=max(0, self._clock.wall_ms()),
                      clock_synced=self._clock.wall_synced(), mono_ms=mono_ms, stream=stream,
                      body=body)

    def sign(self, record: Record) -> bytes:
        """Return the exact COSE_Sign1 bytes of ``record``."""
        return sign_record(record, self.device_id, self._key).raw

    def sign_body(self, seq: int, prev: bytes, stream: str, body: Body, *,
                  mono_ms: int | None = None, boot: int | None = None) -> bytes:
        """Build and sign a record holding ``body``; ``mono_ms`` defaults to now."""
        mono = self._clock.mono_ms() if mono_ms is None else mono_ms
        return self.sign(self.header(seq, prev, stream, mono, body, boot=boot))

    def sign_gap(self, seq: int, prev: bytes, gap: Gap) -> bytes:
        """The outbox's gap records (see :class:`agent.outbox.GapSigner`)."""
        return self.sign_body(seq, prev, GAP_STREAM, gap)


@dataclass(frozen=True)
class EpochPolicy:
    """When a new key epoch starts (whichever comes first)."""

    max_records: int = 1000
    max_ms: int = 3_600_000


class RecordWriter:
    """Writes readings, usage and key epochs into the outbox as signed records."""

    def __init__(self, factory: RecordFactory, outbox: Outbox,
                 recipients: Mapping[str, Sequence[bytes]], *, policy: EpochPolicy,
                 clock: Clock, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._factory = factory
        self._outbox = outbox
        self._recipients = {s: tuple(keys) for s, keys in recipients.items() if keys}
        self._policy = policy
        self._clock = clock
        self._random = random_bytes
        self._epoch: EpochKeys | None = None
        self._epoch_records = 0
        self._epoch_started = 0
        self._outbox_generation = outbox.generation

    @property
    def sealed_streams(self) -> frozenset[str]:
        return frozenset(self._recipients)

    def start_epoch(self) -> int | None:
        """Append a ``keys`` record starting a new epoch; return its seq (None: no recipients)."""
        if not self._recipients:
            return None
        made: list[EpochKeys] = []

        def build(seq: int, prev: bytes) -> bytes:
            body, keys = new_key_epoch(self._factory.device_id, seq, self._recipients,
                                       self._random)
            made.append(keys)
            return self._factory.sign_body(seq, prev, KEYS_STREAM, body)

        seq = self._outbox.append(KEYS_STREAM, build, protected=True)
        self._epoch = made[-1]
        self._epoch_records = 0
        self._epoch_started = self._clock.mono_ms()
        self._outbox_generation = self._outbox.generation
        log.info("key epoch started at seq %s for streams %s", seq, sorted(self._recipients))
        return seq

    def write_values(self, stream: str, values: tuple[Measurement, ...],
                     mono_ms: int) -> int | None:
        """Append one reading; sealed if the stream has recipients.

        Returns its seq, or None if the outbox's full policy refused it.
        """
        if stream not in self._recipients:
            def plain(seq: int, prev: bytes) -> bytes:
                return self._factory.sign_body(seq, prev, stream, Values(values),
                                               mono_ms=mono_ms)
            return self._outbox.append(stream, plain)
        epoch = self._current_epoch()

        placeholder = Values(values)

        def sealed(seq: int, prev: bytes) -> bytes:
            header = self._factory.header(seq, prev, stream, mono_ms, placeholder)
            return self._factory.sign(
                seal_record(self._factory.device_id, header, epoch, values))

        seq = self._outbox.append(stream, sealed)
        self._epoch_records += 1
        return seq

    def write_usage(self, usage: Usage, boot: int | None = None) -> int | None:
        """Append a usage record for a claim of ``boot`` (default: this boot); return its seq.

        The record's ``mono_ms`` is the claim's end, on that boot's clock. Usage records are
        protected (never dropped for space): they carry credit.
        """
        def build(seq: int, prev: bytes) -> bytes:
            return self._factory.sign_body(seq, prev, USAGE_STREAM, usage,
                                           mono_ms=usage.end_mono_ms, boot=boot)
        return self._outbox.append(USAGE_STREAM, build, protected=True)

    def _current_epoch(self) -> EpochKeys:
        now = self._clock.mono_ms()
        if (self._epoch is None or self._outbox.generation != self._outbox_generation
                or self._epoch_records >= self._policy.max_records
                or now - self._epoch_started >= self._policy.max_ms):
            self.start_epoch()
        assert self._epoch is not None
        return self._epoch
