"""Two agents on one state dir, two gateways on one data dir: the second refuses.

Real processes (the installed CLIs' modules) against a real Mosquitto: the first holds the
directory's lock; a second one stops at once with one line naming the first's pid and
changes nothing; after ``kill -9`` of the first, the stale lock file blocks nothing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.procs import Child, spawn
from tests.agent.responder import Responder
from tests.gateway.gwkit import write_gateway_files
from tests.harness.waiting import within

START_S = 60.0  # generous: a loaded CI machine starts Python slowly


def wait_for(what: str, predicate: Callable[[], bool], child: Child,
             timeout_s: float = START_S) -> None:
    def check() -> bool:
        if predicate():
            return True
        if not child.alive():
            pytest.fail(f"{what}: the process exited: {child.log_tail(5)}")
        return False
    if not within(check, timeout_s, every_s=0.05):
        pytest.fail(f"{what}: not within {timeout_s} s: {child.log_tail(5)}")


def holds_lock(lock: Path, child: Child) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return lock.read_text().strip() == str(child.pid)
        except OSError:
            return False
    return check


def refused(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=START_S, check=False)


def kill9(child: Child) -> None:
    child.signal(signal.SIGKILL)
    child.process.wait(timeout=30)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for child in made:
        child.stop(20)


def test_second_agent_on_the_same_state_dir_refuses_naming_the_first_and_kill9_leaves_no_block(
        tmp_path: Path, broker: MosquittoBroker, children: list[Child]) -> None:
    state = tmp_path / "state"
    argv = [sys.executable, "-m", "agent.cli", "run", "--simulate", "--state-dir", str(state),
            "--broker", broker.url, "--gateway-key", Responder(broker.url).verifier_key]
    lock = state / "agent.lock"
    first = spawn("agent-1", argv, tmp_path / "agent-1.log")
    children.append(first)
    wait_for("first agent running", (state / "status.json").exists, first)
    assert holds_lock(lock, first)()
    outbox_before = (state / "outbox.sqlite").stat().st_size

    second = refused(argv)
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1, second.stderr
    assert f"already in use by agent pid {first.pid}" in second.stderr
    assert first.alive()
    assert holds_lock(lock, first)()
    assert (state / "outbox.sqlite").stat().st_size >= outbox_before  # untouched by it

    kill9(first)
    assert lock.read_text().strip() == str(first.pid)  # the stale file stays behind
    again = spawn("agent-2", argv, tmp_path / "agent-2.log")
    children.append(again)
    wait_for("restarted agent holds the lock", holds_lock(lock, again), again)
    status = state / "status.json"
    wait_for("restarted agent running", lambda: f'"pid": {again.pid}' in status.read_text(),
             again)
    assert again.stop(20) == 0


def test_second_gateway_on_the_same_data_dir_refuses_naming_the_first_and_kill9_leaves_no_block(
        tmp_path: Path, broker: MosquittoBroker, children: list[Child]) -> None:
    port = free_port()
    files = write_gateway_files(tmp_path / "gw", broker.port, http_port=port)
    argv = [sys.executable, "-m", "gateway.cli", "run", "--config", str(files.config)]
    lock = files.data_dir / "gateway.lock"

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    first = spawn("gateway-1", argv, tmp_path / "gateway-1.log")
    children.append(first)
    wait_for("first gateway healthy", healthy, first)
    assert holds_lock(lock, first)()

    # Another port, so only the lock can stop it (not the HTTP address).
    other = write_gateway_files(tmp_path / "gw", broker.port, http_port=free_port(),
                                client_id="edgeproof-gateway-second")
    second = refused([sys.executable, "-m", "gateway.cli", "run", "--config", str(other.config)])
    assert second.returncode == 2  # as the agent: docs/CLI.md
    assert second.stderr.count("\n") == 1, second.stderr
    assert f"already in use by gateway pid {first.pid}" in second.stderr
    assert first.alive()
    assert healthy()

    kill9(first)
    files = write_gateway_files(tmp_path / "gw", broker.port, http_port=port)
    again = spawn("gateway-2", argv, tmp_path / "gateway-2.log")
    children.append(again)
    wait_for("restarted gateway healthy", healthy, again)
    assert holds_lock(lock, again)()
    assert again.stop(20) == 0


def test_lock_is_released_when_the_holder_exits_cleanly(tmp_path: Path) -> None:
    from osutil.lockfile import AlreadyRunning, hold_lock  # noqa: PLC0415

    held = hold_lock(tmp_path, "agent")
    with pytest.raises(AlreadyRunning, match=r"pid \d+"):
        hold_lock(tmp_path, "agent")
    held.release()
    hold_lock(tmp_path, "agent").release()
