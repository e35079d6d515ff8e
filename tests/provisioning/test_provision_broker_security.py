"""The broker files provisioning generates, enforced by a real Mosquitto.

Devices are provisioned through the CLI against the real gateway; each test then connects
with the credentials found in the device's bundle, exactly as the agent would.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from protocol import reasons
from protocol.batch import Batch, receipts_topic, records_topic
from protocol.keys import load_device_key
from protocol.receipt import Receipt, Status
from protocol.record import GENESIS_PREV, Measurement, Record, Values
from protocol.signed import sign_record
from provisioning.devices_store import BROKER_PASSWORD, DEVICE_KEY, bundle_dir, load_record
from tests.harness.waiting import within
from tests.provisioning.provision_live import LiveFleet, gateway_probe, set_fleet_option
from tests.provisioning.provision_probe import REFUSED, Probe, connect

QUIET_WAIT_S = 1.0  # how long "nothing arrives" is watched for
SETTLE_S = 30.0  # upper bound for the broker to apply a reload (a slow, loaded machine)


def add_device(live: LiveFleet, name: str) -> tuple[str, str]:
    """Provision ``name``; return its broker (user, password) from the bundle."""
    assert live.run("device", "add", name) == 0
    record = load_record(live.config, name)
    password = (bundle_dir(live.config, name) / BROKER_PASSWORD).read_text().strip()
    return record.broker_user, password


def wait_until(predicate: Callable[[], bool], timeout: float = SETTLE_S) -> bool:
    return within(predicate, timeout, every_s=0.05)


def connect_when_accepted(live: LiveFleet, user: str, password: str) -> Probe:
    """Connect, retrying while the broker has not yet applied the reload that added us."""
    found: list[Probe] = []

    def attempt() -> bool:
        probe = connect(live.broker.port, user, password)
        if probe.connack is not None and not probe.connack.is_failure:
            found.append(probe)
            return True
        return False

    assert wait_until(attempt), f"{user} never accepted by the broker"
    return found[0]


def is_refused(live: LiveFleet, user: str, password: str) -> bool:
    probe = connect(live.broker.port, user, password)
    probe.close()
    return probe.connack is not None and str(probe.connack) in REFUSED


def test_device_publishes_on_its_own_records_topic_and_the_gateway_user_receives_it(
        live_fleet: LiveFleet) -> None:
    user, password = add_device(live_fleet, "own-topic")
    watcher = gateway_probe(live_fleet)
    device = connect_when_accepted(live_fleet, user, password)
    try:
        topic = records_topic(bytes.fromhex(user))
        assert watcher.subscribe(topic).value == 1  # granted QoS 1
        rc = device.publish(topic, b"not a batch")
        assert not rc.is_failure
        assert watcher.wait_message(5.0)
        assert watcher.messages == [(topic, b"not a batch")]
    finally:
        device.close()
        watcher.close()


def test_device_credentials_cannot_publish_on_another_devices_topic(
        live_fleet: LiveFleet) -> None:
    user, password = add_device(live_fleet, "forger")
    victim, _ = add_device(live_fleet, "victim")
    watcher = gateway_probe(live_fleet)
    device = connect_when_accepted(live_fleet, user, password)
    try:
        victim_topic = records_topic(bytes.fromhex(victim))
        watcher.subscribe(victim_topic)
        rc = device.publish(victim_topic, b"forged")
        assert str(rc) == "Not authorized"
        assert not watcher.wait_message(QUIET_WAIT_S)
        assert watcher.messages == []
    finally:
        device.close()
        watcher.close()


def test_device_credentials_cannot_read_another_devices_receipts(
        live_fleet: LiveFleet) -> None:
    user, password = add_device(live_fleet, "snoop")
    victim, _ = add_device(live_fleet, "private")
    device = connect_when_accepted(live_fleet, user, password)
    gateway = gateway_probe(live_fleet)
    try:
        # Mosquitto 2.0 may grant the SUBACK and filter at delivery (the ACL's read check
        # runs per message), so the proof is that nothing arrives.
        device.subscribe(receipts_topic(bytes.fromhex(victim)))
        device.subscribe("edgeproof/v1/devices/+/receipts")
        assert not gateway.publish(receipts_topic(bytes.fromhex(victim)), b"r").is_failure
        assert not device.wait_message(QUIET_WAIT_S)
        assert device.messages == []
    finally:
        device.close()
        gateway.close()


def test_device_reads_its_own_receipts_written_by_the_gateway_user(
        live_fleet: LiveFleet) -> None:
    user, password = add_device(live_fleet, "reader")
    device = connect_when_accepted(live_fleet, user, password)
    gateway = gateway_probe(live_fleet)
    try:
        own = receipts_topic(bytes.fromhex(user))
        assert device.subscribe(own).value == 1
        assert not gateway.publish(own, b"receipt").is_failure
        assert device.wait_message(5.0)
        assert device.messages == [(own, b"receipt")]
    finally:
        device.close()
        gateway.close()


def test_wrong_password_is_refused(live_fleet: LiveFleet) -> None:
    user, password = add_device(live_fleet, "wrongpw")
    connect_when_accepted(live_fleet, user, password).close()
    assert is_refused(live_fleet, user, password + "x")


def test_unknown_user_and_anonymous_are_refused(live_fleet: LiveFleet) -> None:
    assert is_refused(live_fleet, "0" * 32, "whatever")
    anonymous = connect(live_fleet.broker.port, None, None)
    assert anonymous.connack is not None
    assert str(anonymous.connack) in REFUSED


def test_gateway_user_cannot_publish_records_as_a_device(live_fleet: LiveFleet) -> None:
    user, _ = add_device(live_fleet, "impersonated")
    gateway = gateway_probe(live_fleet)
    try:
        assert str(gateway.publish(records_topic(bytes.fromhex(user)), b"x")) == "Not authorized"
    finally:
        gateway.close()


def signed_batch(live: LiveFleet, name: str) -> bytes:
    """A real one-record batch signed with the device's bundle key."""
    key = load_device_key(bundle_dir(live.config, name) / DEVICE_KEY)
    device_id = bytes.fromhex(load_record(live.config, name).device_id)
    record = Record(boot=1, seq=0, prev=GENESIS_PREV, wall_ms=int(time.time() * 1000),
                    clock_synced=True, mono_ms=1000, stream="cpu",
                    body=Values((Measurement(421, -1, "Cel"),)))
    return Batch(1, (sign_record(record, device_id, key).raw,)).to_cbor()


