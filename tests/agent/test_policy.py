"""The device's policy inbox: only its pinned owner's consents and revocations take effect.

Real signed documents (protocol.documents), a real outbox and grant book on files; every
refusal must change nothing and be counted with its reason code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.clock import ManualClock
from agent.grants import GrantBook
from agent.outbox import DeviceState, Outbox, OutboxSettings
from agent.policy import PolicyInbox
from agent.records import EpochPolicy, RecordFactory, RecordWriter
from protocol.contract import Consent, Revocation, Terms
from protocol.delivery import PolicyDelivery
from protocol.documents import Document, sign_document
from protocol.keys import OwnerKey, RecipientKey, SigningKey, device_id_for
from protocol.record import Measurement
from protocol.signed import parse_signed_record

HOUR = 3_600_000
T0 = 1_700_000_000_000


class Device:
    def __init__(self, tmp: Path) -> None:
        self.clock = ManualClock(wall_ms=T0)
        self.owner = OwnerKey.generate()
        self.company = RecipientKey.generate()
        self.gateway = SigningKey.generate()  # the receipt key the device pins
        key = SigningKey.generate()
        self.device_id = device_id_for(key.public_key)
        self.state = DeviceState.open(tmp / "state.sqlite", self.clock.wall_ms)
        self.outbox = Outbox(tmp / "outbox.sqlite", OutboxSettings(), self.state, self.clock)
        factory = RecordFactory(self.device_id, key, self.outbox.boot, self.clock)
        self.outbox.attach(factory)
        self.book = GrantBook(tmp / "grants.json")
        self.writer = RecordWriter(factory, self.outbox,
                                   {"climate": (self.owner.sealing_public_key,)},
                                   policy=EpochPolicy(), clock=self.clock, grants=self.book)
        self.inbox = PolicyInbox(self.book, self.outbox, device_id=self.device_id,
                                 owner=self.owner.public_key, streams={"climate", "cpu"},
                                 clock=self.clock, gateway=self.gateway.public_key)

    def consent(self, key: SigningKey | None = None, *, devices: tuple[bytes, ...] | None = None,
                streams: tuple[tuple[str, tuple[str, ...]], ...] = (("climate", ("Cel",)),),
                until: int = T0 + HOUR, lapses: bool = False) -> Document:
        body = Consent(bytes(32), self.company.public_key, devices or (self.device_id,),
                       Terms(streams, 60, T0 - 1000, until), lapses)
        return sign_document(body, key or self.owner.signing, self.clock.wall_ms())

    def revocation(self, consent: Document, counter: int, key: SigningKey | None = None
                   ) -> Document:
        return sign_document(Revocation(consent.id, counter, "owner"),
                             key or self.owner.signing, self.clock.wall_ms())

    def deliver(self, *docs: Document, complete: bool = True) -> bool:
        delivery = PolicyDelivery(tuple((i, d.raw) for i, d in enumerate(docs)),
                                  len(docs), complete)
        return self.inbox.deliver(delivery.to_cbor())

    def reading(self) -> None:
        self.clock.advance(2000)
        self.writer.write_values("climate", (Measurement(214, -1, "Cel"),
                                             Measurement(553, -1, "%RH")),
                                 self.clock.mono_ms())

    def streams_stored(self) -> list[str]:
        self.outbox.commit()
        return [parse_signed_record(raw)[1].stream
                for _, raw in self.outbox.unsent(-1, 10**6, 1 << 30)]


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path)


def test_owner_consent_is_applied(device: Device) -> None:
    assert device.deliver(device.consent())
    assert [g.fields for g in device.book.grants()] == [("Cel",)]
    assert device.book.next_index == 1


@pytest.mark.parametrize("signer", ["gateway", "operator", "other_owner", "recipient"])
def test_consent_not_signed_by_pinned_owner_is_refused_and_counted(device: Device,
                                                                    signer: str) -> None:
    # Each a real Ed25519 key of that party: the signature verifies, the signer is wrong.
    key = SigningKey.generate() if signer != "other_owner" else OwnerKey.generate().signing
    device.deliver(device.consent(key))
    assert device.book.grants() == ()
    assert device.book.refused == {"unsigned_policy": 1}
    device.reading()
    assert not any("~" in s for s in device.streams_stored())


def test_device_without_pinned_owner_applies_nothing(device: Device, tmp_path: Path) -> None:
    inbox = PolicyInbox(device.book, device.outbox, device_id=device.device_id, owner=None,
                        streams={"climate"}, clock=device.clock)
    inbox.apply(device.consent().raw)
    assert device.book.grants() == ()
    assert device.book.refused == {"no_owner_key": 1}


def test_consent_for_another_device_or_missing_stream_is_refused(device: Device) -> None:
    device.deliver(device.consent(devices=(bytes(16),)))
    device.deliver(device.consent(streams=(("kitchen", ("Cel",)),)))
    assert device.book.grants() == ()
    assert device.book.refused == {"other_device": 1, "unknown_stream": 1}


def test_expired_consent_is_refused(device: Device) -> None:
    device.clock.advance(2 * HOUR)
    device.deliver(device.consent(until=T0 + HOUR))
    assert device.book.refused == {"consent_expired": 1}


def test_tampered_and_garbage_documents_are_refused(device: Device) -> None:
    raw = bytearray(device.consent().raw)
    raw[-1] ^= 1
    device.inbox.apply(bytes(raw))
    device.inbox.apply(b"\xa1\x01\x02")
    assert device.inbox.deliver(b"not a delivery") is False
    assert device.book.grants() == ()
    assert device.book.refused == {"bad_signature": 1, "malformed": 2}


def test_revocation_ends_grant_and_withdraws_unsent_records(device: Device) -> None:
    consent = device.consent()
    device.deliver(consent)
    device.reading()
    assert any("~" in s for s in device.streams_stored())
    device.deliver(device.revocation(consent, 1))
    assert device.book.grants() == ()
    assert not any("~" in s for s in device.streams_stored())
    assert device.outbox.stats().as_dict()["withdrawn"] == 1


def test_revocation_signed_by_another_key_is_refused(device: Device) -> None:
    consent = device.consent()
    device.deliver(consent)
    device.deliver(device.revocation(consent, 1, SigningKey.generate()))
    assert len(device.book.grants()) == 1
    assert device.book.refused == {"unsigned_policy": 1}


def test_replayed_or_reordered_revocation_is_refused(device: Device) -> None:
    first, second = device.consent(), device.consent(until=T0 + 2 * HOUR)
    device.deliver(first, second)
    late = device.revocation(second, 1)  # signed first, delivered after a newer one
    device.deliver(device.revocation(first, 2))
    device.deliver(late)
    assert [g.consent_hash for g in device.book.grants()] == [second.id]
    assert device.book.refused == {"stale_counter": 1}


def test_revoked_consent_delivered_again_is_refused(device: Device) -> None:
    consent = device.consent()
    revocation = device.revocation(consent, 1)
    device.deliver(consent, revocation)
    device.deliver(consent)
    device.deliver(revocation)  # the same revocation again: a duplicate, not an error
    assert device.book.grants() == ()
    assert device.book.refused == {"consent_revoked": 1}
    assert device.book.accepted["duplicates"] == 1


def test_same_consent_delivered_twice_starts_no_new_epoch(device: Device) -> None:
    consent = device.consent()
    device.deliver(consent)
    version = device.book.version
    device.deliver(consent, complete=False)
    assert device.book.version == version
    assert device.book.accepted["duplicates"] == 1


def test_status_shows_refusals_by_reason_even_with_the_agent_down(
        device: Device, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device.deliver(device.consent(SigningKey.generate()))
    device.deliver(device.consent())
    device.outbox.commit()
    assert main(["status", "--state-dir", str(tmp_path), "--json"]) == 0
    grants = json.loads(capsys.readouterr().out)["grants"]
    assert grants["refused"] == {"unsigned_policy": 1}
    assert [g["fields"] for g in grants["grants"]] == [["Cel"]]
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    assert "REFUSED: unsigned_policy 1" in capsys.readouterr().out
