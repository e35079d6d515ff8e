"""Field- and rate-limited grants on the device, opened with the recipients' real keys.

The record writer seals every reading to the owner and, for each grant in force, a derived
record with only the granted fields at the granted rate to the grant's recipient. These
tests open every stored record with each party's real X25519 key (verifier.recipient, the
code an independent recipient runs) and check what each could read.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest

from agent.clock import ManualClock
from agent.grants import GrantBook
from agent.outbox import DeviceState, Outbox, OutboxSettings
from agent.records import EpochPolicy, RecordFactory, RecordWriter
from protocol import reasons
from protocol.errors import StorageError
from protocol.grants import AccessGrant, derived_stream
from protocol.keys import RecipientKey, SigningKey, device_id_for
from protocol.record import Gap, KeyEpoch, Measurement, Record
from protocol.signed import parse_signed_record
from verifier.client import LoggedRecord
from verifier.recipient import Opened, open_records

DAY_MS = 86_400_000
TEMP, HUMIDITY = "Cel", "%RH"


def consent_hash(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


class Device:
    """A device's writer, outbox and grant book on real files, with a manual clock."""

    def __init__(self, tmp: Path, *, synced: bool = True) -> None:
        self.clock = ManualClock(synced=synced)
        self.owner = RecipientKey.generate()
        self.company = RecipientKey.generate()
        self.other = RecipientKey.generate()
        key = SigningKey(SigningKey.generate().seed)
        self.device_id = device_id_for(key.public_key)
        self.key = key
        self.state = DeviceState.open(tmp / "state.sqlite", self.clock.wall_ms)
        self.outbox = Outbox(tmp / "outbox.sqlite", OutboxSettings(), self.state, self.clock)
        self.factory = RecordFactory(self.device_id, key, self.outbox.boot, self.clock)
        self.outbox.attach(self.factory)
        self.book = GrantBook(tmp / "grants.json")
        self.writer = RecordWriter(self.factory, self.outbox,
                                   {"climate": (self.owner.public_key,)},
                                   policy=EpochPolicy(), clock=self.clock, grants=self.book)

    def grant(self, label: str = "c1", *, fields: tuple[str, ...] = (TEMP,),
              interval_ms: int = 60_000, until_ms: int | None = None) -> AccessGrant:
        now = self.clock.wall_ms()
        grant = AccessGrant(consent_hash(label), self.company.public_key, "climate", fields,
                            interval_ms, now - 1000, until_ms or now + DAY_MS)
        self.book.add((grant,))
        return grant

    def readings(self, count: int, every_ms: int = 2000) -> list[int]:
        """``count`` DHT22 readings; returns the mono_ms of each."""
        taken = []
        for i in range(count):
            self.clock.advance(every_ms)
            values = (Measurement(214 + i, -1, TEMP), Measurement(553, -1, HUMIDITY))
            self.writer.write_values("climate", values, self.clock.mono_ms())
            taken.append(self.clock.mono_ms())
        return taken

    def records(self) -> list[Record]:
        self.outbox.commit()
        return [parse_signed_record(raw)[1] for _, raw in self.outbox.unsent(-1, 10**6, 1 << 30)]

    def open_as(self, who: RecipientKey) -> list[Opened]:
        self.outbox.commit()
        rows = self.outbox.unsent(-1, 10**6, 1 << 30)
        logged = [LoggedRecord(i, self.device_id, seq, parse_signed_record(raw)[1].stream, raw)
                  for i, (seq, raw) in enumerate(rows)]
        return open_records(logged, [(0, self.key.public_key)], who)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path)


def decrypted(opened: list[Opened]) -> list[Opened]:
    return [o for o in opened if o.status == "decrypted"]


def test_recipient_opens_only_granted_field_never_humidity(device: Device) -> None:
    device.grant(fields=(TEMP,))
    device.readings(5)
    got = decrypted(device.open_as(device.company))
    assert got, "the company opens its derived records"
    assert {o.stream for o in got} == {derived_stream("climate", consent_hash("c1"))}
    assert {m.unit for o in got for m in o.values} == {TEMP}
    full = [o for o in device.open_as(device.company) if o.stream == "climate"]
    assert {o.status for o in full} == {"not_granted"}


def test_owner_reads_every_full_reading(device: Device) -> None:
    device.grant()
    device.readings(5)
    full = [o for o in decrypted(device.open_as(device.owner)) if o.stream == "climate"]
    assert len(full) == 5
    assert all({m.unit for m in o.values} == {TEMP, HUMIDITY} for o in full)


def test_recipient_never_gets_more_than_granted_rate(device: Device) -> None:
    device.grant(interval_ms=60_000)
    taken = device.readings(90, every_ms=2000)  # 180 s of readings every 2 s
    got = decrypted(device.open_as(device.company))
    spacing = [b.wall_ms - a.wall_ms for a, b in itertools.pairwise(got)]
    assert len(got) == 3  # at 2 s, 62 s, 122 s of 180 s
    assert min(spacing) >= 60_000
    assert len(taken) == 90


