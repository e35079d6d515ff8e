"""The one module that talks to paho-mqtt (2.x): one client wrapper, two ways to drive it.

:class:`MqttClient` is one MQTT connection. Nothing from paho (exceptions, reason-code
objects, message info) leaves this module: paho's callbacks only append plain event
objects (:class:`Connected`, :class:`Refused`, :class:`ConnectionLost`, :class:`PubAck`,
:class:`AckTimeout`, :class:`SubAck`, :class:`Received`) that the owner takes on its own
thread. It is driven either

- by itself: the owning thread calls :meth:`MqttClient.poll` (the agent's uplink: one
  connection, one thread), or
- by a :class:`Hub`: many connections on ONE thread, paho's external event loop
  (``loop_read`` / ``loop_write`` / ``loop_misc`` with the ``on_socket_*`` callbacks) over
  one ``selectors`` selector, so CPU is spent only on sockets with traffic (the fleet
  simulator's hundreds of devices).

How paho is used, and why (../shared/PITFALLS.md):

- MQTT v5, ``CallbackAPIVersion.VERSION2``, an explicit client id (the caller's: with
  Mosquitto's ``use_username_as_clientid`` it must equal the user name).
- A persistent session: ``clean_start=False`` on *every* connect plus a Session Expiry
  Interval (MQTT 5 §3.1.2.11.2); paho's default would start clean on the first connect.
  An optional Maximum Packet Size (§3.1.2.11.4) tells the broker what we accept.
- The same paho client is reconnected, so it re-sends its unacknowledged QoS 1 PUBLISH
  packets (duplicates are expected; the gateway deduplicates).
- paho reports a PUBACK as "published" even when its reason code is a failure
  (MQTT 5 §3.4.2.1): every PUBACK's reason code is passed on in :class:`PubAck`.
- Each PUBLISH is tracked by message id; one not acknowledged within ``ack_timeout_s``
  is reported once as :class:`AckTimeout` (a PUBACK proves nothing about delivery, but a
  missing one says the connection is not making progress).
- CONNACK codes that mean the credentials or the client are refused for good are marked
  permanent, so the caller stops instead of hammering the broker.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.errors import ConfigError, TransportError
from protocol.keys import Secret, require_private_mode

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

log = logging.getLogger(__name__)

# CONNACK reason codes after which retrying with the same settings cannot help:
# 0x04/0x05 are the MQTT 3.1.1 codes (bad user name or password, not authorised),
# 0x85 client identifier not valid, 0x86 bad user name or password, 0x87 not authorised,
# 0x8A banned, 0x8C bad authentication method (MQTT 5 §3.2.2.2).
PERMANENT_CONNACK = frozenset({0x04, 0x05, 0x85, 0x86, 0x87, 0x8A, 0x8C})
NOT_AUTHORISED = 0x87
MISC_PERIOD_S = 1.0  # a hub's keep-alive bookkeeping (PINGREQ, dead connections)
MAX_INFLIGHT = 20  # Mosquitto's default Receive Maximum; callers bound their batches too


@dataclass(frozen=True)
class TlsFiles:
    """Certificates for ``mqtts://``: the CA to trust, optionally a client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None  # must be mode 0600


@dataclass(frozen=True)
class Will:
    """The last will the broker publishes (QoS 1) if the connection ends without DISCONNECT."""

    topic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True)
class ClientOptions:
    """One connection's settings. ``password`` is a :class:`Secret` (redacted repr)."""

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    tls: TlsFiles | None = None  # None: plain TCP
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    clean_start: bool = False  # True only for a throw-away login check
    maximum_packet_size: int | None = None  # announced on CONNECT when set
    connect_timeout_s: float = 10.0
    ack_timeout_s: float = 30.0
    label: str = ""  # how errors name the broker (default host:port)
    will: Will | None = None  # MQTT 5 §3.1.2.5: published by the broker if we vanish

    @property
    def where(self) -> str:
        return self.label or f"{self.host}:{self.port}"


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
class AckTimeout:
    """No PUBACK for message ``mid`` within the client's ``ack_timeout_s``."""

    mid: int


