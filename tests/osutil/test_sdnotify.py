"""osutil.sdnotify: the one sd_notify(3) client of the agent and the gateway."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from osutil.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def _drain(sock: socket.socket) -> list[bytes]:
    got = []
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5)
    return got


def test_ready_status_stopping_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("log size 0")
    assert notifier.status("busy")
    assert notifier.stopping()
    assert sock.recv(100) == b"READY=1\nSTATUS=log size 0"
    assert sock.recv(100) == b"STATUS=busy"
    assert sock.recv(100) == b"STOPPING=1\nSTATUS=stopping"


def test_abstract_namespace_socket_named_with_at_sign() -> None:
    name = f"edgeproof-osutil-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert sock.recv(100) == b"STATUS=hello"


def test_outside_systemd_every_call_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.watchdog(0, progressed=True)


def test_unusable_notify_socket_value_disables_instead_of_crashing() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled
    assert not Notifier({"NOTIFY_SOCKET": "@"}).enabled


def test_vanished_socket_is_reported_false_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.status("y")


def test_hung_loop_gets_no_watchdog_ping(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_ms == 2000
    assert not notifier.watchdog(0, progressed=False)
    assert notifier.watchdog(0, progressed=True)
    assert not notifier.watchdog(999, progressed=True)  # under half the interval
    assert not notifier.watchdog(5000, progressed=False)  # time passed, no progress
    assert notifier.watchdog(5000, progressed=True)
    assert _drain(sock) == [b"WATCHDOG=1", b"WATCHDOG=1"]


def test_watchdog_meant_for_another_pid_is_ignored(listener: tuple[socket.socket, str]) -> None:
    _, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}
    assert Notifier(env, pid=4243).watchdog_ms is None
    assert Notifier(env, pid=4242).watchdog_ms == 2000
    assert Notifier({**env, "WATCHDOG_USEC": "0"}, pid=4242).watchdog_ms is None
    assert Notifier({**env, "WATCHDOG_USEC": "soon"}, pid=4242).watchdog_ms is None
