"""A site file as ``edgeproof-provision site add`` writes it (``FLEET/sites/NAME.toml``).

Read with the typed TOML reader every edgeproof config uses, so a bad file is one
ConfigError naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from osutil.toml_table import Table, read_toml
from protocol.errors import ConfigError
from validator.model import SensorSpec, SiteSpec


@dataclass(frozen=True)
class SiteFile:
    """A declared site: what it measures and its sensors (names are device ids in hex)."""

    spec: SiteSpec
    stream: str
    field: str
    validator: str

    def device_ids(self) -> list[bytes]:
        return [bytes.fromhex(s.name) for s in self.spec.sensors]


def load_site(path: Path) -> SiteFile:
    """Read a site file; ConfigError naming the file and key if it is not one."""
    data = read_toml(path)
    root = Table(data, "", path.parent)
    site = root.table("site")
    name, stream = site.required_string("name"), site.required_string("stream")
    field, validator = site.required_string("field"), site.required_string("validator")
    site.finish()
    raw = data.get("sensor")
    root.finish(allowed=("sensor",))
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: sensor: must be an array of tables")
    sensors = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"{path}: sensor[{i}]: must be a table")
        t = Table(item, f"sensor[{i}]", path.parent)
        device_id = t.required_string("device_id")
        t.string("device", None)
        accuracy = t.number("accuracy", 0.0, low=0.0)
        t.finish()
        if len(device_id) != 32 or any(c not in "0123456789abcdef" for c in device_id):
            raise ConfigError(f"{path}: sensor[{i}].device_id: must be 32 hex digits")
        sensors.append((device_id, accuracy))
    try:
        spec = SiteSpec(name, f"{stream}/{field}",
                        tuple(SensorSpec(d, a) for d, a in sensors))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return SiteFile(spec, stream, field, validator)
