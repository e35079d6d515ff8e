"""Credit settlement: forged usage is rejected with its reason; balances are checkpointed."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx

from protocol import cbor
from protocol.checkpoint import Checkpoint
from protocol.note import NoteVerifier
from protocol.receipt import Status
from protocol.record import credit_micro
from tests.gateway.gwkit import RATE, TestDevice, register
from tests.harness.waiting import eventually


def outcome_codes(receipt) -> list[object]:
    return [o.reason if o.status is Status.REJECTED else o.status for o in receipt.outcomes]


def test_forged_usage_is_rejected_with_its_reason(gateway, devices) -> None:
    dev = TestDevice.create("tv-1", 21)
    register(gateway.base_url, dev, owner="alice")
    dev.mono_ms = 100_000
    honest = dev.usage(10_000, 40_000, 30_000)  # 30 s watched
    overlap = dev.usage(39_000, 50_000, 5_000)  # starts before the previous one ended
    too_long = dev.usage(50_000, 60_000, 10_001)  # more usage than the interval
    future = dev.usage(60_000, 200_000, 1_000)  # ends after the record's own mono time
    wrong_rate = dev.usage(60_000, 70_000, 1_000, rate=RATE * 2)
    second = dev.usage(60_000, 70_000, 10_000)
    devices.send(dev, [r.raw for r in (honest, overlap, too_long, future, wrong_rate, second)], 1)
    receipt = devices.wait_for(dev.device_id, 1)
    assert outcome_codes(receipt) == [Status.ACCEPTED, "usage_overlap", "usage_too_long",
                                      "usage_future", "rate_mismatch", Status.ACCEPTED]
    expected = credit_micro(30_000, RATE) + credit_micro(10_000, RATE)
    assert receipt.settled_micro == expected == 4000


def test_usage_in_a_new_boot_may_reuse_monotonic_times(gateway, devices) -> None:
    dev = TestDevice.create("tv-2", 22)
    register(gateway.base_url, dev, owner="bob")
    dev.mono_ms = 100_000
    devices.send(dev, [dev.usage(1_000, 2_000, 1_000).raw], 1)
    dev.boot += 1
    devices.send(dev, [dev.usage(1_000, 2_000, 1_000).raw], 2)
    assert devices.wait_for(dev.device_id, 1).outcomes[0].status is Status.ACCEPTED
    receipt = devices.wait_for(dev.device_id, 2)
    assert receipt.outcomes[0].status is Status.ACCEPTED
    assert receipt.settled_micro == 2 * credit_micro(1_000, RATE)


def test_balances_per_owner_are_covered_by_the_checkpoint(gateway, devices) -> None:
    owners = {"tv-a": "alice", "tv-b": "alice", "tv-c": "carol"}
    fleet = {name: TestDevice.create(name, 30 + i) for i, name in enumerate(owners)}
    for name, dev in fleet.items():
        register(gateway.base_url, dev, owner=owners[name])
        dev.mono_ms = 10_000_000
    for i, dev in enumerate(fleet.values()):
        devices.send(dev, [dev.usage(0, 3_600_000, 1_800_000 * (i + 1) // 2).raw], 1)
        devices.wait_for(dev.device_id, 1)
    expected = {"alice": credit_micro(900_000, RATE) + credit_micro(1_800_000, RATE),
                "carol": credit_micro(2_700_000, RATE)}
    # wait for a checkpoint that covers all three usage records
    verifier = NoteVerifier.from_text(gateway.verifier)
    def balances() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(f"{gateway.base_url}/v1/balances").json()
        return body if body["checkpoint_size"] == 3 else None
    # 60 s: a bound for a slow machine, not an expected time
    body = eventually(balances, "a checkpoint covering the three usage records", 60,
                      every_s=0.05)
    assert {b["owner"]: b["balance_micro"] for b in body["checkpointed"]} == expected
    assert {b["owner"]: b["balance_micro"] for b in body["current"]} == expected
    table = bytes.fromhex(body["checkpointed_cbor"])
    assert cbor.decode(table) == [["alice", expected["alice"]], ["carol", expected["carol"]]]
    note = httpx.get(f"{gateway.base_url}/v1/checkpoint").text
    checkpoint = Checkpoint.from_note(note, verifier)
    assert checkpoint.size == 3
    line = base64.b64encode(hashlib.sha256(table).digest()).decode()
    assert f"balances {line}" in checkpoint.extensions
