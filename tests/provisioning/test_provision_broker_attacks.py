"""What one enrolled device's credential cannot do to others, against the real Mosquitto
started with the config ``broker-config`` generates and the real gateway (issue 10, §2).

Client ids are bound to user names, packets are bounded by the protocol's caps, and retained
messages are refused. The bound on queued bytes is in test_provision_broker_queue.py (it
needs a broker with a small bound of its own).
"""

from __future__ import annotations

from pathlib import Path

from protocol.batch import MAX_BATCH_BYTES, receipts_topic, records_topic
from protocol.mqtt_sizes import MAX_RECORDS_PACKET_BYTES
from tests.provisioning.provision_live import LiveFleet, gateway_probe
from tests.provisioning.provision_probe import Probe, connect
from tests.provisioning.test_provision_broker_security import (
    QUIET_WAIT_S,
    add_device,
    connect_when_accepted,
)

SESSION_S = 300


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def gateway_disconnects_since(live: LiveFleet, offset: int) -> list[str]:
    """The gateway's "MQTT disconnected" log lines written after ``offset``."""
    with live.gateway.log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    return [line for line in text.splitlines() if "MQTT disconnected" in line]


def attacker(live: LiveFleet, user: str, password: str, client_id: str) -> Probe:
    """The enrolled device's own credential with someone else's client id (clean start)."""
    probe = connect(live.broker.port, user, password, client_id=client_id, reconnect=False)
    assert probe.connack is not None
    assert not probe.connack.is_failure, probe.connack
    return probe


def test_device_taking_the_gateways_client_id_does_not_disconnect_the_gateway(
        live_fleet: LiveFleet) -> None:
    user, password = add_device(live_fleet, "takeover-gw")
    connect_when_accepted(live_fleet, user, password).close()
    watcher = gateway_probe(live_fleet)  # a second gateway worker's user and client id
    before = log_size(live_fleet.gateway.log)
    try:
        # The gateway's client id, the one it used before ids were bound, and the worker's.
        for stolen in ("gateway", "edgeproof-gateway", live_fleet.watcher_login()[0]):
            attacker(live_fleet, user, password, stolen).close()
        assert not watcher.lost.wait(QUIET_WAIT_S), watcher.disconnect_reasons
        assert gateway_disconnects_since(live_fleet, before) == []
    finally:
        watcher.close()


def test_device_taking_another_devices_client_id_cannot_disconnect_it_or_steal_its_session(
        live_fleet: LiveFleet) -> None:
    victim, victim_pw = add_device(live_fleet, "takeover-victim")
    user, password = add_device(live_fleet, "takeover-thief")
    connect_when_accepted(live_fleet, user, password).close()
    connect_when_accepted(live_fleet, victim, victim_pw).close()
    device = connect(live_fleet.broker.port, victim, victim_pw, client_id=victim,
                     session_expiry_s=SESSION_S)
    assert device.subscribe(receipts_topic(bytes.fromhex(victim))).value == 1
    attacker(live_fleet, user, password, victim).close()
    assert not device.lost.wait(QUIET_WAIT_S), device.disconnect_reasons
    device.close()
    # Offline now: a receipt waits in the victim's session. The thief connects with the
    # victim's client id and a clean start, which would discard that session if it got it.
    gateway = gateway_probe(live_fleet)
    try:
        assert not gateway.publish(receipts_topic(bytes.fromhex(victim)), b"queued").is_failure
    finally:
        gateway.close()
    attacker(live_fleet, user, password, victim).close()
    device = connect(live_fleet.broker.port, victim, victim_pw, client_id=victim,
                     session_expiry_s=SESSION_S)
    try:
        assert device.session_present
        assert device.wait_message(5.0), "the queued receipt is gone"
        assert device.messages == [(receipts_topic(bytes.fromhex(victim)), b"queued")]
    finally:
        device.close()


def test_publish_over_the_protocols_size_cap_is_refused_and_not_delivered(
        live_fleet: LiveFleet) -> None:
    user, password = add_device(live_fleet, "oversize")
    topic = records_topic(bytes.fromhex(user))
    watcher = gateway_probe(live_fleet)
    connect_when_accepted(live_fleet, user, password).close()
    device = connect(live_fleet.broker.port, user, password, reconnect=False)
    before = log_size(live_fleet.gateway.log)
    try:
        assert watcher.subscribe(topic).value == 1
        # The largest batch the protocol allows still passes...
        assert not device.publish(topic, b"b" * MAX_BATCH_BYTES).is_failure
        assert watcher.wait_message(10.0)
        assert [len(p) for _, p in watcher.messages] == [MAX_BATCH_BYTES]
        # ...a packet larger than the largest one it can need closes the sender's connection
        # and is never delivered (not to the gateway, not to another worker).
        device.client.publish(topic, b"x" * MAX_RECORDS_PACKET_BYTES, qos=1)
        assert device.lost.wait(10.0), "the broker kept the sender connected"
        assert device.disconnect_reasons == ["Packet too large"]
        watcher.arrived.clear()
        assert not watcher.wait_message(QUIET_WAIT_S)
        assert [len(p) for _, p in watcher.messages] == [MAX_BATCH_BYTES]
        assert gateway_disconnects_since(live_fleet, before) == []
    finally:
        device.close()
        watcher.close()


def test_retained_publish_from_a_device_is_refused_and_not_retained(
        live_fleet: LiveFleet) -> None:
    user, password = add_device(live_fleet, "retainer")
    topic = records_topic(bytes.fromhex(user))
    connect_when_accepted(live_fleet, user, password).close()
    device = connect(live_fleet.broker.port, user, password, reconnect=False)
    try:
        device.client.publish(topic, b"kept forever", qos=1, retain=True)
        assert device.lost.wait(10.0), "the broker accepted a retained publish"
        assert device.disconnect_reasons[0] == "Retain not supported"
    finally:
        device.close()
    # A new subscription (the gateway reconnecting, a new worker) gets no retained message.
    watcher = gateway_probe(live_fleet)
    try:
        assert watcher.subscribe(topic).value == 1
        assert not watcher.wait_message(QUIET_WAIT_S)
        assert watcher.messages == []
    finally:
        watcher.close()
