"""Sites: co-located sensors measuring one quantity, declared for a quality validator.

``FLEET/sites/<name>.toml`` names the site, the stream and field its sensors measure (for a
DHT22's temperature: stream ``climate``, field ``Cel``), the validator (a recipient every
sensor's device grants that stream, so it can read the values) and each sensor: a device
and its stated accuracy (± in the field's unit: 0.5 for a DHT22's °C, 2-5 for its %RH).
``edgeproof-validator`` reads the file (docs/QUALITY.md); provisioning only writes and
lists it.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.errors import ConfigError
from provisioning import tomlwrite
from provisioning.devices_store import load_record
from provisioning.fleet import FleetConfig
from provisioning.recipients import check_name, load_recipient

SITES_DIR = "sites"
MIN_SENSORS, MAX_SENSORS = 3, 32  # a majority needs three; protocol/quality.py caps 32


@dataclass(frozen=True)
class SiteSensor:
    device: str
    device_id: str
    accuracy: float


@dataclass(frozen=True)
class Site:
    name: str
    stream: str
    field: str
    validator: str
    sensors: tuple[SiteSensor, ...]


def parse_sensor(text: str, default_accuracy: float | None) -> tuple[str, float]:
    """``DEVICE`` or ``DEVICE=ACCURACY``; ConfigError naming the argument if bad."""
    name, _, accuracy_text = text.partition("=")
    try:
        accuracy = float(accuracy_text) if accuracy_text else default_accuracy
    except ValueError:
        accuracy = None
    if accuracy is None or not math.isfinite(accuracy) or accuracy <= 0:
        raise ConfigError(f"--sensor {text}: give a positive accuracy (DEVICE=0.5 or "
                          "--accuracy)")
    return check_name(name, "device"), accuracy


def add_site(fleet: FleetConfig, name: str, *, stream: str, field: str, validator: str,
             sensors: Sequence[tuple[str, float]], by_consent: bool = False) -> Site:
    """Declare a site; return it. ConfigError for a bad or taken name, an unknown device, a
    device listed twice, fewer than three sensors, or a device that does not grant the
    validator (which could then not read its values). ``by_consent``: the validator reads
    the sensors under their owners' consents (derived streams, docs/PROTOCOL.md §5.5), which
    the fleet's records do not show, so that check is left to ``edgeproof-validator`` (it
    refuses a sensor no consent lets it read)."""
    check_name(name, "site")
    check_name(stream, "stream")
    load_recipient(fleet, validator)
    if not MIN_SENSORS <= len(sensors) <= MAX_SENSORS:
        raise ConfigError(f"site {name}: needs {MIN_SENSORS}..{MAX_SENSORS} sensors "
                          "(a majority must agree)")
    if len({device for device, _ in sensors}) != len(sensors):
        raise ConfigError(f"site {name}: a device is listed twice")
    path = fleet.root / SITES_DIR / f"{name}.toml"
    if path.exists():
        raise ConfigError(f"site {name!r} already exists: {path}")
    out = []
    for device, accuracy in sensors:
        record = load_record(fleet, device)
        if not by_consent and validator not in record.recipients:
            raise ConfigError(f"device {device} does not grant recipient {validator}: the "
                              "validator could not read its values")
        out.append(SiteSensor(device, record.device_id, accuracy))
    site = Site(name, stream, field, validator, tuple(out))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(site), encoding="utf-8")
    return site


def render(site: Site) -> str:
    """The site file's text."""
    head = tomlwrite.table("site", {"name": site.name, "stream": site.stream,
                                    "field": site.field, "validator": site.validator})
    sensors = [tomlwrite.table("sensor", {"device": s.device, "device_id": s.device_id,
                                          "accuracy": s.accuracy}, array=True)
               for s in site.sensors]
    return tomlwrite.document(head, *sensors,
                              comment="A site for the quality validator (docs/QUALITY.md).")


def list_sites(fleet: FleetConfig) -> list[tuple[str, str, str, int]]:
    """(name, stream, field, sensor count) of every site file, sorted by name."""
    folder = fleet.root / SITES_DIR
    out = []
    for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        try:
            data = tomllib.loads(text)
            site, sensors = data["site"], data["sensor"]
            out.append((str(site["name"]), str(site["stream"]), str(site["field"]),
                        len(sensors)))
        except (tomllib.TOMLDecodeError, KeyError, TypeError):
            raise ConfigError(f"{path}: not a site file") from None
    return out
