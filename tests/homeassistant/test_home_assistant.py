"""A real Home Assistant (2024.1.6, .tools/ha-venv) discovers an agent on the owner's broker.

Home Assistant itself parses the agent's discovery configs (its own voluptuous schemas, its
own MQTT integration): the device appears with its entities, device classes, units and
state classes; their values are the ones the device signed; the stream sealed for others
never appears; and every entity goes unavailable when the agent is killed (the last will)
and when it stops cleanly (``offline`` before DISCONNECT). Runs ha_runner.py under Home
Assistant's Python; installed by ``make deps`` (scripts/ensure-home-assistant.sh).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agent.identity import create_identity
from firmware_sim.broker import MosquittoBroker
from protocol.keys import load_device_key
from protocol.record import Values
from tests.agent.responder import RATE, Responder
from tests.harness.waiting import within

REPO = Path(__file__).resolve().parents[2]
HA_PYTHON = REPO / ".tools" / "ha-venv" / "bin" / "python"
RUNNER = Path(__file__).with_name("ha_runner.py")
ACME = "d11747279eb85fba5db8e28508676c3d5272ac31b7f4fffd47b95657e032e55b"
Snapshot = dict[str, Any]


class HomeAssistant:
    """ha_runner.py as a child process; :attr:`latest` is its last snapshot."""

    def __init__(self, config_dir: Path, broker_port: int) -> None:
        if not HA_PYTHON.exists():
            pytest.fail(f"Home Assistant is not installed ({HA_PYTHON} missing): run make deps "
                        f"(scripts/ensure-home-assistant.sh)")
        self.log = (config_dir.parent / "ha.log").open("wb")
        self.proc = subprocess.Popen([str(HA_PYTHON), str(RUNNER), str(config_dir),
                                      str(broker_port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log)
        self.latest: Snapshot = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.latest = json.loads(line)

    def wait_for(self, what: str, predicate: Callable[[Snapshot], bool],
                 timeout_s: float = 90.0) -> Snapshot:
        snap = self.latest

        def shown() -> bool:
            nonlocal snap
            snap = self.latest
            if "states" in snap and predicate(snap):
                return True
            if self.proc.poll() is not None:
                pytest.fail(f"Home Assistant never showed {what}; last: {snap}")
            return False
        if not within(shown, timeout_s, every_s=0.1):
            pytest.fail(f"Home Assistant never showed {what}; last: {snap}")
        return snap

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def home_assistant(tmp_path: Path, broker: MosquittoBroker) -> Iterator[HomeAssistant]:
    ha = HomeAssistant(tmp_path / "ha", broker.port)
    try:
        yield ha
    finally:
        ha.stop()


def agent_toml(tmp_path: Path, fleet: str, gateway_key: str, local: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
state_dir = "{tmp_path / 'state'}"
[gateway]
key = "{gateway_key}"
[mqtt]
broker = "{fleet}"
[uplink]
batch_interval_s = 0.2
[outbox]
commit_window_s = 0.2
[service]
status_interval_s = 0.5
[recipients]
acme = "{ACME}"
[local_mqtt]
broker = "{local}"
device_name = "kitchen pi"
status_interval_s = 0.5
[[sensors]]
kind = "cpu_temp"
stream = "cpu"
interval_s = 1
[[sensors]]
kind = "dht22"
stream = "climate"
pin = 4
interval_s = 2.5
recipients = ["acme"]
[[sensors]]
kind = "power_sense"
stream = "tv"
pin = 17
interval_s = 1
[[sensors]]
kind = "motion"
stream = "presence"
pin = 27
interval_s = 1
[usage]
input = "tv"
rate_micro_per_hour = {RATE}
checkpoint_interval_s = 1
report_interval_s = 2
""")
    return path


def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config",
                                 str(config), "--simulate"], stdout=out, stderr=out, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})


def ours(snap: Snapshot, node: str) -> dict[str, dict[str, Any]]:
    """unique_id suffix -> {entity_id, state, attributes, entity_category} of our device."""
    out = {}
    for entity_id, entry in snap["entities"].items():
        unique = entry["unique_id"] or ""
        if unique.startswith(node + "_") and entity_id in snap["states"]:
            out[unique[len(node) + 1:]] = {"entity_id": entity_id,
                                           "category": entry["entity_category"],
                                           "device": entry["device"],
                                           **snap["states"][entity_id]}
    return out


EXPECTED = {"cpu_temperature", "tv", "presence", "credit_accrued", "credit_settled", "outbox_depth",
            "outbox_bytes", "outbox_dropped", "sensor_errors", "uplink", "problem"}


