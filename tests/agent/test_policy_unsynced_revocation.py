"""Policy deliveries the device must not be fooled or worn out by.

A revocation applied before the wall clock is synced must stay in force after it syncs.

The device remembers the revocation of a consent it never applied for a while (its period
unknown); that while was measured from the wall clock at the time, even when the clock was
not synced (a Pi without RTC, before NTP). Once the clock synced, forget_ended dropped the
tombstone at once and a replay of the revoked consent was applied again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from agent.grants import GrantBook
from protocol.delivery import PolicyDelivery
from tests.agent.test_policy import HOUR, T0, Device

YEAR_MS = 365 * 24 * HOUR


def test_revocation_applied_with_unsynced_clock_is_not_forgotten_once_synced(
        tmp_path: Path) -> None:
    device = Device(tmp_path)
    consent = device.consent(until=T0 + HOUR)  # signed by the owner, not yet delivered
    device.clock.synced = False
    device.clock.jump_wall(-2 * YEAR_MS)  # booted without RTC: the wall clock far behind
    device.deliver(device.revocation(consent, 1))  # arrives first (or alone)
    assert device.book.is_revoked(consent.id)
    device.clock.jump_wall(2 * YEAR_MS)  # NTP: the clock is right again
    device.clock.synced = True
    device.book.forget_ended(device.clock.wall_ms(), True)  # the agent's housekeeping
    device.deliver(consent)  # the gateway replays the consent
    assert device.book.grants() == (), "a revoked consent was applied again"
    device.reading()
    assert not any("~" in s for s in device.streams_stored()), "sealed to the revoked"
    assert device.book.is_revoked(consent.id)
    assert device.book.refused["consent_revoked"] == 1
    # ... and the tombstone survives a restart, then ends a year after the sync.
    book = GrantBook(tmp_path / "grants.json")
    assert book.is_revoked(consent.id)
    book.forget_ended(device.clock.wall_ms() + YEAR_MS + 2 * 86_400_000, True)
    assert not book.is_revoked(consent.id)


def test_policy_delivery_of_junk_documents_costs_one_book_write_and_one_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """A 300-byte delivery of 64 junk documents rewrote and fsynced grants.json 64 times
    and logged 64 warnings: anyone able to publish on the policy topic could turn each
    small message into 64 SD-card writes and 64 journal lines. Every refusal is still
    counted (and on disk for ``status``)."""
    device = Device(tmp_path)
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    junk = PolicyDelivery(tuple((i, b"\x00") for i in range(64)), 64, False).to_cbor()
    with caplog.at_level(logging.WARNING, logger="agent.policy"):
        for _ in range(3):
            device.inbox.deliver(junk)
    assert device.book.refused == {"malformed": 192}
    assert len(fsyncs) == 3
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    assert GrantBook(tmp_path / "grants.json").refused == {"malformed": 192}
    device.clock.advance(61_000)  # a minute on: the next refusal is said again
    with caplog.at_level(logging.WARNING, logger="agent.policy"):
        device.inbox.deliver(junk)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2