def test_stranger_opens_nothing(device: Device) -> None:
    device.grant()
    device.readings(5)
    assert decrypted(device.open_as(device.other)) == []


def test_revoked_recipient_decrypts_nothing_sampled_after_revocation(device: Device) -> None:
    grant = device.grant(interval_ms=0)
    device.readings(3)
    device.book.revoke(grant.consent_hash, grant.not_after_ms)
    revoked_at = device.clock.mono_ms()
    assert device.writer.refresh_epoch() is not None  # a new epoch at once
    device.readings(5)
    opened = device.open_as(device.company)
    before = [o for o in decrypted(opened)]
    assert len(before) == 3
    after = [r for r in device.records()
             if r.mono_ms > revoked_at and r.stream not in {"keys"}]
    assert len(after) == 5  # only full readings: no derived record any more
    assert all(o.status != "decrypted" for o in opened if o.seq > max(b.seq for b in before))


def test_key_epoch_names_applied_consent_and_drops_it_after_revocation(device: Device) -> None:
    grant = device.grant()
    device.readings(1)
    device.book.revoke(grant.consent_hash, grant.not_after_ms)
    device.writer.refresh_epoch()
    epochs = [r.body for r in device.records() if isinstance(r.body, KeyEpoch)]
    assert epochs[-2].consents == ((grant.derived_stream, grant.consent_hash),)
    assert epochs[-1].consents == ()
    assert grant.derived_stream not in {s for s, _ in epochs[-1].grants}


def test_unsynchronised_clock_stops_sealing_to_grant(device: Device) -> None:
    device.grant(interval_ms=0)
    device.readings(2)
    device.clock.synced = False  # e.g. after a power cut, before NTP
    device.readings(4)
    device.clock.synced = True
    device.readings(1)
    got = decrypted(device.open_as(device.company))
    assert len(got) == 3
    assert all(o.clock_synced for o in got)
    assert device.writer.counters["key_epochs"] >= 3  # the grant left and came back


def test_expired_grant_gets_nothing_sampled_after_expiry(device: Device) -> None:
    until = device.clock.wall_ms() + 5000
    device.grant(interval_ms=0, until_ms=until)
    device.readings(6, every_ms=2000)  # readings at +2, +4 s in force; +6.. s expired
    got = decrypted(device.open_as(device.company))
    assert [o.wall_ms < until for o in got] == [True, True]


def test_revocation_withdraws_unsent_records_sealed_to_recipient(device: Device) -> None:
    grant = device.grant(interval_ms=0)
    device.readings(4)
    ended = device.book.revoke(grant.consent_hash, grant.not_after_ms)
    gone = device.outbox.withdraw(ended, reasons.REVOKED)
    assert len(gone) == 4
    assert decrypted(device.open_as(device.company)) == []
    gaps = [r.body for r in device.records() if isinstance(r.body, Gap)]
    assert [(g.first_seq, g.last_seq, g.reason) for g in gaps] == [
        (s, s, "revoked") for s in gone]
    owner = [o for o in decrypted(device.open_as(device.owner)) if o.stream == "climate"]
    assert len(owner) == 4  # the owner's full stream keeps every reading
    assert device.outbox.stats().as_dict()["withdrawn"] == 4


def test_grant_book_survives_restart_and_remembers_revocation(tmp_path: Path) -> None:
    book = GrantBook(tmp_path / "grants.json")
    grant = AccessGrant(consent_hash("x"), bytes(range(32)), "climate", (TEMP,), 0, 0, 10**13)
    book.add((grant,))
    book.refuse("not_owner")
    again = GrantBook(tmp_path / "grants.json")
    assert again.grants() == (grant,)
    assert again.refused["not_owner"] == 1
    again.revoke(grant.consent_hash, grant.not_after_ms)
    third = GrantBook(tmp_path / "grants.json")
    assert third.grants() == ()
    assert third.is_revoked(grant.consent_hash)


def test_damaged_grant_book_refuses_to_load(tmp_path: Path) -> None:
    (tmp_path / "grants.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(StorageError, match="damaged grant book"):
        GrantBook(tmp_path / "grants.json")


def test_expiry_starts_a_key_epoch_without_the_grant_at_once(device: Device) -> None:
    until = device.clock.wall_ms() + 5000
    grant = device.grant(interval_ms=0, until_ms=until)
    device.readings(1)
    assert device.writer.refresh_epoch() is None  # nothing changed yet
    device.clock.advance(10_000)  # past the end of the period, no reading in between
    assert device.writer.refresh_epoch() is not None
    epochs = [r.body for r in device.records() if isinstance(r.body, KeyEpoch)]
    assert epochs[-2].consents == ((grant.derived_stream, grant.consent_hash),)
    assert epochs[-1].consents == ()
