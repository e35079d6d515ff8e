"""The fleet simulator's one paho-mqtt module: many MQTT connections driven by ONE thread.

Hundreds of simulated devices each need their own connection (their own credentials,
client id and persistent session), but not hundreds of threads: :class:`Hub` runs paho's
external event loop (paho-mqtt 2.x ``loop_read`` / ``loop_write`` / ``loop_misc`` with the
``on_socket_*`` callbacks) over one ``selectors`` selector, so CPU is spent only on sockets
with traffic, and every paho callback runs on the caller's thread inside :meth:`Hub.poll`.

Each :class:`Link` follows the house rules for paho (../shared/PITFALLS.md): MQTT v5,
``CallbackAPIVersion.VERSION2``, an explicit client id, a persistent session
(``clean_start=False`` plus a Session Expiry Interval on every connect), PUBACK and SUBACK
reason codes checked, refused credentials reported as permanent. Callbacks only append
plain event objects; nothing from paho leaves this module.
"""

from __future__ import annotations

import contextlib
import selectors
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.errors import RejectedByPeer, TransportError

# CONNACK codes after which retrying the same credentials cannot help (MQTT 5 §3.2.2.2;
# 0x04/0x05 are the MQTT 3.1.1 ones).
PERMANENT_CONNACK = frozenset({0x04, 0x05, 0x85, 0x86, 0x87, 0x8A, 0x8C})
MISC_PERIOD_S = 1.0  # keep-alive bookkeeping (PINGREQ, dead connections)


@dataclass(frozen=True)
class Connected:
    session_present: bool


@dataclass(frozen=True)
class Refused:
    code: int
    reason: str
    permanent: bool


@dataclass(frozen=True)
class Lost:
    reason: str


@dataclass(frozen=True)
class PubAck:
    mid: int
    ok: bool
    reason: str


@dataclass(frozen=True)
class SubAck:
    ok: bool
    reason: str


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes


Event = Connected | Refused | Lost | PubAck | SubAck | Message


