"""The one module that talks to paho-mqtt (2.x).

:class:`MqttTransport` wraps a paho client for use from ONE thread (the uplink thread),
which calls :meth:`MqttTransport.poll` to run the network I/O and gets back plain event
objects. paho's callbacks only append to a list; nothing from paho (exceptions, reason-code
objects, message info) leaves this module.

How paho is used, and why (see ../shared/PITFALLS.md):

- MQTT v5, ``CallbackAPIVersion.VERSION2``, an explicit client id: the broker user name
  when there is one (an edgeproof broker makes the user name the client id, so that no
  credential can take over another's session), else the device id in hex (a TLS
  certificate's CN, which that broker makes the user name).
- A Maximum Packet Size on CONNECT (MQTT 5 §3.1.2.11.4) of the largest receipt: the broker
  drops anything larger instead of sending it to the device.
- A persistent session: ``clean_start=False`` on *every* connect plus a Session Expiry
  Interval (MQTT 5 §3.1.2.11.2); paho's default would start clean on the first connect.
- The same client object is reconnected, so paho re-sends its unacknowledged QoS 1 PUBLISH
  packets on reconnect (duplicates are expected; the gateway deduplicates).
- paho reports a PUBACK as "published" even when its reason code is a failure
  (MQTT 5 §3.4.2.1): every PUBACK's reason code is passed on and checked by the caller.
- CONNACK codes that mean the credentials or the client are refused for good are marked
  permanent so the caller stops instead of hammering the broker.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.errors import ConfigError, TransportError
from protocol.keys import Secret, require_private_mode
from protocol.mqtt_sizes import MAX_RECEIPT_PACKET_BYTES

log = logging.getLogger(__name__)

# CONNACK reason codes after which retrying with the same settings cannot help:
# 0x04/0x05 are the MQTT 3.1.1 codes (bad user name or password, not authorised),
# 0x85 client identifier not valid, 0x86 bad user name or password, 0x87 not authorised,
# 0x8A banned, 0x8C bad authentication method (MQTT 5 §3.2.2.2).
PERMANENT_CONNACK = frozenset({0x04, 0x05, 0x85, 0x86, 0x87, 0x8A, 0x8C})
NOT_AUTHORISED = 0x87


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect. ``password`` is a :class:`Secret` (redacted repr)."""

    url: str
    host: str
    port: int
    tls: bool
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    connect_timeout_s: float = 10.0