def test_revoked_device_is_rejected_by_gateway_at_once_and_refused_by_broker_after_reload(
        live_fleet: LiveFleet, capsys: pytest.CaptureFixture[str]) -> None:
    user, password = add_device(live_fleet, "stolen")
    device_id = bytes.fromhex(user)
    pid_file = str(live_fleet.config.broker_control.pid_file)
    # No broker control: revoke updates the files but cannot reload; the broker still admits
    # the device, so its next record reaches the gateway, which must reject it at once.
    set_fleet_option(live_fleet.root, "pid_file", "")
    try:
        device = connect_when_accepted(live_fleet, user, password)
        capsys.readouterr()
        assert live_fleet.run("device", "revoke", "stolen") == 0
        assert "systemctl reload mosquitto" in capsys.readouterr().out
        assert device.subscribe(receipts_topic(device_id)).value == 1
        assert not device.publish(records_topic(device_id), signed_batch(live_fleet, "stolen"))\
            .is_failure
        assert device.wait_message(10.0), "no receipt from the gateway"
        v = live_fleet.verifier
        receipt = Receipt.verify(device.messages[0][1], v.public_key, v.key_id)
        assert [(o.status, o.reason) for o in receipt.outcomes] == [
            (Status.REJECTED, reasons.REVOKED_DEVICE)]
    finally:
        set_fleet_option(live_fleet.root, "pid_file", pid_file)
    # Revoke again with the pid file configured: the broker reloads, drops the live
    # connection and refuses the credential from then on.
    assert live_fleet.run("device", "revoke", "stolen") == 0
    assert wait_until(lambda: not device.client.is_connected())
    assert wait_until(lambda: is_refused(live_fleet, user, password))
    device.close()
