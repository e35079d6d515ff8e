"""MQTT probes for the broker-security tests: connect as a user, publish, watch a topic.

Each probe is a real paho client against the real Mosquitto; nothing is simulated. Waits
are bounded by events, not sleeps, except where the point is that nothing arrives.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

_ids = itertools.count()
REFUSED = {"Bad user name or password", "Not authorized"}


@dataclass
class Probe:
    """One connected (or refused) client and what it saw."""

    client: mqtt.Client
    connack: ReasonCode | None = None
    connected: threading.Event = field(default_factory=threading.Event)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    subacks: list[ReasonCode] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    acked: threading.Condition = field(default_factory=threading.Condition)
    session_present: bool = False
    lost: threading.Event = field(default_factory=threading.Event)  # connection closed
    disconnect_reasons: list[str] = field(default_factory=list)

    def subscribe(self, topic: str, timeout: float = 5.0) -> ReasonCode:
        """Subscribe with QoS 1; return the broker's SUBACK reason code."""
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(timeout), "no SUBACK"
        return self.subacks[-1]

    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> ReasonCode:
        """Publish with QoS 1; return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, timeout), "no PUBACK"
            return self.pubacks[info.mid]

    def wait_message(self, timeout: float) -> bool:
        """Return whether a message arrived within ``timeout`` seconds."""
        return self.arrived.wait(timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(port: int, username: str | None, password: str | None,
            timeout: float = 5.0, client: mqtt.Client | None = None, *,
            client_id: str | None = None, session_expiry_s: int = 0,
            reconnect: bool = True) -> Probe:
    """Connect a fresh MQTT v5 client (or ``client``, e.g. set up for TLS); return the probe.

    ``client_id`` defaults to a fresh ``probe-N``; ``session_expiry_s`` > 0 keeps a
    persistent session (``clean_start=False``). ``reconnect=False`` stops paho from
    reconnecting after the broker closed the connection (so a closed probe stays closed).
    Check ``probe.connack``: a refused connection is returned, not raised, and a connection
    closed before any CONNACK (a TLS peer rejecting our certificate) leaves it None.
    """
    client = client or mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"probe-{next(_ids)}",
                                   protocol=mqtt.MQTTv5)
    probe = Probe(client)
    if username is not None:
        client.username_pw_set(username, password)

    def on_connect(c: mqtt.Client, u: object, flags: mqtt.ConnectFlags, rc: ReasonCode,
                   props: object) -> None:
        probe.connack = rc
        probe.session_present = bool(flags.session_present)
        probe.connected.set()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        probe.messages.append((msg.topic, bytes(msg.payload)))
        probe.arrived.set()

    def on_subscribe(c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode],
                     props: object) -> None:
        probe.subacks.extend(rcs)
        probe.subscribed.set()

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: ReasonCode, props: object) -> None:
        with probe.acked:
            probe.pubacks[mid] = rc
            probe.acked.notify_all()

    def on_disconnect(c: mqtt.Client, u: object, flags: object, rc: ReasonCode,
                      props: object) -> None:
        probe.disconnect_reasons.append(str(rc))
        probe.lost.set()
        probe.connected.set()  # closed: stop waiting for a CONNACK that will not come
        if not reconnect:
            c.disconnect()  # tells paho's loop not to reconnect

    client.on_disconnect = on_disconnect
    client.on_connect, client.on_message = on_connect, on_message
    client.on_subscribe, client.on_publish = on_subscribe, on_publish
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    client.connect("127.0.0.1", port, clean_start=session_expiry_s == 0, properties=props)
    client.loop_start()
    if not probe.connected.wait(timeout) or (probe.connack is not None
                                             and probe.connack.is_failure):
        client.disconnect()
        client.loop_stop()
    return probe