def parse_broker_url(url: str, key: str = "mqtt.broker") -> tuple[str, int, bool]:
    """Return ``(host, port, tls)`` for ``mqtt://host[:port]`` or ``mqtts://host[:port]``.

    Raises ConfigError naming ``key`` for anything else.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{key}: not a valid URL: {url!r}") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"{key}: must look like mqtt://host:1883 or mqtts://host:8883, "
                          f"got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ConfigError(f"{key}: no path, query or credentials in the URL ({url!r})")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


@dataclass(frozen=True)
class Connected:
    session_present: bool


@dataclass(frozen=True)
class Refused:
    """The broker refused the connection (CONNACK failure)."""

    code: int
    reason: str
    permanent: bool


@dataclass(frozen=True)
class ConnectionLost:
    reason: str


@dataclass(frozen=True)
class PubAck:
    """A PUBACK for message ``mid``; ``ok`` is False for a failure reason code."""

    mid: int
    ok: bool
    code: int
    reason: str


@dataclass(frozen=True)
class SubAck:
    ok: bool
    code: int
    reason: str


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes


Event = Connected | Refused | ConnectionLost | PubAck | SubAck | Received


class MqttTransport:
    """A paho client driven by one thread through :meth:`poll`."""

    def __init__(self, broker: BrokerSettings, client_id: str) -> None:
        """``client_id`` (the device id in hex) is used when there is no broker user name."""
        self.broker = broker
        self._events: list[Event] = []
        self._up = False  # a socket is open (connecting or connected)
        self._started = False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=broker.username or client_id,
                             protocol=mqtt.MQTTv5)
        client.connect_timeout = broker.connect_timeout_s
        # Batches are already bounded by the uplink; paho queues in memory only.
        client.max_inflight_messages_set(20)
        if broker.username is not None:
            password = broker.password.value.decode("utf-8") if broker.password else None
            client.username_pw_set(broker.username, password)
        if broker.tls:
            _configure_tls(client, broker)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    # --- paho callbacks (run inside poll(), on the uplink thread) ----------------------

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            code = int(rc.value)
            self._events.append(Refused(code, rc.getName(), code in PERMANENT_CONNACK))
        else:
            self._events.append(Connected(bool(flags.session_present)))

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _p: Any) -> None:
        if self._up:
            self._up = False
            self._events.append(ConnectionLost(rc.getName() if rc is not None else "lost"))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        self._events.append(PubAck(mid, not rc.is_failure, int(rc.value), rc.getName()))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        bad = [c for c in codes if c.is_failure]
        rc = bad[0] if bad else codes[0]
        self._events.append(SubAck(not bad, int(rc.value), rc.getName()))

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        self._events.append(Received(message.topic, bytes(message.payload)))

    # --- the interface the uplink uses -------------------------------------------------

    @property
    def up(self) -> bool:
        """Whether a connection is open or being opened."""
        return self._up

    def connect(self) -> None:
        """Open the TCP/TLS connection and send CONNECT (blocking up to the time-out).

        The CONNACK arrives later as a :class:`Connected` or :class:`Refused` event.
        Raises TransportError if the connection cannot be opened.
        """
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.broker.session_expiry_s
        props.MaximumPacketSize = MAX_RECEIPT_PACKET_BYTES
        try:
            if not self._started:
                rc = self._client.connect(self.broker.host, self.broker.port,
                                          keepalive=self.broker.keepalive_s,
                                          clean_start=False, properties=props)
                self._started = True
            else:
                rc = self._client.reconnect()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise TransportError(f"cannot connect to {self.broker.url}: {exc}") from None
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"cannot connect to {self.broker.url}: "
                                 f"{mqtt.error_string(rc)}")
        self._up = True

    def poll(self, timeout_s: float) -> list[Event]:
        """Run network I/O for up to ``timeout_s``; return the events that happened."""
        if self._up:
            try:
                rc = self._client.loop(timeout_s)
            except (OSError, ValueError) as exc:
                rc = mqtt.MQTT_ERR_CONN_LOST
                log.debug("paho loop raised %s", exc)
            if rc != mqtt.MQTT_ERR_SUCCESS and self._up:
                self._up = False
                self._events.append(ConnectionLost(mqtt.error_string(rc)))
        events, self._events = self._events, []
        return events

    def publish(self, topic: str, payload: bytes) -> int:
        """Queue a QoS 1 PUBLISH; return its message id. Raises TransportError."""
        try:
            info = self._client.publish(topic, payload, qos=1)
        except (OSError, ValueError) as exc:
            raise TransportError(f"publish failed: {exc}") from None
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish failed: {mqtt.error_string(info.rc)}")
        return int(info.mid)

    def subscribe(self, topic: str) -> None:
        """Subscribe with QoS 1 (the SUBACK arrives as an event). Raises TransportError."""
        rc, _mid = self._client.subscribe(topic, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"subscribe failed: {mqtt.error_string(rc)}")

    def close(self) -> None:
        """Send DISCONNECT (session kept by the broker for the expiry interval) and close."""
        if self._up:
            try:
                self._client.disconnect()
                self._client.loop(0.05)
            except (OSError, ValueError):
                pass
        self._up = False


def _configure_tls(client: mqtt.Client, broker: BrokerSettings) -> None:
    if broker.key_file is not None:
        require_private_mode(broker.key_file)
    try:
        client.tls_set(
            ca_certs=str(broker.ca_file) if broker.ca_file else None,
            certfile=str(broker.cert_file) if broker.cert_file else None,
            keyfile=str(broker.key_file) if broker.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"mqtt TLS settings: {exc}") from None
