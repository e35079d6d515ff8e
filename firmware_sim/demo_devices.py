"""The demo's devices: their agent configs, their processes and what they report.

A device is provisioned like any other (a bundle from ``edgeproof-provision device add``)
and runs from its bundle in place, with the agent's documented laptop overrides: the state
directory by ``--state-dir`` (the bundle's ``var/lib/edgeproof``, which already holds the
device key) and the broker password by ``EDGEPROOF_MQTT_PASSWORD_FILE``. Like an operator
adapting ``[[sensors]]`` to a device, the demo edits the bundle's ``agent.toml`` for a
short run: sensors every few seconds, a usage record every ten seconds, status written
every second.
"""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.status import collect_status
from firmware_sim.procs import Child, spawn
from firmware_sim.stack import SimDevice
from firmware_sim.view import DeviceRow
from protocol.errors import StorageError
from provisioning import tomlwrite

# Sampling intervals (s) by sensor kind for a demo of a minute: a DHT22 may be read every
# 2.1 s at most (docs/AGENT.md), the rest are cheap.
DEMO_INTERVALS = {"dht22": 3, "cpu_temp": 5, "power_sense": 5, "motion": 2, "button": 5}
DEMO_SECTIONS: dict[str, dict[str, tomlwrite.Scalar]] = {
    "usage": {"checkpoint_interval_s": 5, "report_interval_s": 10},
    "uplink": {"batch_interval_s": 1},
    "service": {"status_interval_s": 1, "final_flush_s": 3},
}
FINAL_FLUSH_S = 3
TV_ON_FIRST_S = 4  # the first household's TV comes on this many seconds into the run
TV_ON_STEP_S = 3  # and each next one this much later


def write_demo_config(device: SimDevice, agent: dict[str, tomlwrite.Scalar] | None = None,
                      intervals: dict[str, float] | None = None) -> None:
    """Rewrite the bundle's agent.toml with the demo's short intervals (same keys otherwise)
    and ``agent`` added to its ``[agent]`` table (e.g. ``sim_faults``); ``intervals`` (by
    sensor kind) replace :data:`DEMO_INTERVALS`' where given.

    Raises StorageError if the file cannot be read or written.
    """
    try:
        data = tomllib.loads(device.config.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise StorageError(f"{device.config}: cannot read: {exc}") from None
    chosen = {**DEMO_INTERVALS, **(intervals or {})}
    for sensor in data.get("sensors", []):
        sensor["interval_s"] = chosen.get(sensor.get("kind"), sensor["interval_s"])
    for section, values in DEMO_SECTIONS.items():
        if section != "usage" or "usage" in data:
            data.setdefault(section, {}).update(values)
    data.setdefault("agent", {}).update(agent or {})
    text = tomlwrite.document(*_sections(data), comment=(
        f"edgeproof agent config for the demo device {device.name!r}: the bundle's config\n"
        "from edgeproof-provision with the sampling, usage, batch and status intervals\n"
        "shortened for a demo of a minute (firmware_sim/demo_devices.py)."))
    try:
        device.config.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise StorageError(f"{device.config}: cannot write: {exc.strerror}") from None


def _sections(data: dict[str, Any]) -> list[str]:
    out = []
    for name, value in data.items():
        if isinstance(value, list):
            out += [tomlwrite.table(name, item, array=True) for item in value]
        else:
            out.append(tomlwrite.table(name, value))
    return out


@dataclass
class DemoDevice:
    """A provisioned device and, once started, its agent process."""

    device: SimDevice
    index: int
    child: Child | None = None
    exit_code: int | None = None
    world_offset_s: float | None = None  # None: from the TV schedule (--tv-on-in)

    @property
    def name(self) -> str:
        return self.device.name

    def start(self, logs: Path, seed: int, *, assume_clock_synced: bool = False) -> Child:
        """Start the agent from the bundle; return its process. ``assume_clock_synced``:
        the host clock is not NTP-synchronised and the demo's grants need it to be."""
        env = dict(os.environ, EDGEPROOF_MQTT_PASSWORD_FILE=str(self.device.password_file))
        tv_on_in = TV_ON_FIRST_S + TV_ON_STEP_S * self.index
        argv = [sys.executable, "-m", "firmware_sim.demo_agent", "--config",
                str(self.device.config), "--state-dir", str(self.device.state_dir),
                "--seed", str(seed + self.index), "--tv-on-in", str(tv_on_in)]
        if self.world_offset_s is not None:
            argv += ["--world-offset-s", str(self.world_offset_s)]
        if assume_clock_synced:
            argv.append("--unsafe-assume-clock-synced")
        self.child = spawn(self.name, argv, logs / f"{self.name}.log", env=env)
        return self.child

    def row(self) -> DeviceRow:
        """What the device reports now (``edgeproof-agent status`` data, read-only)."""
        try:
            status = collect_status(self.device.state_dir)
        except StorageError:
            return DeviceRow(self.name)  # not started yet: no outbox
        return row_from_status(self.name, status)


def row_from_status(name: str, status: dict[str, Any]) -> DeviceRow:
    """Build a :class:`DeviceRow` from ``edgeproof-agent status --json`` data."""
    outbox, credit, agent = status["outbox"], status["credit"], status.get("agent") or {}
    service = agent.get("service") or {}
    uplink = agent.get("uplink") or {}
    state = str(uplink.get("state", "starting"))
    if uplink.get("error"):
        state = f"FAILED: {uplink['error']}"
    return DeviceRow(
        name=name,
        readings=int(service.get("readings", 0)),
        committed=int(outbox["last_seq"]) + 1,
        receipted=int(outbox["delivered"]) + int(outbox["duplicates"]),
        outbox=int(outbox["depth"]),
        dead_letters=sum(int(v) for v in outbox["dead_letters"].values()),
        accrued_micro=int(credit.get("accrued_micro") or 0),
        settled_micro=int(credit.get("settled_micro") or 0),
        uplink=state,
    )
