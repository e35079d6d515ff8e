"""Run a real Home Assistant against a test broker and print what it shows, as JSON lines.

Runs under Home Assistant's own Python (.tools/ha-venv, scripts/ensure-home-assistant.sh),
never under edgeproof's venv, and imports nothing of edgeproof. Usage:

    .tools/ha-venv/bin/python tests/homeassistant/ha_runner.py CONFIG_DIR BROKER_PORT

It writes a minimal Home Assistant configuration into CONFIG_DIR (the MQTT integration set up
as a config entry for 127.0.0.1:BROKER_PORT with discovery on, HTTP on a free loopback port),
starts Home Assistant with no pip installs, and prints one line of JSON whenever the MQTT
entities change: {"states": {entity_id: {"state", "attributes"}}, "entities": {entity_id:
{"unique_id", "entity_category", "device"}}, "devices": {device id: {...}}}. It stops on
SIGTERM or when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from homeassistant import bootstrap
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.runner import RuntimeConfig

MQTT_ENTRY = "edgeproof_test_mqtt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(config_dir: Path, broker_port: int) -> None:
    (config_dir / ".storage").mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(
        "homeassistant:\n  name: edgeproof test\n  latitude: 0\n  longitude: 0\n"
        "  elevation: 0\n  unit_system: metric\n  time_zone: UTC\n  currency: EUR\n"
        f"http:\n  server_host: 127.0.0.1\n  server_port: {free_port()}\n")
    entry = {"entry_id": MQTT_ENTRY, "version": 1, "minor_version": 1, "domain": "mqtt",
             "title": "test broker", "source": "user", "unique_id": None,
             "disabled_by": None, "pref_disable_new_entities": False,
             "pref_disable_polling": False, "options": {},
             "data": {"broker": "127.0.0.1", "port": broker_port, "discovery": True,
                      "discovery_prefix": "homeassistant"}}
    (config_dir / ".storage" / "core.config_entries").write_text(json.dumps(
        {"version": 1, "minor_version": 1, "key": "core.config_entries",
         "data": {"entries": [entry]}}))


def snapshot(hass: HomeAssistant) -> dict[str, Any]:
    entities = {e.entity_id: {"unique_id": e.unique_id, "entity_category":
                              e.entity_category.value if e.entity_category else None,
                              "device": e.device_id}
                for e in er.async_get(hass).entities.values() if e.platform == "mqtt"}
    states = {s.entity_id: {"state": s.state, "attributes": dict(s.attributes)}
              for s in hass.states.async_all() if s.entity_id in entities}
    devices = {d.id: {"name": d.name, "manufacturer": d.manufacturer, "model": d.model,
                      "sw_version": d.sw_version,
                      "identifiers": sorted(f"{a}:{b}" for a, b in d.identifiers)}
               for d in dr.async_get(hass).devices.values()
               if MQTT_ENTRY in d.config_entries}
    return {"states": states, "entities": entities, "devices": devices}


async def main(config_dir: Path, broker_port: int) -> int:
    write_config(config_dir, broker_port)
    hass = await bootstrap.async_setup_hass(RuntimeConfig(config_dir=str(config_dir),
                                                          skip_pip=True))
    if hass is None:
        print(json.dumps({"error": "Home Assistant did not set up"}), flush=True)
        return 1
    await hass.async_start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    print(json.dumps({"started": True}), flush=True)
    last = ""
    while not stop.is_set():
        line = json.dumps(snapshot(hass), sort_keys=True, default=str)
        if line != last:
            print(line, flush=True)
            last = line
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    await hass.async_stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]))))
