"""``edgeproof-sim demo --local-broker``: the owner's home broker (firmware_sim/demo_home.py).

A real Mosquitto with a password file and a real agent: the section HomeBroker adds to an
agent config is one the agent accepts, the agent logs in with the password file it wrote
(0600), and the discovery configs the agent publishes are what HomeBroker reports.
"""

from __future__ import annotations

import stat
from pathlib import Path

from agent.clock import ManualClock
from agent.config import load_config
from agent.identity import create_identity
from agent.sensors import load_simulated_hardware
from agent.service import AgentService
from firmware_sim.demo_home import DEVICE_USER, HomeBroker
from protocol.keys import OwnerKey
from tests.agent.responder import Responder
from tests.agent.test_service import UNREACHABLE, evening
from tests.harness.waiting import eventually


def test_home_broker_sees_the_owner_pinned_devices_entities_through_its_password_file(
        tmp_path: Path) -> None:
    owner = OwnerKey.generate()
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
state_dir = "{tmp_path / 'state'}"
[gateway]
key = "{Responder(UNREACHABLE).verifier_key}"
[mqtt]
broker = "{UNREACHABLE}"
[owner]
public_key = "{owner.public_key.hex()}"
sealing_key = "{owner.sealing_public_key.hex()}"
[[sensors]]
kind = "dht22"
stream = "climate"
pin = 4
interval_s = 2.5
""")
    home = HomeBroker(tmp_path / "home")
    home.start()
    try:
        home.configure(config, "dev-1", "http://127.0.0.1:1")
        password_file = tmp_path / "local-mqtt.password"
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        cfg = load_config(config, {})
        assert cfg.local_mqtt is not None
        assert (cfg.local_mqtt.connection.username, cfg.local_mqtt.payout_url) == (
            DEVICE_USER, "http://127.0.0.1:1")
        create_identity(cfg.key_file)
        clock = ManualClock(wall_ms=int(evening() * 1000))
        sim = load_simulated_hardware(1, tmp_path, clock)
        service = AgentService(cfg, clock, sim=sim)
        service.start()
        try:
            found = eventually(lambda: (d := home.discovered()).get("dev-1") and len(
                d["dev-1"]) >= 5 and d, "the device's discovery configs")
        finally:
            service.shutdown()
            sim.close()
        assert {"sensor/climate_temperature", "sensor/climate_humidity",
                "sensor/credit_payable", "binary_sensor/uplink"} <= set(found["dev-1"])
        notes = home.notes()
        assert notes[0].startswith(f"home broker {home.url}: ")
        assert password_file.read_text() not in "\n".join(notes)
    finally:
        home.close()
