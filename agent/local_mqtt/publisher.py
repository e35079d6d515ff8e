"""The owner's local broker: one optional, publish-only MQTT connection on its own thread.

:class:`LocalPublisher` publishes the Home Assistant discovery configs and the states of
:mod:`agent.local_mqtt.discovery` to the owner's broker (``[local_mqtt]``), separate from the
fleet broker, its credentials and its thread. Rules (docs/AGENT.md, "Home Assistant"):

- The main loop only calls :meth:`LocalPublisher.offer`: it takes a lock, stores the newest
  state per entity and returns. Nothing here blocks sampling or the uplink: connecting,
  sending and waiting happen on this thread.
- Bounded by design: one pending slot per entity's state topic (a newer value replaces an
  unsent one, counted as ``superseded``), at most ``MAX_UNACKED`` publishes awaiting their
  PUBACK. A broker that is down or slow costs a counter, never memory.
- Publish only: the connection never subscribes, so nothing on the local broker reaches the
  agent; a message that arrived anyway would be dropped and counted (``ignored_messages``).
  The publisher is given the entities and the broker, never the record writer or the outbox.
- On connect: every discovery config (retained), ``online`` on the availability topic
  (retained), then the last state of every entity. The connection's last will is ``offline``
  (retained), so the entities go unavailable if the agent vanishes; a clean stop publishes
  ``offline`` itself before DISCONNECT.
- Reconnects back off exponentially (1 s up to 60 s); a refusal that cannot change by itself
  (bad credentials, not authorised) stops the publisher with an error in ``status``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from agent.local_mqtt.discovery import OFFLINE, ONLINE, DeviceInfo, Entity, discovery_config
from agent.uplink.transport import BrokerSettings
from osutil.mqtt import (
    AckTimeout,
    ClientOptions,
    Connected,
    ConnectionLost,
    Event,
    MqttClient,
    PubAck,
    Received,
    Refused,
    Will,
)
from protocol.errors import EdgeproofError, TransportError

log = logging.getLogger(__name__)

MAX_UNACKED = 16  # publishes awaiting a PUBACK; more wait in their pending slot
POLL_S = 0.25
GOODBYE_S = 2.0  # a clean stop waits this long at most for "offline" to be acknowledged
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0

ClientFactory = Callable[[ClientOptions], MqttClient]


class LocalPublisher:
    """Discovery configs and entity states to the owner's broker, from its own thread."""

    def __init__(self, device: DeviceInfo, entities: Iterable[Entity], broker: BrokerSettings,
                 client_id: str, *, client_factory: ClientFactory = MqttClient,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """Build it (nothing connects before :meth:`start`). Raises ConfigError or
        KeyFileError for unusable TLS files."""
        self.device = device
        self.entities = {e.key: e for e in entities}
        self.broker_text = broker.connection.url
        self._monotonic = monotonic
        will = Will(device.availability_topic, OFFLINE, retain=True)
        self._client = client_factory(broker.client_options(client_id, will=will))
        self._lock = threading.Lock()
        self._pending: dict[str, bytes] = {}  # state topic -> newest unsent payload
        self._last: dict[str, bytes] = {}  # state topic -> last payload handed to MQTT
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = False
        self._connect_deadline: float | None = None  # CONNACK due by (monotonic s)
        self._connack_wait_s = broker.connect_timeout_s
        self._attempts = 0
        self._next_attempt = 0.0
        self.state = "starting"
        self.error: str | None = None
        self.counters: Counter[str] = Counter()

    # --- the main loop's side -----------------------------------------------------------

    def offer(self, states: Mapping[str, str]) -> None:
        """Queue entity key -> state text (unknown keys are ignored). Never blocks on I/O."""
        with self._lock:
            for key, text in states.items():
                if key not in self.entities:
                    continue
                topic = self.device.state_topic(self.entities[key])
                if topic in self._pending:
                    self.counters["superseded"] += 1
                self._pending[topic] = text.encode("utf-8")
        self._wake.set()

    def status(self) -> dict[str, object]:
        """A JSON-ready summary (``status --json``: ``agent.local_mqtt``)."""
        with self._lock:
            pending = len(self._pending)
            counters = dict(self.counters)
        return {"state": self.state, "broker": self.broker_text, "error": self.error,
                "pending": pending, "counters": counters}

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="local-mqtt", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = GOODBYE_S + 1.0) -> None:
        """Say ``offline`` (if connected), disconnect and end the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # --- the publisher's thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                except EdgeproofError:
                    raise
                except Exception as exc:  # a library's or our bug: counted, then reconnect
                    self._count("thread_errors")
                    log.exception("local broker %s: unexpected error; reconnecting",
                                  self.broker_text)
                    self._client.close()
                    self._disconnected(f"unexpected error: {type(exc).__name__}: {exc}")
            self._goodbye()
        except EdgeproofError as exc:  # never let the owner's broker take the agent down
            self._count("thread_errors")
            self.state, self.error = "failed", str(exc)
            log.error("local broker %s: %s; publisher stopped", self.broker_text, exc)
        except Exception as exc:  # in the goodbye: the thread ends all the same, said so
            self._count("thread_errors")
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("local broker %s: publisher stopped", self.broker_text)

    def _step(self) -> None:
        if self.state == "failed":
            self._stop.wait(1.0)
        elif not self._client.up:
            self._maybe_connect()
        else:
            self._handle(self._client.poll(POLL_S))
            if self._connected:
                self._send_pending(MAX_UNACKED)
            else:
                self._check_connack()

    def _maybe_connect(self) -> None:
        now = self._monotonic()
        if now < self._next_attempt:
            self._wake.wait(min(self._next_attempt - now, 1.0))
            self._wake.clear()
            return
        self.state = "connecting"
        self._connect_deadline = self._monotonic() + self._connack_wait_s
        try:
            self._client.connect()
        except TransportError as exc:
            self._count("connect_failures")
            self._disconnected(str(exc))

    def _check_connack(self) -> None:
        """A broker that accepts TCP but never answers CONNECT is given up on, and retried."""
        deadline = self._connect_deadline
        if deadline is not None and self._monotonic() > deadline:
            self._count("connack_timeouts")
            self._client.close()
            self._disconnected("no CONNACK (the broker does not answer)")

    def _disconnected(self, why: str) -> None:
        first = self.state != "disconnected" and self._attempts == 0
        self._connected, self._connect_deadline = False, None
        self.state, self.error = "disconnected", why
        delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(self._attempts, 10))
        self._attempts += 1
        self._next_attempt = self._monotonic() + delay
        log.log(logging.WARNING if first else logging.DEBUG,
                "local broker %s: %s; retrying (counted)", self.broker_text, why)

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Connected):
                self._on_connected()
            elif isinstance(event, Refused):
                self._count("refused")
                self._client.close()
                if event.permanent:
                    self._connected = False
                    self.state, self.error = "failed", f"refused: {event.reason}"
                    log.error("local broker %s refused us for good (%s); the local publisher "
                              "stopped (check [local_mqtt] credentials)", self.broker_text,
                              event.reason)
                else:
                    self._disconnected(f"refused: {event.reason}")
            elif isinstance(event, ConnectionLost):
                self._count("connections_lost")
                self._disconnected(f"connection lost: {event.reason}")
            elif isinstance(event, PubAck):
                self._count("published" if event.ok else "publish_refused")
            elif isinstance(event, AckTimeout):
                self._count("ack_timeouts")
            elif isinstance(event, Received):  # never subscribed: cannot happen, never used
                self._count("ignored_messages")

    def _on_connected(self) -> None:
        self._connected, self._attempts, self._connect_deadline = True, 0, None
        self.state, self.error = "connected", None
        self._count("connects")
        log.info("local broker %s: connected; publishing %d entities", self.broker_text,
                 len(self.entities))
        for entity in self.entities.values():
            self._publish(self.device.config_topic(entity), discovery_config(self.device, entity))
        self._publish(self.device.availability_topic, ONLINE)
        with self._lock:  # the last known states again (the broker may have lost them)
            self._pending = {**self._last, **self._pending}

    def _send_pending(self, max_unacked: int) -> None:
        while self._client.unacked < max_unacked:
            with self._lock:
                if not self._pending:
                    return
                topic = next(iter(self._pending))
                payload = self._pending.pop(topic)
                self._last[topic] = payload
            self._publish(topic, payload)

    def _publish(self, topic: str, payload: bytes) -> None:
        try:
            self._client.publish(topic, payload, retain=True)
        except TransportError as exc:
            self._count("publish_errors")
            log.debug("local broker: %s", exc)

    def _goodbye(self) -> None:
        if self._connected and self._client.up:
            self._send_pending(MAX_UNACKED + len(self.entities))  # the final states, then:
            self._publish(self.device.availability_topic, OFFLINE)
            deadline = self._monotonic() + GOODBYE_S
            while self._client.unacked and self._client.up and self._monotonic() < deadline:
                self._handle(self._client.poll(0.05))
        self._client.close()
        self.state = "stopped"
