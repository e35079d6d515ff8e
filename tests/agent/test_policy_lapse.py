"""Lapse notices at the device (PROTOCOL.md §19.4): the gateway's notice ends a consent only
if it verifies under the pinned gateway key and embeds a consent of the pinned owner that
names this device and carries ``lapses_on_shortfall``; anything else changes nothing and is
counted by reason. Real signed documents, a real outbox and grant book on files."""

from __future__ import annotations

import pytest

from protocol.contract import Lapse
from protocol.documents import Document, sign_document
from protocol.keys import OwnerKey, SigningKey
from tests.agent.test_policy import T0, Device, device

__all__ = ["device"]  # the fixture


def notice(consent: Document, key: SigningKey, request: bytes | None = None) -> Document:
    body = Lapse(consent.raw, bytes(32) if request is None else request, 7, 12, 1337,
                 b"\x11" * 20)
    return sign_document(body, key, T0)


def test_short_requests_consent_lapses_and_the_device_stops_sealing_to_the_company(
        device: Device) -> None:
    consent = device.consent(lapses=True)
    device.deliver(consent)
    device.reading()
    assert any("~" in s for s in device.streams_stored())
    device.deliver(notice(consent, device.gateway))
    assert device.book.grants() == ()
    assert device.book.is_revoked(consent.id)
    assert device.book.refused == {}
    assert device.book.accepted["lapses"] == 1
    assert device.book.last_counter == 0  # the owner's revocation counter is untouched
    assert not any("~" in s for s in device.streams_stored())  # unsent ones withdrawn
    device.reading()
    assert not any("~" in s for s in device.streams_stored())  # new ones not sealed to it
    device.deliver(device.revocation(device.consent(until=T0 + 2), 1))
    assert device.book.refused == {}  # the owner's next revocation still counts from 1


def test_lapse_notice_for_a_consent_without_the_term_is_refused(device: Device) -> None:
    consent = device.consent()
    device.deliver(consent)
    device.deliver(notice(consent, device.gateway))
    assert len(device.book.grants()) == 1
    assert device.book.refused == {"no_lapse_term": 1}


@pytest.mark.parametrize(("forgery", "reason"), [
    ("signed_by_another_key", "unsigned_policy"),
    ("signed_by_the_owner", "unsigned_policy"),
    ("consent_of_another_owner", "not_owner"),
    ("consent_for_another_device", "other_device"),
    ("another_request", "unknown_request"),
])
def test_forged_lapse_notice_is_refused_and_counted(device: Device, forgery: str,
                                                    reason: str) -> None:
    consent = device.consent(lapses=True)
    device.deliver(consent)
    target, key, request = consent, device.gateway, None
    if forgery == "signed_by_another_key":
        key = SigningKey.generate()
    elif forgery == "signed_by_the_owner":
        key = device.owner.signing
    elif forgery == "consent_of_another_owner":
        target = device.consent(OwnerKey.generate().signing, lapses=True)
    elif forgery == "consent_for_another_device":
        target = device.consent(devices=(bytes(16),), lapses=True)
    else:
        request = b"\x01" * 32
    device.deliver(notice(target, key, request))
    assert [g.consent_hash for g in device.book.grants()] == [consent.id]
    assert device.book.refused == {reason: 1}


def test_device_without_pinned_gateway_key_refuses_lapse_notices(device: Device) -> None:
    from agent.policy import PolicyInbox  # noqa: PLC0415
    inbox = PolicyInbox(device.book, device.outbox, device_id=device.device_id,
                        owner=device.owner.public_key, streams={"climate"},
                        clock=device.clock)
    consent = device.consent(lapses=True)
    inbox.apply(consent.raw)
    inbox.apply(notice(consent, device.gateway).raw)
    assert len(device.book.grants()) == 1
    assert device.book.refused == {"unsigned_policy": 1}
