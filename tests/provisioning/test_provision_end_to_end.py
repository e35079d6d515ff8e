"""From provisioning to a running device: the real agent runs from a bundle, its records
land in the real gateway's log, and revocation cuts it off.

The bundle's files are "installed" into a per-test root (tmp_path/device) instead of / ;
the agent is pointed there with its documented overrides (--state-dir and
EDGEPROOF_MQTT_PASSWORD_FILE), with simulated sensors (--simulate).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from provisioning.devices_store import AGENT_CONFIG, BROKER_PASSWORD, ETC, STATE, bundle_dir
from tests.harness.waiting import within
from tests.provisioning.provision_live import LiveFleet

RECORDS_WAIT_S = 60.0  # a bound for a slow, loaded machine; waits return at once


def install_bundle(bundle: Path, root: Path) -> Path:
    """Copy a bundle's etc/ and var/ into ``root`` as `cp -a` onto a device would."""
    for sub in (ETC, STATE):
        if (bundle / sub).exists():
            shutil.copytree(bundle / sub, root / sub, dirs_exist_ok=True)
    return root


@contextmanager
def running_agent(root: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ, EDGEPROOF_MQTT_PASSWORD_FILE=str(root / BROKER_PASSWORD))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(root / AGENT_CONFIG),
             "--simulate", "--state-dir", str(root / STATE)],
            stdout=out, stderr=out, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def logged_records(live: LiveFleet, device_id: str) -> int:
    resp = requests.get(f"{live.gateway.url}/v1/devices/{device_id}/records", timeout=5)
    resp.raise_for_status()
    return len(resp.json()["records"])


def wait_for_records(live: LiveFleet, device_id: str, proc: subprocess.Popen[bytes],
                     log: Path) -> int:
    count = 0

    def logged() -> bool:
        nonlocal count
        assert proc.poll() is None, f"agent exited: {log.read_text()[-3000:]}"
        count = logged_records(live, device_id)
        return count > 0
    assert within(logged, RECORDS_WAIT_S, every_s=0.2), \
        f"no records logged; agent log: {log.read_text()[-3000:]}"
    return count


@pytest.fixture
def agent_available() -> None:
    pytest.importorskip("agent.service", reason="the agent is not built yet")


def test_factory_provisioned_device_runs_from_its_bundle(
        live_fleet: LiveFleet, tmp_path: Path, agent_available: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert live_fleet.run("device", "add", "e2e-factory", "--json") == 0
    device_id = json.loads(capsys.readouterr().out)[0]["device_id"]
    root = install_bundle(bundle_dir(live_fleet.config, "e2e-factory"), tmp_path / "device")
    log = tmp_path / "agent.log"
    with running_agent(root, log) as proc:
        assert wait_for_records(live_fleet, device_id, proc, log) >= 1


def test_enrolled_device_keeps_its_key_and_is_cut_off_by_revoke(
        live_fleet: LiveFleet, tmp_path: Path, agent_available: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "device"
    keygen = subprocess.run([sys.executable, "-m", "agent.cli", "keygen", "--state-dir",
                             str(root / STATE), "--json"], capture_output=True, text=True,
                            check=True, timeout=60)
    made = json.loads(keygen.stdout)
    assert live_fleet.run("device", "enroll", "e2e-enrolled",
                          "--public-key", made["public_key"]) == 0
    install_bundle(bundle_dir(live_fleet.config, "e2e-enrolled"), root)
    log = tmp_path / "agent.log"
    with running_agent(root, log) as proc:
        wait_for_records(live_fleet, made["device_id"], proc, log)
        assert live_fleet.run("device", "revoke", "e2e-enrolled") == 0
        # The broker drops the connection on reload and refuses the credential from then
        # on; the agent treats that as permanent and stops its uplink (no hammering).
        within(lambda: "UPLINK STOPPED" in log.read_text(), RECORDS_WAIT_S, every_s=0.1)
        stopped = [line for line in log.read_text().splitlines() if "UPLINK STOPPED" in line]
        assert stopped, log.read_text()[-3000:]
        assert "Not authorized" in stopped[0], log.read_text()[-3000:]
