"""The gateway and the agent announce a Maximum Packet Size on CONNECT (MQTT 5 §3.1.2.11.4),
so even a broker without a size limit of its own never hands them more than the protocol's
caps allow. A real Mosquitto (the anonymous test fixture: no max_packet_size there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.uplink.transport import BrokerSettings, MqttConfig, MqttTransport
from firmware_sim.broker import MosquittoBroker
from gateway.config import BrokerConfig
from gateway.ingest import Message, MqttIngest
from osutil.mqtt import Connected, Received, SubAck
from protocol.batch import receipts_topic, records_topic
from protocol.mqtt_sizes import MAX_RECEIPT_PACKET_BYTES, MAX_RECORDS_PACKET_BYTES
from tests.harness.waiting import eventually

DEVICE = bytes(range(16))
TIMEOUT_S = 15.0


def publish_all(port: int, topic: str, payloads: list[bytes]) -> None:
    """Publish QoS 1 from a plain client, in order; return once every PUBACK arrived."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="oversize-sender",
                         protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for payload in payloads:
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(TIMEOUT_S)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def wait_for(predicate: Callable[[], bool]) -> None:
    eventually(predicate, "the condition", TIMEOUT_S)


def test_broker_never_hands_the_gateway_a_batch_larger_than_the_protocol_allows(
        broker: MosquittoBroker) -> None:
    got: list[Message] = []
    lock = threading.Lock()

    def collect(message: Message) -> None:
        with lock:
            got.append(message)

    ingest = MqttIngest(BrokerConfig(host="127.0.0.1", port=broker.port, tls=False,
                                     client_id="gateway-size-test"), collect, time.monotonic)
    ingest.start()
    try:
        topic = records_topic(DEVICE)

        def subscribed() -> bool:  # ingest has no SUBACK hook: wait until a message gets in
            publish_all(broker.port, topic, [b"ready"])
            with lock:
                return bool(got)

        wait_for(subscribed)
        publish_all(broker.port, topic, [b"x" * MAX_RECORDS_PACKET_BYTES, b"small"])
        wait_for(lambda: any(m.payload == b"small" for m in got))
        with lock:  # same publisher, in order: the large one was dropped, not delayed
            assert [m.payload for m in got if m.payload != b"ready"] == [b"small"]
    finally:
        ingest.stop()


def test_broker_never_hands_the_agent_a_receipt_larger_than_the_protocol_allows(
        broker: MosquittoBroker) -> None:
    settings = BrokerSettings(MqttConfig(url=broker.url, host="127.0.0.1", port=broker.port,
                                         tls=False))
    transport = MqttTransport(settings, DEVICE.hex())
    events: list[object] = []

    def poll_until(kind: type) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(isinstance(e, kind) for e in events):
            assert time.monotonic() < deadline, f"no {kind.__name__}"
            events.extend(transport.poll(0.05))

    transport.connect()
    try:
        poll_until(Connected)
        transport.subscribe(receipts_topic(DEVICE))
        poll_until(SubAck)
        sender = threading.Thread(target=publish_all, args=(
            broker.port, receipts_topic(DEVICE), [b"r" * MAX_RECEIPT_PACKET_BYTES, b"receipt"]))
        sender.start()
        deadline = time.monotonic() + TIMEOUT_S
        while not any(isinstance(e, Received) and e.payload == b"receipt" for e in events):
            assert time.monotonic() < deadline, "the small receipt never arrived"
            events.extend(transport.poll(0.05))
        sender.join(TIMEOUT_S)
        assert [e.payload for e in events if isinstance(e, Received)] == [b"receipt"]
    finally:
        transport.close()
