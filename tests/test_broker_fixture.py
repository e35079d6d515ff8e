import threading

import paho.mqtt.client as mqtt

from firmware_sim.broker import MosquittoBroker


def test_private_broker_delivers_qos1_and_restarts_on_same_port(broker: MosquittoBroker) -> None:
    got = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-sub", protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.set()
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("t/x", qos=1)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-pub", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    import time
    time.sleep(0.3)
    pub.publish("t/x", b"hello", qos=1).wait_for_publish(5)
    assert got.wait(5)
    pub.loop_stop(); sub.loop_stop()
    port = broker.port
    broker.kill()
    broker.start()
    assert broker.port == port