def all_states(snap: Snapshot, node: str, allowed: Callable[[str], bool]) -> bool:
    mine = ours(snap, node)
    return set(mine) == EXPECTED and all(allowed(e["state"]) for e in mine.values())


def last_signed(responder: Responder, device_id: bytes, stream: str) -> Decimal | None:
    """The value of the last record of ``stream`` the gateway logged (plaintext stream)."""
    logged = responder.logged.get(device_id)
    if logged is None:
        return None
    records = [r for _, r in sorted(logged.records.items()) if r.record.stream == stream]
    body = records[-1].record.body if records else None
    return body.values[0].value if isinstance(body, Values) else None


def shows_signed_values(snap: Snapshot, node: str, responder: Responder,
                        device_id: bytes) -> bool:
    mine = ours(snap, node)
    cpu = last_signed(responder, device_id, "cpu")
    tv = last_signed(responder, device_id, "tv")
    return (cpu is not None and mine["cpu_temperature"]["state"] == str(cpu)
            and tv is not None and mine["tv"]["state"] == ("on" if tv else "off"))


@pytest.mark.timeout(240)
def test_home_assistant_shows_the_device_its_values_and_marks_it_unavailable_when_it_stops(
        tmp_path: Path, broker: MosquittoBroker, home_assistant: HomeAssistant) -> None:
    fleet = MosquittoBroker(tmp_path / "fleet")
    fleet.start()
    responder = Responder(fleet.url).start()
    state = tmp_path / "state"
    create_identity(state / "device.key")
    device_id = responder.register(load_device_key(state / "device.key").public_key)
    node = f"edgeproof_{device_id.hex()[:16]}"
    config = agent_toml(tmp_path, fleet.url, responder.verifier_key, broker.url)
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        snap = home_assistant.wait_for("the agent's entities with values", lambda s: all_states(
            s, node, lambda v: v not in ("unavailable", "unknown")))
        mine = ours(snap, node)
        attrs = {k: e["attributes"] for k, e in mine.items()}
        temp = attrs["cpu_temperature"]
        assert (temp["device_class"], temp["unit_of_measurement"], temp["state_class"]) == (
            "temperature", "°C", "measurement")
        assert attrs["tv"]["device_class"] == "power"
        assert attrs["presence"]["device_class"] == "motion"
        assert (attrs["credit_accrued"]["unit_of_measurement"],
                attrs["credit_accrued"]["state_class"]) == ("credits", "total_increasing")
        assert (attrs["outbox_bytes"]["device_class"],
                attrs["outbox_bytes"]["unit_of_measurement"]) == ("data_size", "B")
        assert attrs["uplink"]["device_class"] == "connectivity"
        assert attrs["problem"]["device_class"] == "problem"
        assert {k for k, e in mine.items() if e["category"] == "diagnostic"} == {
            "outbox_bytes", "outbox_dropped", "sensor_errors", "uplink", "problem"}
        (device,) = {e["device"] for e in mine.values()}
        info = snap["devices"][device]
        assert info["name"] == "kitchen pi"
        assert info["manufacturer"] == "edgeproof"
        assert info["identifiers"] == [f"mqtt:edgeproof_{device_id.hex()}"]
        assert not [e for e in snap["entities"] if "climate" in e]  # sealed for acme
        # The values Home Assistant shows are the ones the device signed and the gateway
        # logged; the uplink works and nothing is wrong.
        home_assistant.wait_for("the last signed cpu temperature and tv state", lambda s:
                                shows_signed_values(s, node, responder, device_id))
        home_assistant.wait_for("uplink on, no problem", lambda s: (
            ours(s, node)["uplink"]["state"] == "on"
            and ours(s, node)["problem"]["state"] == "off"))
        mine = ours(home_assistant.latest, node)
        assert Decimal(mine["credit_accrued"]["state"]) >= Decimal(
            mine["credit_settled"]["state"]) >= 0

        agent.kill()  # no DISCONNECT: the broker publishes the last will
        agent.wait(30)
        home_assistant.wait_for("every entity unavailable after a kill", lambda s: all_states(
            s, node, lambda v: v == "unavailable"))

        agent = start_agent(config, tmp_path / "agent.log")
        home_assistant.wait_for("the entities back", lambda s: all_states(
            s, node, lambda v: v != "unavailable"))
        agent.send_signal(signal.SIGTERM)  # a clean stop says "offline" itself
        assert agent.wait(60) == 0
        home_assistant.wait_for("every entity unavailable after a clean stop", lambda s:
                                all_states(s, node, lambda v: v == "unavailable"))
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(30)
        responder.stop()
        fleet.kill()
