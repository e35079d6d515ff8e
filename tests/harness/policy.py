"""A party with the gateway's broker rights that puts policy documents on a device's topic.

:class:`PolicyPusher` logs in as a broker user with the gateway's rights (it may write every
``policy`` topic and read every ``policy-sync`` topic, PROTOCOL.md §17) and delivers
whatever documents a test gives it: exactly what a gateway, or an operator holding the
gateway's broker login, could do. The device must apply only what its pinned owner signed,
whoever delivers it. It also counts each device's ``policy-sync`` requests (it receives a
copy; the gateway answers them).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol.delivery import PolicyDelivery, PolicySync, policy_topic
from protocol.documents import Document


class PolicyPusher:
    """Delivers documents to devices' ``policy`` topics; counts their syncs."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self._lock = threading.Lock()
        self.syncs: dict[bytes, list[int]] = {}
        self._ready = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username,
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(username, password)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: self._ready.set()
        client.reconnect_delay_set(1, 2)
        client.connect_async("127.0.0.1", port)
        client.loop_start()
        self._client = client
        if not self._ready.wait(30):
            raise RuntimeError("policy pusher: no subscription to the sync topics")

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe("edgeproof/v1/devices/+/policy-sync", qos=1)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        device = bytes.fromhex(msg.topic.split("/")[3])
        sync = PolicySync.from_cbor(bytes(msg.payload))
        with self._lock:
            self.syncs.setdefault(device, []).append(sync.from_index)

    def sync_count(self, device_id: bytes) -> int:
        with self._lock:
            return len(self.syncs.get(device_id, []))

    def push(self, device_id: bytes, docs: Sequence[Document], *, complete: bool = False,
             first_index: int = 1000) -> None:
        """Publish one delivery of ``docs`` (leaf indexes from ``first_index``), QoS 1, and
        wait for the broker's PUBACK."""
        entries = tuple((first_index + i, d.raw) for i, d in enumerate(docs))
        delivery = PolicyDelivery(entries, first_index + len(docs), complete)
        info = self._client.publish(policy_topic(device_id), delivery.to_cbor(), qos=1)
        info.wait_for_publish(10)
        if not info.is_published():
            raise RuntimeError("policy pusher: delivery not acknowledged by the broker")

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

