"""The network-cut proxy: forwards, resets on a cut, holds bytes in a blackhole."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.harness.netproxy import NetProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP echo server on loopback."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by the teardown
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


def _roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return sock.recv(4096)


def test_forwards_both_ways(echo_port: int) -> None:
    with NetProxy(echo_port) as proxy, socket.create_connection(("127.0.0.1", proxy.port),
                                                                timeout=5) as sock:
        assert _roundtrip(sock, b"hello") == b"hello"
        assert proxy.counters.bytes_up == proxy.counters.bytes_down == 5


def test_cut_resets_open_connections_and_refuses_new_ones_until_restored(
        echo_port: int) -> None:
    with NetProxy(echo_port) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert _roundtrip(sock, b"a") == b"a"
        proxy.cut("reset")
        assert sock.recv(16) == b""  # closed under the client
        sock.close()
        refused = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert refused.recv(16) == b""
        refused.close()
        proxy.restore()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as again:
            assert _roundtrip(again, b"back") == b"back"


def test_blackhole_holds_bytes_until_restored(echo_port: int) -> None:
    with NetProxy(echo_port) as proxy, socket.create_connection(("127.0.0.1", proxy.port),
                                                                timeout=5) as sock:
        proxy.cut("blackhole")
        sock.sendall(b"held")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(16)
        proxy.restore()
        sock.settimeout(5)
        assert sock.recv(16) == b"held"
