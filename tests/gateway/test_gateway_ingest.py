"""End to end through a real Mosquitto: honest traffic, redelivery, and every attack."""

from __future__ import annotations

import os
import random
import time

import httpx

from protocol import cbor
from protocol.batch import MAX_BATCH_BYTES, records_topic
from protocol.receipt import Status
from protocol.record import KeyRotation, Measurement, Record, Values
from protocol.signed import record_hash, sign_record
from tests.gateway.gwkit import (
    ADMIN_TOKEN,
    DeviceClient,
    TestDevice,
    batch_bytes,
    make_key,
    register,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def statuses(receipt) -> list[object]:
    return [o.reason if o.status is Status.REJECTED else o.status for o in receipt.outcomes]


def test_honest_records_from_several_devices_are_logged_once(gateway, devices) -> None:
    fleet = [TestDevice.create(f"dev-{i}", seed=i) for i in range(4)]
    for dev in fleet:
        register(gateway.base_url, dev)
    for batch_id in range(1, 4):
        for dev in fleet:
            devices.send(dev, dev.records(10), batch_id)
    indices = []
    for dev in fleet:
        for batch_id in range(1, 4):
            receipt = devices.wait_for(dev.device_id, batch_id)
            assert all(o.status is Status.ACCEPTED for o in receipt.outcomes)
            indices += [o.leaf_index for o in receipt.outcomes]
            assert receipt.checkpoint.startswith("gateway.test/edgeproof\n")
    assert sorted(indices) == list(range(120))
    stats = httpx.get(f"{gateway.base_url}/v1/stats").json()
    assert stats["log_size"] == 120
    assert stats["records_accepted"] == 120
    # every logged leaf is the exact signed bytes the device sent
    for dev in fleet:
        logged = httpx.get(f"{gateway.base_url}/v1/devices/{dev.device_id.hex()}/records",
                           params={"limit": 100}).json()["records"]
        assert [bytes.fromhex(r["record"]) for r in logged] == [s.raw for s in dev.signed]


def test_redelivered_batch_gets_the_same_leaf_indices(gateway, devices) -> None:
    dev = TestDevice.create("dev-redeliver", 7)
    register(gateway.base_url, dev)
    payload = batch_bytes(dev.records(6), 1)
    devices.publish(dev.device_id, payload)
    first = devices.wait_for(dev.device_id, 1)
    devices.publish(dev.device_id, payload)
    again = devices.wait_for(dev.device_id, 1, count=2)
    assert [o.status for o in again.outcomes] == [Status.DUPLICATE] * 6
    assert [o.leaf_index for o in again.outcomes] == [o.leaf_index for o in first.outcomes]
    # a batch mixing old and new records: old ones are duplicates, new ones appended
    mixed = [s.raw for s in dev.signed[3:]] + dev.records(2)
    devices.send(dev, mixed, 2)
    receipt = devices.wait_for(dev.device_id, 2)
    assert [o.status for o in receipt.outcomes] == [Status.DUPLICATE] * 3 + [Status.ACCEPTED] * 2
    assert httpx.get(f"{gateway.base_url}/v1/stats").json()["log_size"] == 8


def test_equivocation_is_rejected_and_flagged(gateway, devices) -> None:
    dev = TestDevice.create("dev-equivocate", 8)
    register(gateway.base_url, dev)
    devices.send(dev, dev.records(3), 1)
    devices.wait_for(dev.device_id, 1)
    original = dev.signed[1]
    forged = Record(original.record.boot, 1, original.record.prev, original.record.wall_ms,
                    True, original.record.mono_ms, "climate",
                    Values(original.record.body.values[:0] or _other_values()))
    devices.send(dev, [dev.sign_raw(forged)], 2)
    receipt = devices.wait_for(dev.device_id, 2)
    assert statuses(receipt) == ["equivocation"]
    listed = httpx.get(f"{gateway.base_url}/v1/devices", headers=ADMIN).json()
    assert [d["equivocated"] for d in listed] == [True]
    stats = httpx.get(f"{gateway.base_url}/v1/stats").json()
    assert stats["equivocations"] == 1
    assert stats["rejections"]["equivocation"] == 1


def _other_values():
    return (Measurement(999, 0, "Cel"),)


def test_attacks_are_rejected_with_their_codes_while_honest_traffic_flows(
        gateway, devices) -> None:
    rng = random.Random(42)
    honest = TestDevice.create("honest", 1)
    victim = TestDevice.create("victim", 2)
    stranger = TestDevice.create("stranger", 3)  # never registered
    register(gateway.base_url, honest)
    register(gateway.base_url, victim)
    sent = 0

    def honest_batch() -> None:
        nonlocal sent
        sent += 1
        devices.send(honest, honest.records(5), sent)

    honest_batch()
    devices.send(stranger, stranger.records(2), 1)
    honest_batch()
    # bad signature: flip the last byte of the signature
    good = victim.next().raw
    devices.send(victim, [good[:-1] + bytes([good[-1] ^ 1])], 1)
    honest_batch()
    # wrong key: the stranger signs as the victim
    victim_record = victim.next().record
    devices.send(victim, [sign_record(victim_record, victim.device_id, stranger.key).raw], 2)
    # wrong topic: the victim's genuine record on the honest device's topic
    devices.publish(honest.device_id, batch_bytes([victim.next().raw], 100),
                    topic=records_topic(honest.device_id))
    honest_batch()
    # truncated record, deeply nested record, random bytes as a record
    deep = b"\x81" * 200 + b"\x00"
    devices.send(victim, [victim.next().raw[:-7], deep, rng.randbytes(300)], 4)
    # unreadable messages: random bytes, deeply nested, oversized
    devices.publish(victim.device_id, rng.randbytes(500))
    devices.publish(victim.device_id, b"\x81" * 5000 + b"\x00")
    # (just over the cap: the broker drops anything past the gateway's Maximum Packet Size)
    devices.publish(victim.device_id, os.urandom(MAX_BATCH_BYTES + 1))
    # a topic that names no device
    devices.publish(victim.device_id, batch_bytes([victim.next().raw], 9),
                    topic="edgeproof/v1/devices/not-hex/records")
    honest_batch()

    assert statuses(devices.wait_for(stranger.device_id, 1)) == ["unknown_device"] * 2
    assert statuses(devices.wait_for(victim.device_id, 1)) == ["bad_signature"]
    assert statuses(devices.wait_for(victim.device_id, 2)) == ["bad_signature"]
    assert statuses(devices.wait_for(honest.device_id, 100)) == ["wrong_topic"]
    assert statuses(devices.wait_for(victim.device_id, 4)) == ["malformed"] * 3
    unreadable = [devices.wait_for(victim.device_id, 0, count=n) for n in (1, 2, 3)]
    assert [statuses(r) for r in unreadable] == [["malformed"], ["malformed"], ["too_large"]]
    assert all(r.outcomes[0].seq is None for r in unreadable)
    for batch_id in range(1, sent + 1):
        receipt = devices.wait_for(honest.device_id, batch_id)
        assert [o.status for o in receipt.outcomes] == [Status.ACCEPTED] * 5, batch_id
    stats = httpx.get(f"{gateway.base_url}/v1/stats").json()
    assert stats["log_size"] == 5 * sent
    assert stats["rejections"]["bad_signature"] == 2
    assert stats["rejections"]["unknown_device"] == 2
    assert stats["batches_unreadable"] == {"malformed": 2, "too_large": 1, "wrong_topic": 1}
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert 'edgeproof_gateway_rejections_total{reason="wrong_topic"} 1.0' in metrics


def test_revocation_takes_effect_at_once(gateway, devices) -> None:
    dev = TestDevice.create("dev-revoke", 11)
    register(gateway.base_url, dev)
    devices.send(dev, dev.records(2), 1)
    assert statuses(devices.wait_for(dev.device_id, 1)) == [Status.ACCEPTED] * 2
    response = httpx.post(f"{gateway.base_url}/v1/devices/{dev.device_id.hex()}/revoke",
                          headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    devices.send(dev, dev.records(1), 2)
    assert statuses(devices.wait_for(dev.device_id, 2)) == ["revoked_device"]


def test_chain_breaks_are_rejected(gateway, devices) -> None:
    dev = TestDevice.create("dev-chain", 12)
    register(gateway.base_url, dev)
    devices.send(dev, dev.records(3), 1)
    devices.wait_for(dev.device_id, 1)
    # seq 3 claiming a prev that is not record 2's hash
    dev.prev = record_hash(b"something else")
    devices.send(dev, [dev.next().raw], 2)
    assert statuses(devices.wait_for(dev.device_id, 2)) == ["chain_mismatch"]
    # a record whose successor is logged must be the one the successor points to
    late = TestDevice.create("dev-late", 13)
    register(gateway.base_url, late)
    first, second = late.next(), late.next()
    devices.send(late, [second.raw], 1)
    impostor = Record(0, 0, bytes(32), first.record.wall_ms, True, 1, "climate",
                      Values(_other_values()))
    devices.send(late, [late.sign_raw(impostor), first.raw], 2)
    assert statuses(devices.wait_for(late.device_id, 2)) == ["chain_mismatch", Status.ACCEPTED]


def test_clock_rules_reject_future_and_mark_unsynced(gateway, devices) -> None:
    dev = TestDevice.create("dev-clock", 14)
    register(gateway.base_url, dev)
    dev.wall_ms = int(time.time() * 1000) + 3_600_000
    future = dev.next().raw
    dev.synced = False
    unsynced = dev.next().raw
    devices.send(dev, [future, unsynced], 1)
    receipt = devices.wait_for(dev.device_id, 1)
    assert statuses(receipt)[0] == "future_timestamp"
    assert receipt.outcomes[1].status is Status.ACCEPTED
    leaf = httpx.get(f"{gateway.base_url}/v1/leaves/{receipt.outcomes[1].leaf_index}").json()
    assert leaf["clock_unsynced"] is True


def test_gap_is_logged_and_rotation_switches_the_key(gateway, devices) -> None:
    dev = TestDevice.create("dev-rotate", 15)
    register(gateway.base_url, dev)
    devices.send(dev, dev.records(2), 1)
    dev.seq, dev.prev = 5, record_hash(b"dropped record 4")  # the outbox dropped 2..4
    devices.send(dev, [dev.gap(2, 4).raw], 2)
    assert statuses(devices.wait_for(dev.device_id, 2)) == [Status.ACCEPTED]
    old_key, new_key = dev.key, make_key(random.Random(99))
    rotation = dev.rotate(new_key)
    after = dev.next()
    devices.send(dev, [rotation.raw, after.raw], 3)
    assert statuses(devices.wait_for(dev.device_id, 3)) == [Status.ACCEPTED] * 2
    # the old key can no longer sign new records; a rotation back to a used key is refused
    stolen = Record(1, dev.seq, after.hash, dev.wall_ms + 1, True, dev.mono_ms + 1, "climate",
                    Values(_other_values()))
    devices.send(dev, [sign_record(stolen, dev.device_id, old_key).raw], 4)
    assert statuses(devices.wait_for(dev.device_id, 4)) == ["bad_signature"]
    devices.send(dev, [dev.next(KeyRotation(old_key.public_key), stream="rotation").raw], 5)
    assert statuses(devices.wait_for(dev.device_id, 5)) == ["bad_rotation"]
    stats = httpx.get(f"{gateway.base_url}/v1/stats").json()
    assert stats["gaps_declared"] == 1
    listed = httpx.get(f"{gateway.base_url}/v1/devices", headers=ADMIN).json()
    assert listed[0]["current_key"] == new_key.public_key.hex()


def test_second_receipt_listener_sees_signed_receipts(broker, gateway) -> None:
    # Receipts verify under the verifier key the API publishes.
    verifier = httpx.get(f"{gateway.base_url}/v1/verifier-key").text
    client = DeviceClient(broker.port, verifier, client_id="second-listener")
    try:
        dev = TestDevice.create("dev-listen", 16)
        register(gateway.base_url, dev)
        client.send(dev, dev.records(1), 1)
        assert client.wait_for(dev.device_id, 1).outcomes[0].status is Status.ACCEPTED
        assert client.bad_receipts == 0
    finally:
        client.close()


def test_batch_id_and_checkpoint_note_round_trip(gateway, devices) -> None:
    dev = TestDevice.create("dev-rt", 17)
    register(gateway.base_url, dev)
    devices.send(dev, dev.records(1), 2**40)
    receipt = devices.wait_for(dev.device_id, 2**40)
    assert receipt.checkpoint.count("\n") >= 5
    assert cbor.decode(receipt.to_cbor())[3] == 2**40


def test_integers_at_the_stores_maximum_are_malformed_and_the_sequencer_goes_on(
        gateway, devices) -> None:
    # Before: a record at seq 2^63-1, or a usage interval starting there, passed decoding
    # and overflowed seq + 1 / start + 1 in the rules: the sequencer died, and died again
    # at every redelivery of the unacknowledged message.
    top = 2**63 - 1
    at_top = TestDevice.create("dev-top-seq", 41)
    usage = TestDevice.create("dev-top-usage", 42)
    honest = TestDevice.create("dev-next-door", 43)
    for dev in (at_top, usage, honest):
        register(gateway.base_url, dev)
    at_top.seq = top
    devices.send(at_top, at_top.records(1), 1)
    usage.mono_ms = top - 1
    devices.send(usage, [usage.usage(top, top, 0).raw], 1)
    assert [o.reason for o in devices.wait_for(at_top.device_id, 1).outcomes] == ["malformed"]
    assert [o.reason for o in devices.wait_for(usage.device_id, 1).outcomes] == ["malformed"]
    devices.send(honest, honest.records(3), 1)
    assert statuses(devices.wait_for(honest.device_id, 1)) == [Status.ACCEPTED] * 3


def test_credit_an_owners_balance_cannot_hold_is_refused_and_the_gateway_goes_on(
        gateway, devices) -> None:
    # Before: each device's credit was capped at 2^63 - 1, but not its owner's sum over
    # devices; one more usage record made SQLite's SUM raise at every checkpoint from then
    # on, and the gateway stopped, for good (the state was committed).
    big = TestDevice.create("dev-credit-big", 51)
    small = TestDevice.create("dev-credit-small", 52)
    honest = TestDevice.create("dev-credit-other", 53)
    register(gateway.base_url, big, owner="carol")
    register(gateway.base_url, small, owner="carol")
    register(gateway.base_url, honest, owner="dave")
    end = 2**63 - 2  # the longest interval a record may state
    for boot in range(1, 11):  # ten boots of end // 10 credit: 2^63 - 8 in all
        big.boot, big.mono_ms = boot, end
        devices.send(big, [big.usage(0, end, end).raw], boot)
        assert statuses(devices.wait_for(big.device_id, boot)) == [Status.ACCEPTED]
    small.mono_ms = 2000
    devices.send(small, [small.usage(0, 1000, 1000).raw], 1)  # 100 more for carol
    assert statuses(devices.wait_for(small.device_id, 1)) == ["usage_too_long"]
    devices.send(honest, honest.records(2), 1)
    assert statuses(devices.wait_for(honest.device_id, 1)) == [Status.ACCEPTED] * 2
    balances = httpx.get(f"{gateway.base_url}/v1/balances").json()
    assert balances  # the balances still add up (a checkpoint's table, and now)


def test_a_device_rotating_without_end_is_stopped_at_its_64th_key(gateway, devices) -> None:
    # Before: rotations were accepted without limit, and every later message of the device
    # read its whole key history on threads every device shares (12.5 ms a look-up at
    # 6,001 keys; an honest device's receipts waited 16 s under a flood of tiny messages).
    dev = TestDevice.create("dev-rotator", 61)
    register(gateway.base_url, dev)
    rng = random.Random(6100)  # not 61: its first key is the device's own
    devices.send(dev, dev.records(1), 1)
    assert statuses(devices.wait_for(dev.device_id, 1)) == [Status.ACCEPTED]
    devices.send(dev, [dev.rotate(make_key(rng)).raw for _ in range(63)], 2)
    assert statuses(devices.wait_for(dev.device_id, 2)) == [Status.ACCEPTED] * 63
    devices.send(dev, [dev.rotate(make_key(rng)).raw], 3)
    assert statuses(devices.wait_for(dev.device_id, 3)) == ["bad_rotation"]
