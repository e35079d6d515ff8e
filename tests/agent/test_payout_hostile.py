"""The payout watcher against a hostile or broken gateway, the local publisher against
the unexpected: nothing may end their threads; every refusal is counted by reason
(agent/local_mqtt/payout.py, publisher.py)."""

from __future__ import annotations

import socket
import struct
import threading
import time

from agent.local_mqtt import DeviceInfo, LocalPublisher, device_entities
from agent.local_mqtt.payout import PayoutWatcher
from agent.uplink import BrokerSettings, MqttConfig
from osutil.mqtt import Connected, Event
from protocol.keys import OwnerKey, SigningKey
from tests.agent.notice_server import NoticeServer


def watcher_for(url: str, interval_s: float = 600) -> PayoutWatcher:
    return PayoutWatcher(url, interval_s, gateway_key=SigningKey.generate().public_key,
                         owner_key=OwnerKey.generate().public_key, offer=lambda s: None)


def wait_for(predicate: object, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.02)
    return False


def test_deeply_nested_notice_answer_is_refused_not_a_dead_watcher_thread() -> None:
    """``[[[[...`` within the 64 KiB cap made json.loads raise RecursionError, which
    poll() did not catch: the payout thread died silently and never polled again."""
    server = NoticeServer()
    server.answer = (200, b"[" * 30_000 + b"]" * 30_000)
    watcher = watcher_for(server.url, interval_s=0.05)
    try:
        watcher.poll()  # direct: refused, not raised
        assert watcher.counters["malformed"] == 1
        assert str(watcher.error).startswith("malformed")
        watcher.start()
        assert wait_for(lambda: watcher.counters["malformed"] >= 3)
        assert watcher.alive()
    finally:
        watcher.stop()
        server.close()


class GarbageServer:
    """Answers every connection with ``reply`` (not necessarily HTTP) and closes it."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    conn.recv(65536)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def test_non_http_or_truncated_gateway_answer_is_counted_not_a_dead_watcher_thread() -> None:
    """A gateway (or anything on its port) answering a bad status line, an over-long
    header or a body shorter than its Content-Length made urllib raise
    http.client.HTTPException (not an OSError): it escaped poll() and killed the thread."""
    for reply in (b"SSH-2.0-OpenSSH_9.6\r\n",
                  b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
                  b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"document\": \"00"):
        server = GarbageServer(reply)
        watcher = watcher_for(server.url, interval_s=0.05)
        try:
            watcher.poll()
            assert watcher.error is not None, reply[:20]
            assert sum(watcher.counters.values()) == 1
            assert not watcher.counters["accepted"]
            watcher.start()
            assert wait_for(lambda w=watcher: sum(w.counters.values()) >= 3), reply[:20]
            assert watcher.alive()
        finally:
            watcher.stop()
            server.close()


def test_an_unexpected_error_in_a_poll_is_counted_and_the_watcher_keeps_polling() -> None:
    """Whatever a poll raises (here: the local publisher's offer), the thread survives,
    counts it as ``internal_error`` and polls again."""
    calls: list[str] = []

    def fetch(url: str) -> tuple[int, bytes]:
        calls.append(url)
        raise RuntimeError("boom")

    watcher = PayoutWatcher("http://gw", 0.02, gateway_key=SigningKey.generate().public_key,
                            owner_key=OwnerKey.generate().public_key, offer=lambda s: None,
                            fetch=fetch)
    watcher.start()
    try:
        assert wait_for(lambda: len(calls) >= 3)
        assert watcher.alive()
        assert watcher.counters["internal_error"] >= 2
        assert str(watcher.status()["error"]).startswith("internal_error")
    finally:
        watcher.stop()


class FlakyClient:
    """An MQTT client whose second poll raises what no one expected (a library bug)."""

    def __init__(self, _options: object) -> None:
        self.up, self.unacked, self.polls, self.connects = False, 0, 0, 0

    def connect(self) -> None:
        self.up, self.connects = True, self.connects + 1

    def poll(self, _timeout_s: float) -> list[Event]:
        self.polls += 1
        if self.polls == 2:
            raise struct.error("unpack requires a buffer of 2 bytes")
        time.sleep(0.01)
        return [Connected(session_present=False)] if self.polls in (1, 3) else []

    def publish(self, _topic: str, _payload: bytes, *, retain: bool = False) -> int:
        return 1

    def close(self) -> None:
        self.up = False


def test_unexpected_error_in_the_local_publisher_is_counted_and_it_reconnects() -> None:
    """The local publisher's loop caught only EdgeproofError: anything else raised while
    talking to the owner's broker ended its thread silently, status still "connected"."""
    device = DeviceInfo("ab" * 16, "edgeproof abababab", "test", "edgeproof", "homeassistant")
    broker = BrokerSettings(MqttConfig("mqtt://127.0.0.1:1", "127.0.0.1", 1, False))
    clients: list[FlakyClient] = []

    def factory(options: object) -> FlakyClient:
        clients.append(FlakyClient(options))
        return clients[-1]

    clock = [0.0]
    publisher = LocalPublisher(device, device_entities([], credit=False), broker, "flaky",
                               client_factory=factory,  # type: ignore[arg-type]
                               monotonic=lambda: clock[0])
    publisher.start()
    try:
        assert wait_for(lambda: publisher.counters["thread_errors"] == 1)
        clock[0] += 120.0  # past the reconnect back-off
        publisher._wake.set()  # noqa: SLF001 - end the back-off wait at once
        assert wait_for(lambda: clients[0].connects == 2 and publisher.state == "connected")
        assert publisher.counters["connects"] == 2
    finally:
        publisher.stop()
