"""Building, sealing and signing the device's records (protocol.record / sealing / signed).

:class:`RecordFactory` turns a body into signed bytes for a given ``(seq, prev)``; the
outbox supplies both inside its transaction. :class:`RecordWriter` is what the service
calls: it keeps the current key epoch, emits a ``keys`` record when one starts (at start,
every ``epoch_records`` sealed records or ``epoch_ms`` of monotonic time, after the
outbox was replaced, and whenever the grants in force change), seals the values of
streams that have recipients, and sends the others as plaintext values.

Grants (protocol/grants.py, agent/grants.py): for every owner's consent in force, each
reading of its stream is followed by a *derived* record carrying only the granted values,
sealed for that recipient alone, at most one per ``min_interval_ms`` of the reading's
monotonic time. "In force" is decided at every reading with the device's own clock: a
grant whose period cannot be proven (unsynchronised clock), has ended, or was revoked
ends the key epoch that named it, so nothing sampled later is sealed to it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.clock import Clock
from agent.grants import GrantBook
from agent.outbox import Outbox
from protocol.grants import AccessGrant, epoch_recipients, granted_values
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
from protocol.sealing import EpochKeys, StreamSealer, new_key_epoch, seal_record
from protocol.signed import signed_bytes

log = logging.getLogger(__name__)



class RecordFactory:
    """Signs records as one device in one boot."""

    def __init__(self, device_id: bytes, key: SigningKey, boot: int, clock: Clock) -> None:
        self.device_id = device_id
        self.boot = boot
        self._key = key
        self._clock = clock
        self._sealers: dict[str, StreamSealer] = {}  # for the epoch, boot and id below
        self._sealers_for: tuple[EpochKeys | None, int, bytes] = (None, -1, b"")

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
        return signed_bytes(record, self.device_id, self._key)

    def sign_body(self, seq: int, prev: bytes, stream: str, body: Body, *,
                  mono_ms: int | None = None, boot: int | None = None) -> bytes:
        """Build and sign a record holding ``body``; ``mono_ms`` defaults to now."""
        mono = self._clock.mono_ms() if mono_ms is None else mono_ms
        return self.sign(self.header(seq, prev, stream, mono, body, boot=boot))

    def sign_sealed(self, seq: int, prev: bytes, stream: str, mono_ms: int, *,
                    epoch: EpochKeys, values: tuple[Measurement, ...]) -> bytes:
        """Build, seal (for ``epoch``'s key of ``stream``) and sign a reading's record.

        The bytes of ``sign(seal_record(device_id, header(...), epoch, values))``, made by
        the stream's :class:`~protocol.sealing.StreamSealer` (kept per epoch); a field it
        does not take goes the generic way, which raises as it always did.
        """
        wall, synced = max(0, self._clock.wall_ms()), self._clock.wall_synced()
        sealer = self._sealers.get(stream)
        made_for = self._sealers_for
        if (sealer is None or made_for[0] is not epoch or made_for[1] != self.boot
                or made_for[2] != self.device_id):
            sealer = self._sealer(epoch, stream)
        raw = sealer.sign(self._key, seq, prev, wall, synced, mono_ms, values)
        if raw is not None:
            return raw
        header = Record(self.boot, seq, prev, wall, synced, mono_ms, stream, Values(values))
        return self.sign(seal_record(self.device_id, header, epoch, values))

    def _sealer(self, epoch: EpochKeys, stream: str) -> StreamSealer:
        made_for = self._sealers_for
        if made_for[0] is not epoch or made_for[1:] != (self.boot, self.device_id):
            self._sealers = {}
            self._sealers_for = (epoch, self.boot, self.device_id)
        sealer = self._sealers[stream] = StreamSealer(self.device_id, self.boot, epoch, stream)
        return sealer

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
                 clock: Clock, random_bytes: Callable[[int], bytes] = os.urandom,
                 grants: GrantBook | None = None) -> None:
        """``recipients`` maps each stream to the keys its full values are sealed for (the
        owner's when one is pinned, else the configured ones); ``grants`` is the device's
        grant book (None: no derived streams)."""
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
        self._book = grants
        self._book_version = -1
        self._epoch_grants: dict[str, AccessGrant] = {}  # derived stream -> grant
        self._last_granted: dict[str, int] = {}  # derived stream -> mono_ms of its last record
        self._checked = (False, 0, 0)  # sync state, wall from, wall until: grants unchanged
        self.counters: Counter[str] = Counter()

    @property
    def sealed_streams(self) -> frozenset[str]:
        return frozenset(self._recipients)

    def _grants_in_force(self) -> tuple[AccessGrant, ...]:
        """The book's grants in force now; notes when that set can next change."""
        if self._book is None:
            return ()
        wall, synced = self._clock.wall_ms(), self._clock.wall_synced()
        grants = self._book.grants()
        # The set changes when the sync state does, or the wall clock crosses a grant's
        # start or end (or steps back): checked per reading without walking the book.
        self._checked = (synced, wall, min(
            [g.not_before_ms for g in grants if g.not_before_ms > wall]
            + [g.not_after_ms for g in grants if g.not_after_ms > wall], default=1 << 64))
        # A derived stream only makes sense when the full stream is sealed (to the owner).
        return tuple(g for g in grants
                     if g.in_force(wall, synced) and g.stream in self._recipients)

    def start_epoch(self) -> int | None:
        """Append a ``keys`` record starting a new epoch; return its seq (None: no recipients).

        The epoch seals each stream for its recipients and each grant in force now for its
        recipient (a derived stream), and names those grants' consents.
        """
        version = self._book.version if self._book is not None else 0
        grants = self._grants_in_force()
        recipients, consents = epoch_recipients(self._recipients, grants)
        if not recipients:
            return None
        made: list[EpochKeys] = []

        def build(seq: int, prev: bytes) -> bytes:
            body, keys = new_key_epoch(self._factory.device_id, seq, recipients,
                                       self._random, consents)
            made.append(keys)
            return self._factory.sign_body(seq, prev, KEYS_STREAM, body)

        seq = self._outbox.append(KEYS_STREAM, build, protected=True)
        self._epoch = made[-1]
        self._epoch_records = 0
        self._epoch_started = self._clock.mono_ms()
        self._outbox_generation = self._outbox.generation
        self._book_version = version
        self._epoch_grants = {g.derived_stream: g for g in grants}
        self.counters["key_epochs"] += 1
        log.info("key epoch started at seq %s for streams %s", seq, sorted(recipients))
        return seq

    def grants_changed(self) -> bool:
        """Whether the grants in force differ from those of the current epoch."""
        if self._book is None or self._epoch is None:
            return False
        if self._book.version != self._book_version:
            return True
        synced, since, until = self._checked
        wall = self._clock.wall_ms()
        if self._clock.wall_synced() == synced and since <= wall < until:
            return False
        return {g.derived_stream for g in self._grants_in_force()} != set(self._epoch_grants)

    def refresh_epoch(self) -> int | None:
        """Start a new epoch at once if the grants in force changed; return its seq."""
        return self.start_epoch() if self.grants_changed() else None

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
        seq = self._append_sealed(stream, values, mono_ms, epoch)
        if self._epoch_grants:
            self._write_granted(stream, values, mono_ms, epoch)
        return seq

    def _write_granted(self, stream: str, values: tuple[Measurement, ...], mono_ms: int,
                       epoch: EpochKeys) -> None:
        """Append the derived record of every grant of ``stream`` whose rate allows one.

        Under the grant book's lock, and only if the book is still the one the epoch was
        made from: a revocation applied meanwhile (by the uplink thread) either comes
        after these records and withdraws them, or before and none is made.
        """
        assert self._book is not None
        with self._book.lock:
            if self._book.version != self._book_version:
                self.counters["granted_deferred"] += 1  # the next reading starts an epoch
                return
            for name, grant in self._epoch_grants.items():
                if grant.stream == stream and self._rate_allows(name, grant, mono_ms):
                    self._write_one_granted(name, grant, values, mono_ms, epoch)

    def _rate_allows(self, name: str, grant: AccessGrant, mono_ms: int) -> bool:
        last = self._last_granted.get(name)
        if last is not None and mono_ms - last < grant.min_interval_ms:
            self.counters["granted_rate_skipped"] += 1
            return False
        return True

    def _write_one_granted(self, name: str, grant: AccessGrant,
                           values: tuple[Measurement, ...], mono_ms: int,
                           epoch: EpochKeys) -> None:
        subset = granted_values(values, grant.fields)
        if not subset:
            self.counters["granted_no_fields"] += 1
            return
        self._append_sealed(name, subset, mono_ms, epoch)
        self._last_granted[name] = mono_ms
        self.counters["granted_records"] += 1

    def _append_sealed(self, stream: str, values: tuple[Measurement, ...], mono_ms: int,
                       epoch: EpochKeys) -> int | None:
        sign_sealed = self._factory.sign_sealed

        def sealed(seq: int, prev: bytes) -> bytes:
            return sign_sealed(seq, prev, stream, mono_ms, epoch=epoch, values=values)

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
                or now - self._epoch_started >= self._policy.max_ms
                or self.grants_changed()):
            self.start_epoch()
        assert self._epoch is not None
        return self._epoch
