"""MQTT transport of the gateway: the one module that touches paho-mqtt.

Subscribes with QoS 1 to ``edgeproof/v1/devices/+/records`` and ``.../+/policy-sync`` (or,
with a shared group, to ``$share/<group>/...`` of both, so several workers split the load),
on a persistent MQTT v5 session (explicit client id, ``clean_start=False``, a session
expiry), and publishes receipts and policy deliveries with QoS 1.

Acknowledgements are manual (paho ``manual_ack=True``): a PUBLISH is acknowledged only
after its batch is committed to the log and its receipt handed to paho. A gateway that
dies before that leaves the message unacknowledged, and the broker redelivers it on the
next connection of the same session; processing is idempotent, so a redelivered batch is
answered with the same leaf indices. Message ids are only valid on the connection they
arrived on, so each message carries its connection's generation and is acknowledged only
on that connection; a message from an earlier connection is redelivered instead.

Bad credentials and "not authorised" are permanent (:class:`RejectedByPeer`): the
gateway stops with a clear message instead of retrying.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.config import BrokerConfig
from protocol.batch import TOPIC_PREFIX
from protocol.delivery import SYNC_SUFFIX
from protocol.errors import RejectedByPeer, TransportError
from protocol.keys import read_secret_file
from protocol.mqtt_sizes import MAX_RECORDS_PACKET_BYTES

log = logging.getLogger(__name__)
RECORDS_FILTER = f"{TOPIC_PREFIX}+/records"
SYNC_FILTER = f"{TOPIC_PREFIX}+/{SYNC_SUFFIX}"
_PERMANENT = {"Bad user name or password", "Not authorized", "Banned",
              "Client identifier not valid"}


@dataclass(frozen=True)
class Message:
    """One MQTT message as the gateway needs it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # which connection it arrived on
    arrived: float  # monotonic seconds


def subscription_filter(config: BrokerConfig, topic_filter: str = RECORDS_FILTER) -> str:
    """The topic filter to subscribe to (a shared subscription when a group is set)."""
    if config.shared_group:
        return f"$share/{config.shared_group}/{topic_filter}"
    return topic_filter


class MqttIngest:
    """A paho client that feeds batches to ``on_message`` and publishes receipts."""

    def __init__(self, config: BrokerConfig, on_message: Callable[[Message], None],
                 monotonic: Callable[[], float]) -> None:
        """Prepare the client; nothing connects until :meth:`start`.

        Raises KeyFileError if the broker password file is missing or open to others.
        """
        self._config, self._deliver, self._monotonic = config, on_message, monotonic
        self._generation = 0
        self._connected = threading.Event()
        self.fatal: str | None = None
        self.publish_failures = 0
        self.on_publish_failure: Callable[[], None] = lambda: None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        if config.username is not None:
            password = None
            if config.password_file is not None:
                password = read_secret_file(config.password_file).decode("utf-8").strip()
            client.username_pw_set(config.username, password)
        if config.tls:
            client.tls_set(ca_certs=str(config.ca_file) if config.ca_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client = client

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe; return once the broker accepted the connection.

        Raises RejectedByPeer for bad credentials or missing authorisation, and
        TransportError if the broker cannot be reached within ``timeout`` seconds.
        """
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho-mqtt: unannotated
        props.SessionExpiryInterval = self._config.session_expiry_s
        # MQTT 5 §3.1.2.11.4: the broker drops, never sends, anything larger than a full batch.
        props.MaximumPacketSize = MAX_RECORDS_PACKET_BYTES
        try:
            self._client.connect(self._config.host, self._config.port,
                                 keepalive=self._config.keepalive_s, clean_start=False,
                                 properties=props)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot reach MQTT broker {self._config.host}:"
                                 f"{self._config.port}: {exc}") from None
        self._client.loop_start()
        if not self._connected.wait(timeout) or self.fatal:
            self._client.loop_stop()
            if self.fatal:
                raise RejectedByPeer(self.fatal)
            raise TransportError(f"MQTT broker {self._config.host}:{self._config.port} "
                                 f"did not accept the connection within {timeout:.0f} s")

    def stop(self) -> None:
        """Disconnect cleanly (unacknowledged messages stay queued in the session)."""
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- data --------------------------------------------------------------------------------

    def ack(self, message: Message) -> bool:
        """Acknowledge a processed message; return False if its connection is gone."""
        if message.qos == 0 or message.generation != self._generation:
            return False
        rc = self._client.ack(message.mid, message.qos)
        return rc == mqtt.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes) -> bool:
        """Queue a QoS 1 publish; return False if paho refused it at once."""
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._count_publish_failure(f"publish to {topic} refused: rc={info.rc}")
            return False
        return True

    # --- paho callbacks (network thread: keep them short) -----------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        if reason.is_failure:
            if str(reason) in _PERMANENT:
                self.fatal = f"MQTT broker refused the gateway: {reason}"
                client.disconnect()
            log.error("MQTT connect failed: %s", reason)
            self._connected.set()
            return
        self._generation += 1
        options = SubscribeOptions(qos=1)
        # Records, and devices' policy-sync requests (PROTOCOL.md §17).
        client.subscribe([(subscription_filter(self._config), options),
                          (subscription_filter(self._config, SYNC_FILTER), options)])
        log.info("MQTT connected (session present: %s)", flags.session_present)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Any) -> None:
        self._connected.clear()
        if reason.is_failure and str(reason) in _PERMANENT:
            self.fatal = f"MQTT broker disconnected the gateway: {reason}"
        log.warning("MQTT disconnected: %s", reason)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reasons: list[ReasonCode], properties: Any) -> None:
        for reason in reasons:
            if reason.is_failure:
                self.fatal = f"MQTT broker refused the subscription: {reason}"
                log.error("%s", self.fatal)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._deliver(Message(msg.topic, bytes(msg.payload), msg.mid, msg.qos,
                              self._generation, self._monotonic()))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Any) -> None:
        # paho reports a PUBACK carrying a failure code as "published": check it here.
        if reason.is_failure:
            self._count_publish_failure(f"broker refused receipt mid {mid}: {reason}")

    def _count_publish_failure(self, why: str) -> None:
        self.publish_failures += 1
        self.on_publish_failure()
        log.warning("%s (the device will resend and get the receipt again)", why)