@dataclass(frozen=True)
class SubAck:
    ok: bool
    code: int
    reason: str


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes


Event = Connected | Refused | ConnectionLost | PubAck | AckTimeout | SubAck | Received


class MqttClient:
    """One MQTT v5 connection; driven by :meth:`poll`, or by ``hub`` if one is given."""

    def __init__(self, options: ClientOptions, hub: Hub | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """Build the client (nothing is sent before :meth:`connect`).

        Raises KeyFileError if a TLS client key is readable by others, ConfigError for
        unusable TLS files.
        """
        self.options = options
        self._hub = hub
        self._monotonic = monotonic
        self._events: list[Event] = []
        self._unacked: dict[int, float] = {}  # mid -> deadline, in publish order
        self._up = False  # a socket is open (connecting or connected)
        self._started = False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=options.client_id,
                             protocol=mqtt.MQTTv5)
        client.connect_timeout = options.connect_timeout_s
        client.max_inflight_messages_set(MAX_INFLIGHT)  # paho queues in memory only
        if options.username is not None:
            password = options.password.value.decode("utf-8") if options.password else None
            client.username_pw_set(options.username, password)
        if options.tls is not None:
            _configure_tls(client, options.tls)
        if options.will is not None:
            client.will_set(options.will.topic, options.will.payload, qos=1,
                            retain=options.will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        if hub is not None:
            client.on_socket_open = lambda _c, _u, sock: hub.watch(sock, self, write=False)
            client.on_socket_close = lambda _c, _u, sock: hub.forget(sock)
            client.on_socket_register_write = (
                lambda _c, _u, sock: hub.watch(sock, self, write=True))
            client.on_socket_unregister_write = (
                lambda _c, _u, sock: hub.watch(sock, self, write=False))
            hub.attach(self)
        self._client = client

    # --- paho callbacks (run on the owner's thread, inside poll() or Hub.poll()) ---------

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
        self._unacked.pop(mid, None)
        self._events.append(PubAck(mid, not rc.is_failure, int(rc.value), rc.getName()))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        bad = [c for c in codes if c.is_failure]
        rc = bad[0] if bad else codes[0]
        self._events.append(SubAck(not bad, int(rc.value), rc.getName()))

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        self._events.append(Received(message.topic, bytes(message.payload)))

    # --- the interface owners use ------------------------------------------------------

    @property
    def up(self) -> bool:
        """Whether a connection is open or being opened."""
        return self._up

    @property
    def unacked(self) -> int:
        """PUBLISH packets sent and neither acknowledged nor timed out."""
        return len(self._unacked)

    def connect(self) -> None:
        """Open the TCP/TLS connection and send CONNECT (blocking up to the time-out).

        The CONNACK arrives later as a :class:`Connected` or :class:`Refused` event.
        Raises TransportError if the connection cannot be opened.
        """
        opts = self.options
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho-mqtt: unannotated
        props.SessionExpiryInterval = opts.session_expiry_s
        if opts.maximum_packet_size is not None:
            props.MaximumPacketSize = opts.maximum_packet_size
        try:
            if not self._started:
                rc = self._client.connect(opts.host, opts.port, keepalive=opts.keepalive_s,
                                          clean_start=opts.clean_start, properties=props)
                self._started = True
            else:
                rc = self._client.reconnect()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise TransportError(f"cannot connect to {opts.where}: {exc}") from None
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"cannot connect to {opts.where}: {mqtt.error_string(rc)}")
        self._up = True

    def poll(self, timeout_s: float) -> list[Event]:
        """Run network I/O for up to ``timeout_s``; return the events that happened.

        Only for a client without a hub (a hub runs the I/O of all its clients).
        """
        if self._hub is not None:
            raise RuntimeError("a client on a hub is driven by Hub.poll()")
        if self._up:
            try:
                rc = self._client.loop(timeout_s)
            except (OSError, ValueError) as exc:
                rc = mqtt.MQTT_ERR_CONN_LOST
                log.debug("paho loop raised %s", exc)
            self._check(rc)
        return self.take_events()

    def take_events(self) -> list[Event]:
        """Return and forget the events so far (acknowledgement time-outs included)."""
        self._expire_acks()
        events, self._events = self._events, []
        return events

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Queue a QoS 1 PUBLISH (``retain``: the broker keeps it as the topic's last value);
        return its message id. Raises TransportError.

        Without a connection paho keeps the message and sends it after the next connect.
        """
        try:
            info = self._client.publish(topic, payload, qos=1, retain=retain)
        except (OSError, ValueError) as exc:
            raise TransportError(f"publish failed: {exc}") from None
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish failed: {mqtt.error_string(info.rc)}")
        mid = int(info.mid)
        self._unacked[mid] = self._monotonic() + self.options.ack_timeout_s
        return mid

    def subscribe(self, topic: str) -> None:
        """Subscribe with QoS 1 (the SUBACK arrives as an event). Raises TransportError."""
        rc, _mid = self._client.subscribe(topic, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"subscribe failed: {mqtt.error_string(rc)}")

    def close(self) -> None:
        """Send DISCONNECT (the broker keeps the session for its expiry) and close."""
        if self._up:
            self._up = False
            try:
                self._client.disconnect()
                if self._hub is None:
                    self._client.loop(0.05)
                else:
                    self._client.loop_write()
            except (OSError, ValueError):
                pass
        if self._hub is not None:
            sock = self._client.socket()  # paho closes it after DISCONNECT, if it could
            if sock is not None:
                self._hub.forget(sock)
                sock.close()
            self._hub.detach(self)

    # --- internals ----------------------------------------------------------------------

    def _check(self, rc: MQTTErrorCode) -> None:
        if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN) and self._up:
            self._up = False
            self._events.append(ConnectionLost(mqtt.error_string(rc)))

    def _expire_acks(self) -> None:
        if not self._unacked:
            return
        now = self._monotonic()
        expired = [mid for mid, deadline in self._unacked.items() if deadline <= now]
        for mid in expired:
            del self._unacked[mid]
            self._events.append(AckTimeout(mid))

    # --- called by the hub ----------------------------------------------------------------

    def on_readable(self) -> None:
        self._check(self._client.loop_read())

    def on_writable(self) -> None:
        self._check(self._client.loop_write())

    def on_tick(self) -> None:
        if self._up:
            self._check(self._client.loop_misc())


class Hub:
    """One selector over many clients' sockets; :meth:`poll` runs their network I/O."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._selector = selectors.DefaultSelector()
        self._clients: set[MqttClient] = set()
        self._monotonic = monotonic
        self._next_misc = 0.0

    def poll(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for socket activity and process it (callbacks run here).

        Events collect in each client until its :meth:`MqttClient.take_events`.
        """
        if not self._selector.get_map():
            time.sleep(max(0.0, timeout_s))
        else:
            for key, mask in self._selector.select(max(0.0, timeout_s)):
                client: MqttClient = key.data
                if mask & selectors.EVENT_READ:
                    client.on_readable()
                if mask & selectors.EVENT_WRITE:
                    client.on_writable()
        now = self._monotonic()
        if now >= self._next_misc:
            self._next_misc = now + MISC_PERIOD_S
            for client in list(self._clients):
                client.on_tick()

    def close(self) -> None:
        """Close every client and the selector."""
        for client in list(self._clients):
            client.close()
        self._selector.close()

    # --- called by clients (from paho's socket callbacks) ---------------------------------

    def attach(self, client: MqttClient) -> None:
        self._clients.add(client)

    def detach(self, client: MqttClient) -> None:
        self._clients.discard(client)

    def watch(self, sock: SocketLike, client: MqttClient, *, write: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        try:
            self._selector.modify(sock, events, client)
        except KeyError:
            self._selector.register(sock, events, client)

    def forget(self, sock: SocketLike) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)


def _configure_tls(client: mqtt.Client, tls: TlsFiles) -> None:
    if tls.key_file is not None:
        require_private_mode(tls.key_file)
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"mqtt TLS settings: {exc}") from None
