"""osutil.mqtt against a real Mosquitto: one client on its own, many on one hub."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.broker import MosquittoBroker
from osutil.mqtt import (
    AckTimeout,
    ClientOptions,
    Connected,
    Event,
    Hub,
    MqttClient,
    PubAck,
    Received,
    Refused,
    SubAck,
)
from protocol.keys import Secret

WAIT_S = 15.0  # an upper bound for a slow machine, never a timing assertion


def options(broker: MosquittoBroker, client_id: str, **kw: Any) -> ClientOptions:
    return ClientOptions(host="127.0.0.1", port=broker.port, client_id=client_id, **kw)


def pump(client: MqttClient, until: Callable[[list[Event]], bool],
         hub: Hub | None = None) -> list[Event]:
    """Drive ``client`` until ``until(all events so far)``; fail after WAIT_S."""
    seen: list[Event] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if hub is None:
            seen += client.poll(0.05)
        else:
            hub.poll(0.05)
            seen += client.take_events()
        if until(seen):
            return seen
    raise AssertionError(f"condition not reached; events: {seen}")


def has(kind: type) -> Callable[[list[Event]], bool]:
    return lambda events: any(isinstance(e, kind) for e in events)


def test_publish_is_acknowledged_by_mid_and_the_session_persists(
        broker: MosquittoBroker) -> None:
    client = MqttClient(options(broker, "dev-1"))
    client.connect()
    first = pump(client, has(Connected))
    assert not next(e for e in first if isinstance(e, Connected)).session_present
    client.subscribe("t/dev-1")
    pump(client, has(SubAck))
    mid = client.publish("t/dev-1", b"hello")
    events = pump(client, lambda ev: has(PubAck)(ev) and has(Received)(ev))
    ack = next(e for e in events if isinstance(e, PubAck))
    assert (ack.mid, ack.ok, ack.code) == (mid, True, 0)
    assert client.unacked == 0
    assert Received("t/dev-1", b"hello") in events
    client.close()
    again = MqttClient(options(broker, "dev-1"))  # same client id: the broker kept the session
    again.connect()
    events = pump(again, has(Connected))
    assert next(e for e in events if isinstance(e, Connected)).session_present
    again.close()


def test_missing_puback_is_reported_once_as_a_timeout() -> None:
    now = [100.0]
    client = MqttClient(ClientOptions(host="127.0.0.1", port=1, client_id="offline",
                                      ack_timeout_s=5.0), monotonic=lambda: now[0])
    mid = client.publish("t/x", b"queued while offline")  # paho keeps it for the next connect
    assert client.unacked == 1
    assert client.take_events() == []
    now[0] += 5.0
    assert client.take_events() == [AckTimeout(mid)]
    assert client.take_events() == []
    assert client.unacked == 0


@pytest.fixture
def locked_broker(tmp_path: Path) -> MosquittoBroker:
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "dev", "right"], check=True,
                   capture_output=True)
    acl = tmp_path / "acl"
    acl.write_text("user dev\ntopic readwrite allowed/#\n")
    return MosquittoBroker(tmp_path / "broker", extra_config="user root\n",
                           password_file=passwd, acl_file=acl)


def test_wrong_password_is_refused_for_good(locked_broker: MosquittoBroker) -> None:
    locked_broker.start()
    try:
        client = MqttClient(options(locked_broker, "dev", username="dev",
                                    password=Secret(b"wrong")))
        client.connect()
        events = pump(client, has(Refused))
        refused = next(e for e in events if isinstance(e, Refused))
        assert refused.permanent
        assert refused.code in (0x86, 0x87)
        client.close()
    finally:
        locked_broker.kill()


def test_puback_with_a_failure_reason_code_is_not_a_success(
        locked_broker: MosquittoBroker) -> None:
    locked_broker.start()
    try:
        client = MqttClient(options(locked_broker, "dev", username="dev",
                                    password=Secret(b"right")))
        client.connect()
        pump(client, has(Connected))
        mid = client.publish("forbidden/topic", b"x")
        events = pump(client, has(PubAck))
        ack = next(e for e in events if isinstance(e, PubAck))
        assert ack.mid == mid
        assert not ack.ok
        assert ack.code == 0x87
        client.close()
    finally:
        locked_broker.kill()


def test_many_clients_on_one_hub_thread(broker: MosquittoBroker) -> None:
    hub = Hub()
    try:
        clients = [MqttClient(options(broker, f"fleet-{i}", session_expiry_s=60), hub)
                   for i in range(25)]
        for client in clients:
            client.connect()
        for client in clients:
            pump(client, has(Connected), hub)
            client.subscribe("fleet/all")
        for client in clients:
            pump(client, has(SubAck), hub)
        clients[0].publish("fleet/all", b"to everyone")
        for client in clients:
            events = pump(client, has(Received), hub)
            assert Received("fleet/all", b"to everyone") in events
        with pytest.raises(RuntimeError, match=r"Hub\.poll"):
            clients[0].poll(0.0)
    finally:
        hub.close()


def test_maximum_packet_size_keeps_oversized_messages_away(broker: MosquittoBroker) -> None:
    small = MqttClient(options(broker, "small-reader", maximum_packet_size=1024))
    small.connect()
    pump(small, has(Connected))
    small.subscribe("big/#")
    pump(small, has(SubAck))
    sender = MqttClient(options(broker, "sender"))
    sender.connect()
    pump(sender, has(Connected))
    sender.publish("big/one", b"x" * 4096)
    sender.publish("big/two", b"fits")
    pump(sender, lambda ev: sum(isinstance(e, PubAck) for e in ev) == 2)
    events = pump(small, lambda ev: Received("big/two", b"fits") in ev)
    assert [e.topic for e in events if isinstance(e, Received)] == ["big/two"]
    small.close()
    sender.close()
