"""The test broker fixture itself: a real Mosquitto that delivers and restarts in place."""

import threading

import paho.mqtt.client as mqtt

from firmware_sim.broker import MosquittoBroker


def _client(name: str) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)


def test_private_broker_delivers_qos1_and_restarts_on_same_port(broker: MosquittoBroker) -> None:
    got, subscribed = threading.Event(), threading.Event()
    sub = _client("t-sub")
    sub.on_message = lambda c, u, m: got.set()
    sub.on_subscribe = lambda c, u, mid, codes, props: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    sub.subscribe("t/x", qos=1)
    assert subscribed.wait(5)
    pub = _client("t-pub")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    info = pub.publish("t/x", b"hello", qos=1)
    info.wait_for_publish(5)
    assert info.is_published()
    assert got.wait(5)
    pub.loop_stop()
    sub.loop_stop()
    port = broker.port
    broker.kill()
    broker.start()
    assert broker.port == port
