"""What a verifying process hands to the sequencer through the database (gateway/cluster.py):
the sequencer does not verify a signature twice, yet never trusts a verdict list that does
not fit the batch, and a message rejected whole keeps its reason."""

from __future__ import annotations

import dataclasses
import random

from gateway.cluster import pending_batch, reprepare
from gateway.config import Limits
from gateway.store import STATUS_ACTIVE, Device, KeyEntry
from gateway.verify import oversize_batch, prepare_batch
from protocol import reasons
from protocol.batch import records_topic
from protocol.record import Gap, Usage
from tests.gateway.gwkit import TestDevice, batch_bytes, make_key

LIMITS = Limits()


def _registered(device: TestDevice) -> Device:
    return Device(device.device_id, device.name, "alice", 0, STATUS_ACTIVE,
                  (KeyEntry(0, device.enrolled_key),), 0, 0, 0, None)


def _no_lookup(kid: bytes) -> Device | None:
    raise AssertionError("the sequencer looked a key up to verify again")


def test_sequencer_takes_the_verifiers_verdicts_without_verifying_again() -> None:
    device = TestDevice.create("handed", 41)
    payload = batch_bytes(device.records(3), 7)
    topic = records_topic(device.device_id)
    verified = prepare_batch(topic, payload, 0.0, LIMITS, lambda kid: _registered(device))
    again = reprepare(pending_batch(verified, payload), 1.0, LIMITS, _no_lookup)
    assert again.batch_id == 7
    assert [r.good_key for r in again.records] == [device.enrolled_key] * 3
    assert [r.raw for r in again.records] == [r.raw for r in verified.records]


def test_bad_signature_verdict_travels_as_bad() -> None:
    device = TestDevice.create("forger", 42)
    registered = _registered(device)
    device.key = make_key(random.Random(99))  # signs with a key that is not registered
    payload = batch_bytes(device.records(1), 1)
    topic = records_topic(device.device_id)
    verified = prepare_batch(topic, payload, 0.0, LIMITS, lambda kid: registered)
    again = reprepare(pending_batch(verified, payload), 1.0, LIMITS, _no_lookup)
    assert again.records[0].bad_key == device.enrolled_key
    assert not again.records[0].signature_valid(device.enrolled_key)


def test_verdict_list_that_does_not_fit_the_batch_is_ignored_and_verified_here() -> None:
    device = TestDevice.create("mismatch", 43)
    payload = batch_bytes(device.records(2), 1)
    topic = records_topic(device.device_id)
    verified = prepare_batch(topic, payload, 0.0, LIMITS, lambda kid: _registered(device))
    handed = pending_batch(verified, payload)
    truncated = type(handed)(handed.id, handed.topic, handed.payload, handed.payload_hash,
                             handed.reject, handed.verdicts[:33])
    looked_up: list[bytes] = []

    def lookup(kid: bytes) -> Device | None:
        looked_up.append(kid)
        return _registered(device)

    again = reprepare(truncated, 1.0, LIMITS, lookup)
    assert looked_up == [device.device_id]
    assert [r.good_key for r in again.records] == [device.enrolled_key] * 2


def test_message_rejected_whole_keeps_its_reason_and_hash() -> None:
    device = TestDevice.create("big", 44)
    topic = records_topic(device.device_id)
    rejected = oversize_batch(topic, b"x" * 10, 0.0)
    handed = pending_batch(rejected, b"")
    assert handed.payload == b""
    again = reprepare(handed, 1.0, LIMITS, _no_lookup)
    assert again.reject == reasons.TOO_LARGE
    assert again.payload_hash == rejected.payload_hash
    assert again.topic_device == device.device_id


def _fields(record: object) -> tuple[object, ...]:
    return tuple(getattr(record, name) for name in
                 ("boot", "seq", "prev", "wall_ms", "clock_synced", "mono_ms", "stream"))


def test_sequencer_rebuilds_records_from_what_the_verifier_parsed_and_decodes_rule_bodies(
        ) -> None:
    device = TestDevice.create("parsed", 45)
    raws = [*device.records(3), device.usage(1000, 5000, 4000).raw, device.gap(1, 2).raw]
    raws.append(b"\xa0")  # a record that is no COSE_Sign1: malformed, prepared again
    payload = batch_bytes(raws, 8)
    topic = records_topic(device.device_id)
    verified = prepare_batch(topic, payload, 0.0, LIMITS, lambda kid: _registered(device))
    again = reprepare(pending_batch(verified, payload), 1.0, LIMITS, _no_lookup)

    assert [type(r.record).__name__ for r in again.records] == \
        ["Header"] * 3 + ["Record", "Record", "NoneType"]
    assert [type(r.record.body) for r in again.records[:5] if r.record is not None] == \
        [type(None)] * 3 + [Usage, Gap]
    for mine, theirs in zip(again.records, verified.records, strict=True):
        assert (mine.raw, mine.hash, mine.reject, mine.signer, mine.good_key) == \
            (theirs.raw, theirs.hash, theirs.reject, theirs.signer, theirs.good_key)
        if theirs.record is not None:
            assert _fields(mine.record) == _fields(theirs.record)
    assert again.records[-1].reject == reasons.MALFORMED
    assert (again.batch_id, again.payload_hash) == (8, verified.payload_hash)


def test_parsed_list_that_does_not_fit_the_payload_is_ignored_and_decoded_again() -> None:
    device = TestDevice.create("misparsed", 46)
    payload = batch_bytes(device.records(2), 1)
    topic = records_topic(device.device_id)
    verified = prepare_batch(topic, payload, 0.0, LIMITS, lambda kid: _registered(device))
    handed = pending_batch(verified, payload)
    assert handed.parsed is not None
    for parsed in (handed.parsed[:-1], handed.parsed + b"\x01", b"\x07" + handed.parsed[1:]):
        broken = dataclasses.replace(handed, parsed=parsed)
        again = reprepare(broken, 1.0, LIMITS, _no_lookup)
        assert [type(r.record).__name__ for r in again.records] == ["Record"] * 2
        assert [_fields(r.record) for r in again.records] == \
            [_fields(r.record) for r in verified.records]
        assert [r.good_key for r in again.records] == [device.enrolled_key] * 2
