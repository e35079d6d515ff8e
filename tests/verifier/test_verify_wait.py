"""edgeproof-verify on a record that is logged but not yet covered by a checkpoint.

A real gateway that signs a checkpoint only every 5 leaves (and otherwise once an hour), so
a just-logged record stays uncovered until the test sends more: no race with a timer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import MosquittoBroker
from tests.gateway.conftest import RunningGateway, start_gateway
from tests.gateway.gwkit import DeviceClient, TestDevice, register, write_gateway_files
from verifier.cli import Waiting
from verifier.cli import main as verify


class FakeTime:
    """A monotonic clock that moves only when the verifier sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


@pytest.fixture
def gateway(broker: MosquittoBroker, tmp_path: Path) -> Iterator[RunningGateway]:
    running = start_gateway(write_gateway_files(tmp_path / "gw", broker.port,
                                                every_leaves=5, interval_s=3600))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def sender(broker: MosquittoBroker, gateway: RunningGateway) -> Iterator[DeviceClient]:
    client = DeviceClient(broker.port, gateway.verifier)
    try:
        yield client
    finally:
        client.close()


def logged(gateway: RunningGateway, sender: DeviceClient, device: TestDevice, n: int,
           batch_id: int) -> list[int]:
    """Send ``n`` records; return their leaf indexes once the gateway's receipt says so."""
    sender.send(device, device.records(n), batch_id=batch_id)
    receipt = sender.wait_for(device.device_id, batch_id)
    leaves = [o.leaf_index for o in receipt.outcomes]
    assert all(leaf is not None for leaf in leaves)
    return leaves  # type: ignore[return-value]


def record_argv(gateway: RunningGateway, leaf: int, *extra: str) -> list[str]:
    return ["record", "--gateway", gateway.base_url, "--leaf", str(leaf),
            "--gateway-key", gateway.verifier, *extra]


def test_record_not_yet_in_a_checkpoint_says_so_in_one_line_and_how_to_wait(
        gateway: RunningGateway, sender: DeviceClient,
        capsys: pytest.CaptureFixture[str]) -> None:
    device = TestDevice.create("fresh-1", 81)
    register(gateway.base_url, device)
    leaves = logged(gateway, sender, device, 3, 1)
    capsys.readouterr()
    assert verify(record_argv(gateway, leaves[-1])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (f"leaf {leaves[-1]} is logged but not yet covered by a checkpoint (latest size "
            in err)
    assert "rerun with --wait" in err
    assert "HTTP 400" not in err


def test_wait_times_out_with_one_clear_line(
        gateway: RunningGateway, sender: DeviceClient,
        capsys: pytest.CaptureFixture[str]) -> None:
    device = TestDevice.create("fresh-2", 82)
    register(gateway.base_url, device)
    leaf = logged(gateway, sender, device, 2, 1)[-1]
    clock = FakeTime()
    capsys.readouterr()
    assert verify(record_argv(gateway, leaf, "--wait", "3"),
                  Waiting(monotonic=clock.monotonic, sleep=clock.sleep)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"leaf {leaf} is still not covered by a checkpoint after waiting 3 s" in err
    assert clock.sleeps >= 6  # it polled (every 0.5 s of its clock) until the deadline


def test_wait_verifies_once_a_checkpoint_covers_the_record(
        gateway: RunningGateway, sender: DeviceClient,
        capsys: pytest.CaptureFixture[str]) -> None:
    device = TestDevice.create("fresh-3", 83)
    register(gateway.base_url, device)
    leaf = logged(gateway, sender, device, 3, 1)[-1]
    more: list[int] = []

    def grow_the_log() -> None:  # while the verifier waits: 2 more leaves make 5
        if not more:
            more.extend(logged(gateway, sender, device, 2, 2))

    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the real clock: the gateway signs in its own time
        sleeps.append(seconds)
        grow_the_log()
        time.sleep(seconds)

    capsys.readouterr()
    assert verify(record_argv(gateway, leaf, "--wait", "120", "--json"),
                  Waiting(sleep=sleep)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"]
    assert report["checks"][-1]["check"] == "inclusion proof"
    assert sleeps
    assert more


def test_wait_without_seconds_uses_the_bounded_default_and_bad_values_are_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        verify(["record", "--gateway", "http://127.0.0.1:9", "--leaf", "0", "--wait", "-1"])
    assert exit_info.value.code == 2
    assert "--wait: must be in" in capsys.readouterr().err
