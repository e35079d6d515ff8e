"""A test's eyes on a broker: subscribes to everything and keeps what arrived, per topic."""

from __future__ import annotations

import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.harness.waiting import within


class Watcher:
    """Every message on ``broker_url`` (``#``), retained ones included, in arrival order."""

    def __init__(self, broker_url: str, topic: str = "#") -> None:
        host, port = broker_url.split("://", 1)[1].rsplit(":", 1)
        self._lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retained)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
        self._client.on_message = self._on_message
        self._client.connect(host, int(port), keepalive=10)
        self._client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), message.retain))

    def latest(self) -> dict[str, bytes]:
        """Topic -> the last payload seen on it."""
        with self._lock:
            return {topic: payload for topic, payload, _ in self.messages}

    def topics(self) -> set[str]:
        with self._lock:
            return {topic for topic, _, _ in self.messages}

    def wait_for(self, predicate: Callable[[dict[str, bytes]], bool],
                 timeout_s: float = 60.0) -> bool:
        """Poll until ``predicate(latest())`` holds; generous bound for a loaded machine."""
        return within(lambda: predicate(self.latest()), timeout_s, every_s=0.05)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