class Hub:
    """One selector over many links' sockets; :meth:`poll` runs their network I/O."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._links: set[Link] = set()
        self._next_misc = 0.0

    def poll(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for socket activity and process it (callbacks run here)."""
        if not self._selector.get_map():
            time.sleep(max(0.0, timeout_s))
        else:
            for key, mask in self._selector.select(max(0.0, timeout_s)):
                link: Link = key.data
                if mask & selectors.EVENT_READ:
                    link.on_readable()
                if mask & selectors.EVENT_WRITE:
                    link.on_writable()
        now = time.monotonic()
        if now >= self._next_misc:
            self._next_misc = now + MISC_PERIOD_S
            for link in list(self._links):
                link.on_tick()

    def close(self) -> None:
        """Close every link and the selector."""
        for link in list(self._links):
            link.close()
        self._selector.close()

    # --- called by links (from paho's socket callbacks) -----------------------------------

    def _attach(self, link: Link) -> None:
        self._links.add(link)

    def _detach(self, link: Link) -> None:
        self._links.discard(link)

    def _watch(self, sock: Any, link: Link, write: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        try:
            self._selector.modify(sock, events, link)
        except KeyError:
            self._selector.register(sock, events, link)

    def _forget(self, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)


class Link:
    """One device's MQTT connection, driven by a :class:`Hub`.

    Events (:class:`Connected`, :class:`Refused`, :class:`Lost`, :class:`PubAck`,
    :class:`SubAck`, :class:`Message`) collect until :meth:`take_events`.
    """

    def __init__(self, hub: Hub, *, client_id: str, host: str, port: int, username: str,
                 password: str, keepalive_s: int = 30, session_expiry_s: int = 3600,
                 clean_start: bool = False) -> None:
        self.hub = hub
        self.host, self.port = host, port
        self.keepalive_s = keepalive_s
        self.session_expiry_s = session_expiry_s
        self.clean_start = clean_start
        self.up = False
        self._events: list[Event] = []
        self._started = False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(username, password)
        client.max_inflight_messages_set(20)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = lambda _c, _u, sock: hub._watch(sock, self, write=False)
        client.on_socket_close = lambda _c, _u, sock: hub._forget(sock)
        client.on_socket_register_write = lambda _c, _u, sock: hub._watch(sock, self, write=True)
        client.on_socket_unregister_write = lambda _c, _u, sock: hub._watch(sock, self,
                                                                             write=False)
        self._client = client
        hub._attach(self)

    # --- paho callbacks -------------------------------------------------------------------

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            code = int(rc.value)
            self._events.append(Refused(code, rc.getName(), code in PERMANENT_CONNACK))
        else:
            self._events.append(Connected(bool(flags.session_present)))

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _p: Any) -> None:
        if self.up:
            self.up = False
            self._events.append(Lost(rc.getName() if rc is not None else "lost"))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        # paho calls a PUBACK with a failure reason code "published" too (PITFALLS.md).
        self._events.append(PubAck(mid, not rc.is_failure, rc.getName()))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        bad = [c for c in codes if c.is_failure]
        self._events.append(SubAck(not bad, (bad or codes)[0].getName()))

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        self._events.append(Message(message.topic, bytes(message.payload)))

    # --- I/O, called by the hub -------------------------------------------------------------

    def on_readable(self) -> None:
        self._check(self._client.loop_read())

    def on_writable(self) -> None:
        self._check(self._client.loop_write())

    def on_tick(self) -> None:
        if self.up:
            self._check(self._client.loop_misc())

    def _check(self, rc: MQTTErrorCode) -> None:
        if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN) and self.up:
            self.up = False
            self._events.append(Lost(mqtt.error_string(rc)))

    # --- the interface the devices use ---------------------------------------------------

    def connect(self) -> None:
        """Open the TCP connection and queue CONNECT; the CONNACK arrives as an event.

        Raises TransportError if the connection cannot be opened.
        """
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        try:
            if not self._started:
                rc = self._client.connect(self.host, self.port, keepalive=self.keepalive_s,
                                          clean_start=self.clean_start, properties=props)
                self._started = True
            else:
                rc = self._client.reconnect()
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"cannot connect: {mqtt.error_string(rc)}")
        self.up = True

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

    def take_events(self) -> list[Event]:
        """Return and forget the events since the last call."""
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        """Send DISCONNECT (the broker keeps the session for its expiry) and close."""
        if self.up:
            self.up = False
            try:
                self._client.disconnect()
                self._client.loop_write()
            except (OSError, ValueError):
                pass
        sock = self._client.socket()  # paho closes it after writing DISCONNECT, if it could
        if sock is not None:
            self.hub._forget(sock)
            sock.close()
        self.hub._detach(self)


def check_login(host: str, port: int, username: str, password: str,
                timeout_s: float = 5.0) -> None:
    """Log in once with these credentials (clean session, nothing kept) and log out.

    The broker makes the user name the client id (use_username_as_clientid), so this is
    that user's session: use it before the device first connects, never while it runs
    (it would close the device's connection and discard its session).

    Returns when the broker accepted them. Raises RejectedByPeer if it refused them for
    good, TransportError if it did not answer within ``timeout_s``.
    """
    hub = Hub()
    link = Link(hub, client_id=username, host=host, port=port, username=username,
                password=password, session_expiry_s=0, clean_start=True)
    try:
        link.connect()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hub.poll(0.05)
            for event in link.take_events():
                if isinstance(event, Connected):
                    return
                if isinstance(event, Refused):
                    raise RejectedByPeer(f"broker refused {username}: {event.reason}")
                if isinstance(event, Lost):
                    raise TransportError(f"broker closed the connection: {event.reason}")
        raise TransportError(f"no CONNACK from {host}:{port} within {timeout_s} s")
    finally:
        hub.close()
