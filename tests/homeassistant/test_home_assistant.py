"""A real Home Assistant (2024.1.6, .tools/ha-venv) discovers an agent on the owner's broker.

Home Assistant itself parses the agent's discovery configs (its own voluptuous schemas, its
own MQTT integration): the device appears with its entities, device classes, units and
state classes; their values are the ones the device signed (and, for the owner's payout
figures, the ones of the gateway-signed payout notice), including a DHT22's temperature
and humidity sealed to the owner (the owner's own readings, shown before sealing; a stream
sealed for others without an owner is refused, tests/agent/test_local_mqtt.py); and every
entity goes unavailable when the agent is killed (the last will)
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
from protocol.keys import OwnerKey, RecipientKey, load_device_key
from protocol.payout_notice import PayoutNotice
from tests.agent.notice_server import NoticeServer
from tests.agent.responder import RATE, Responder
from tests.harness.waiting import within
from verifier.client import LoggedRecord
from verifier.recipient import open_records

REPO = Path(__file__).resolve().parents[2]
HA_PYTHON = REPO / ".tools" / "ha-venv" / "bin" / "python"
RUNNER = Path(__file__).with_name("ha_runner.py")
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


def agent_toml(tmp_path: Path, fleet: str, gateway_key: str, local: str,
               owner: OwnerKey, payout_url: str) -> Path:
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
[owner]
public_key = "{owner.public_key.hex()}"
sealing_key = "{owner.sealing_public_key.hex()}"
[local_mqtt]
broker = "{local}"
device_name = "kitchen pi"
status_interval_s = 0.5
payout_url = "{payout_url}"
[[sensors]]
kind = "cpu_temp"
stream = "cpu"
interval_s = 1
[[sensors]]
kind = "dht22"
stream = "climate"
pin = 4
interval_s = 2.5
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


EXPECTED = {"cpu_temperature", "climate_temperature", "climate_humidity", "tv", "presence",
            "credit_accrued", "credit_settled", "credit_payable", "credit_claimed",
            "credit_claimable", "outbox_depth", "outbox_bytes",
            "outbox_dropped", "sensor_errors", "uplink", "problem"}


def all_states(snap: Snapshot, node: str, allowed: Callable[[str], bool]) -> bool:
    mine = ours(snap, node)
    return set(mine) == EXPECTED and all(allowed(e["state"]) for e in mine.values())


def last_signed(responder: Responder, device_id: bytes, public_key: bytes, stream: str,
                owner: RecipientKey) -> tuple[Decimal, ...] | None:
    """The values of the last record of ``stream`` the gateway logged, opened by the owner
    (every stream is sealed to the owner's key alone)."""
    logged = responder.logged.get(device_id)
    if logged is None:
        return None
    rows = [LoggedRecord(i, device_id, seq, signed.record.stream, signed.raw)
            for i, (seq, signed) in enumerate(sorted(dict(logged.records).items()))]
    opened = [o for o in open_records(rows, [(0, public_key)], owner)
              if o.stream == stream and o.status == "decrypted"]
    return tuple(m.value for m in opened[-1].values) if opened else None


def shows_signed_values(snap: Snapshot, node: str, responder: Responder, device_id: bytes,
                        public_key: bytes, owner: RecipientKey) -> bool:
    mine = ours(snap, node)
    cpu = last_signed(responder, device_id, public_key, "cpu", owner)
    tv = last_signed(responder, device_id, public_key, "tv", owner)
    climate = last_signed(responder, device_id, public_key, "climate", owner)
    return (cpu is not None and mine["cpu_temperature"]["state"] == str(cpu[0])
            and tv is not None and mine["tv"]["state"] == ("on" if tv[0] else "off")
            and climate is not None
            and (mine["climate_temperature"]["state"], mine["climate_humidity"]["state"])
            == (str(climate[0]), str(climate[1])))


@pytest.mark.timeout(240)
def test_home_assistant_shows_the_device_its_values_and_marks_it_unavailable_when_it_stops(
        tmp_path: Path, broker: MosquittoBroker, home_assistant: HomeAssistant) -> None:
    fleet = MosquittoBroker(tmp_path / "fleet")
    fleet.start()
    responder = Responder(fleet.url).start()
    state = tmp_path / "state"
    create_identity(state / "device.key")
    public_key = load_device_key(state / "device.key").public_key
    device_id = responder.register(public_key)
    node = f"edgeproof_{device_id.hex()[:16]}"
    owner = OwnerKey.generate()
    # The gateway's payout notice for the owner, signed with the key the agent pins.
    payout = NoticeServer()
    payout.serve(PayoutNotice(owner.owner_id, 2, b"\x11" * 20, 7_500_000, 2_000_000, 1337,
                              b"\x22" * 20, b"\x33" * 32), responder.key)
    config = agent_toml(tmp_path, fleet.url, responder.verifier_key, broker.url, owner,
                        payout.url)
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        snap = home_assistant.wait_for("the agent's entities with values", lambda s: all_states(
            s, node, lambda v: v not in ("unavailable", "unknown")))
        mine = ours(snap, node)
        attrs = {k: e["attributes"] for k, e in mine.items()}
        temp = attrs["cpu_temperature"]
        assert (temp["device_class"], temp["unit_of_measurement"], temp["state_class"]) == (
            "temperature", "°C", "measurement")
        assert attrs["climate_temperature"] == {**attrs["climate_temperature"], **{
            k: temp[k] for k in ("device_class", "unit_of_measurement", "state_class")}}
        humidity = attrs["climate_humidity"]
        assert (humidity["device_class"], humidity["unit_of_measurement"],
                humidity["state_class"]) == ("humidity", "%", "measurement")
        assert attrs["tv"]["device_class"] == "power"
        assert attrs["presence"]["device_class"] == "motion"
        assert (attrs["credit_accrued"]["unit_of_measurement"],
                attrs["credit_accrued"]["state_class"]) == ("credits", "total_increasing")
        for key, state_class in (("credit_payable", "total_increasing"),
                                 ("credit_claimed", "total_increasing"),
                                 ("credit_claimable", "measurement")):
            assert (attrs[key]["unit_of_measurement"], attrs[key]["state_class"]) == (
                "credits", state_class)
        assert {k: mine[k]["state"] for k in ("credit_payable", "credit_claimed",
                                              "credit_claimable")} == {
            "credit_payable": "7.5", "credit_claimed": "2", "credit_claimable": "5.5"}
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
        # The values Home Assistant shows are the ones the device signed (sealed to the
        # owner) and the gateway logged; the uplink works and nothing is wrong.
        home_assistant.wait_for("the last signed cpu and climate values and tv state",
                                lambda s: shows_signed_values(s, node, responder, device_id,
                                                              public_key, owner.sealing))
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
        payout.close()
