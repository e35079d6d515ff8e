"""The whole quality loop with real agents: three simulated DHT22s in one room, one
miscalibrated by its config (``agent.sim_faults``), each agent sealing its climate stream
to its owner, through Mosquitto to the real gateway; the owner's hub is the validator (a
registered recipient whose X25519 key is the owner's sealing key, so it reads the full
streams); it judges the windows and logs its attestations; the gateway delivers them; and
the owner of the miscalibrated sensor sees it FAULTY in ``edgeproof-agent status``.

Windows are 24 s of 6 s buckets here (``--window-s 24 --bucket-s 6``: two readings of a
3-second sampler in each, so a missed read rarely empties a bucket), so the loop runs in
about two minutes of real time; the algorithm is the same as with the default 10 minutes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.clock import SystemClock
from agent.config import parse_config
from agent.identity import create_identity
from agent.sensors import load_simulated_hardware
from agent.service import AgentService
from agent.status import collect_status
from firmware_sim.broker import MosquittoBroker
from protocol.keys import OwnerKey, SigningKey, save_recipient_key, save_signing_key
from provisioning.sites import Site, SiteSensor, render
from tests.agent.responder import RATE, RealGateway
from tests.agent.test_service_gateway import wait
from tests.gateway.gwkit import ADMIN_TOKEN
from validator.cli import main as validator_main

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class SyncedClock(SystemClock):
    """The real clocks, with the wall clock taken as NTP-synchronised (a CI machine may not
    be; the validator uses only readings made with a synchronised clock)."""

    def wall_synced(self) -> bool:
        return True


@pytest.fixture
def gateway(tmp_path: Path, broker: MosquittoBroker) -> Iterator[RealGateway]:
    gw = RealGateway(tmp_path / "gw", broker)
    yield gw
    gw.stop()


def test_miscalibrated_agent_is_attested_faulty_and_its_owner_sees_it(
        tmp_path: Path, broker: MosquittoBroker, gateway: RealGateway,
        capsys: pytest.CaptureFixture[str]) -> None:
    owner, hub_signing = OwnerKey.generate(), SigningKey.generate()
    hub_box = owner.sealing  # the owner's own hub reads what every stream is sealed to
    reply = httpx.post(f"{gateway.url}/v1/recipients", headers=ADMIN, json={
        "name": "hub", "signing_key": hub_signing.public_key.hex(),
        "sealing_key": hub_box.public_key.hex()})
    assert reply.status_code == 201, reply.text
    faults = tmp_path / "faults.toml"
    faults.write_text('[[temperature]]\nkind = "bias"\nmagnitude = 2.0\n')
    clock, stop = SyncedClock(), threading.Event()
    states, device_ids, running = [], [], []
    for i in range(3):
        state = tmp_path / f"dht-{i}"
        agent = {"state_dir": str(state), **({"sim_faults": str(faults)} if i == 2 else {})}
        cfg = parse_config({
            "agent": agent, "mqtt": {"broker": broker.url},
            "gateway": {"key": gateway.verifier}, "outbox": {"commit_window_s": 0.1},
            "uplink": {"batch_interval_s": 0.2},
            "owner": {"public_key": owner.public_key.hex(),
                      "sealing_key": owner.sealing_public_key.hex()},
            "sensors": [{"kind": "dht22", "stream": "climate", "pin": 4, "interval_s": 3.0}],
        }, state)
        identity = create_identity(cfg.key_file)
        reply = httpx.post(f"{gateway.url}/v1/devices", headers=ADMIN, json={
            "name": f"dht-{i}", "public_key": identity.key.public_key.hex(), "owner": "olga",
            "rate_micro_per_hour": RATE, "owner_key": owner.public_key.hex(),
            "owner_sealing_key": owner.sealing_public_key.hex()})
        assert reply.status_code == 201, reply.text
        sim = load_simulated_hardware(i + 1, state, clock, sensor_faults_file=cfg.sim_faults)
        service = AgentService(cfg, clock, sim=sim)
        service.start()
        thread = threading.Thread(target=service.run, args=(stop,))
        thread.start()
        states.append(state)
        device_ids.append(identity.device_id.hex())
        running.append((thread, sim))
    try:
        def enough() -> bool:  # a condition: some 110 s of readings from every sensor
            return all([r["stream"] for r in gateway.records(d)].count("climate") >= 36
                       for d in device_ids)
        assert wait(enough, timeout=180.0)
        site = tmp_path / "room.toml"
        site.write_text(render(Site("room", "climate", "Cel", "hub", tuple(
            SiteSensor(f"dht-{i}", d, 0.5) for i, d in enumerate(device_ids)))))
        save_signing_key(tmp_path / "hub.sign", hub_signing)
        save_recipient_key(tmp_path / "hub.key", hub_box)
        capsys.readouterr()
        assert validator_main(["once", "--site", str(site), "--gateway", gateway.url,
                               "--signing-key", str(tmp_path / "hub.sign"),
                               "--recipient-key", str(tmp_path / "hub.key"),
                               "--window-s", "24", "--bucket-s", "6", "--settle-s", "0",
                               "--json"]) == 0
        outcome = json.loads(capsys.readouterr().out)
        assert outcome["logged"] >= 3
        assert outcome["refused"] == {}
        assert outcome["states"][device_ids[2]] == "faulty"
        assert outcome["states"][device_ids[0]] != "faulty"
        assert outcome["states"][device_ids[1]] != "faulty"

        def owner_told() -> bool:  # the delivery reached the running agent
            notes = collect_status(states[2])["quality"]
            return isinstance(notes, list) and any(n["state"] == "faulty" for n in notes)
        assert wait(owner_told, timeout=60.0)
        [note] = collect_status(states[2])["quality"]  # type: ignore[misc]
        assert (note["site"], note["reasons"]) == ("room", ["bias"])
        notes = collect_status(states[0])["quality"]
        assert isinstance(notes, list)
        assert all(n["state"] != "faulty" for n in notes)
    finally:
        stop.set()
        for thread, sim in running:
            thread.join(30)
            sim.close()
