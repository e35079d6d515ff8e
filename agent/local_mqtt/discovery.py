"""What the agent shows Home Assistant: entities, their discovery configs, their states.

Pure functions over plain data (no I/O). One device per agent; its entities are

- one per value of every published stream (a stream not sealed for others): temperature and
  humidity sensors for a ``dht22``, a temperature sensor for ``cpu_temp``, a binary sensor
  for ``power_sense`` (device class ``power``), ``motion`` (``motion``) and ``button``;
- the usage meter's credit (accrued, settled) when ``[usage]`` is configured;
- the owner's payout figures (payable, claimed, claimable) from the gateway's signed payout
  notice when ``payout_url`` is configured;
- the outbox (depth, bytes, records dropped) and the device's health (uplink connected,
  a problem, sensor errors), as diagnostic entities.

Topics (Home Assistant MQTT discovery, retained):
``<discovery_prefix>/<component>/edgeproof_<id16>/<key>/config`` holds an entity's config;
``<topic_prefix>/<device id>/<key>`` its state (retained, so Home Assistant shows the last
value after its own restart); ``<topic_prefix>/<device id>/availability`` is ``online``
while the agent runs, ``offline`` after it stops, and the connection's last will says
``offline`` if the agent vanishes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from protocol.record import Measurement

ONLINE = b"online"
OFFLINE = b"offline"
ON, OFF = "ON", "OFF"  # Home Assistant's default payload_on / payload_off
DIAGNOSTIC = "diagnostic"
MICRO = Decimal(1_000_000)


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity of the agent's device."""

    key: str  # the object id, unique within the device ("climate_temperature", ...)
    component: str  # "sensor" or "binary_sensor"
    name: str
    device_class: str | None = None
    unit: str | None = None
    state_class: str | None = None
    category: str | None = None
    stream: str | None = None  # the sensor stream whose readings set it ...
    index: int = 0  # ... and which value of the reading


@dataclass(frozen=True)
class DeviceInfo:
    """Who the entities belong to, and where their topics live."""

    device_id_hex: str
    name: str
    version: str
    topic_prefix: str
    discovery_prefix: str

    @property
    def node_id(self) -> str:
        return f"edgeproof_{self.device_id_hex[:16]}"

    @property
    def availability_topic(self) -> str:
        return f"{self.topic_prefix}/{self.device_id_hex}/availability"

    def state_topic(self, entity: Entity) -> str:
        return f"{self.topic_prefix}/{self.device_id_hex}/{entity.key}"

    def config_topic(self, entity: Entity) -> str:
        return f"{self.discovery_prefix}/{entity.component}/{self.node_id}/{entity.key}/config"


def _temperature(stream: str, label: str, index: int = 0) -> Entity:
    return Entity(f"{stream}_temperature", "sensor", f"{label} temperature", "temperature",
                  "°C", "measurement", stream=stream, index=index)


_DIGITAL_CLASS = {"power_sense": "power", "motion": "motion", "button": None}


def stream_entities(kind: str, stream: str) -> tuple[Entity, ...]:
    """The entities for the values of one sensor stream of ``kind`` (none for unknown)."""
    if kind == "dht22":
        return (_temperature(stream, stream),
                Entity(f"{stream}_humidity", "sensor", f"{stream} humidity", "humidity", "%",
                       "measurement", stream=stream, index=1))
    if kind == "cpu_temp":
        return (_temperature(stream, stream),)
    if kind in _DIGITAL_CLASS:
        return (Entity(stream, "binary_sensor", stream, _DIGITAL_CLASS[kind], stream=stream),)
    return ()


CREDIT_ENTITIES = (
    Entity("credit_accrued", "sensor", "credit accrued", None, "credits", "total_increasing"),
    Entity("credit_settled", "sensor", "credit settled", None, "credits", "total_increasing"),
)
# From the gateway's signed payout notice (agent/local_mqtt/payout.py), with payout_url.
PAYOUT_ENTITIES = (
    Entity("credit_payable", "sensor", "credit payable", None, "credits", "total_increasing"),
    Entity("credit_claimed", "sensor", "credit claimed", None, "credits", "total_increasing"),
    Entity("credit_claimable", "sensor", "credit claimable", None, "credits", "measurement"),
)
HEALTH_ENTITIES = (
    Entity("outbox_depth", "sensor", "outbox depth", None, "records", "measurement"),
    Entity("outbox_bytes", "sensor", "outbox size", "data_size", "B", "measurement",
           DIAGNOSTIC),
    Entity("outbox_dropped", "sensor", "records dropped", None, "records",
           "total_increasing", DIAGNOSTIC),
    Entity("sensor_errors", "sensor", "sensor errors", None, "errors", "total_increasing",
           DIAGNOSTIC),
    Entity("uplink", "binary_sensor", "uplink", "connectivity", category=DIAGNOSTIC),
    Entity("problem", "binary_sensor", "problem", "problem", category=DIAGNOSTIC),
)


def device_entities(sensors: Iterable[tuple[str, str]], *, credit: bool,
                    payout: bool = False) -> tuple[Entity, ...]:
    """Every entity of the device: ``sensors`` are the published (kind, stream) pairs."""
    out: list[Entity] = []
    for kind, stream in sensors:
        out.extend(stream_entities(kind, stream))
    if credit:
        out.extend(CREDIT_ENTITIES)
    if payout:
        out.extend(PAYOUT_ENTITIES)
    out.extend(HEALTH_ENTITIES)
    return tuple(out)


def discovery_config(device: DeviceInfo, entity: Entity) -> bytes:
    """The retained discovery payload (JSON) of ``entity``."""
    config: dict[str, object] = {
        "name": entity.name,
        "unique_id": f"{device.node_id}_{entity.key}",
        "object_id": f"{device.node_id}_{entity.key}",
        "state_topic": device.state_topic(entity),
        "availability_topic": device.availability_topic,
        "payload_available": ONLINE.decode(),
        "payload_not_available": OFFLINE.decode(),
        "device": {"identifiers": [f"edgeproof_{device.device_id_hex}"], "name": device.name,
                   "manufacturer": "edgeproof", "model": "edgeproof-agent",
                   "sw_version": device.version},
        "origin": {"name": "edgeproof-agent", "sw_version": device.version},
    }
    optional = {"device_class": entity.device_class, "unit_of_measurement": entity.unit,
                "state_class": entity.state_class, "entity_category": entity.category}
    config.update({k: v for k, v in optional.items() if v is not None})
    if entity.component == "binary_sensor":
        config.update(payload_on=ON, payload_off=OFF)
    return json.dumps(config, sort_keys=True, ensure_ascii=False).encode("utf-8")


def reading_states(entities: Iterable[Entity], stream: str,
                   values: tuple[Measurement, ...]) -> dict[str, str]:
    """Entity key -> state text for one reading of ``stream`` (plaintext values)."""
    out: dict[str, str] = {}
    for entity in entities:
        if entity.stream != stream or entity.index >= len(values):
            continue
        value = values[entity.index]
        if entity.component == "binary_sensor":
            out[entity.key] = ON if value.mantissa else OFF
        else:
            out[entity.key] = str(value.value)
    return out


def status_states(status: Mapping[str, object], outbox: Mapping[str, object],
                  *, credit: bool) -> dict[str, str]:
    """Entity key -> state text from the agent's status and its outbox figures."""
    out = {"outbox_depth": str(outbox.get("depth", 0)),
           "outbox_bytes": str(outbox.get("bytes", 0)),
           "outbox_dropped": str(outbox.get("dropped", 0))}
    service = status.get("service")
    errors = service.get("sensor_errors", 0) if isinstance(service, dict) else 0
    out["sensor_errors"] = str(errors)
    uplink = status.get("uplink")
    state = uplink.get("state") if isinstance(uplink, dict) else None
    out["uplink"] = ON if state == "ready" else OFF
    out["problem"] = ON if problems(status) else OFF
    if credit:
        usage = status.get("usage")
        accrued = usage.get("accrued_micro", 0) if isinstance(usage, dict) else 0
        out["credit_accrued"] = _credits(accrued)
        out["credit_settled"] = _credits(outbox.get("settled_micro", 0))
    return out


def problems(status: Mapping[str, object]) -> list[str]:
    """What is wrong with the agent, as short phrases (empty: nothing)."""
    found: list[str] = []
    uplink = status.get("uplink")
    if isinstance(uplink, dict) and uplink.get("state") == "failed":
        found.append("uplink failed")
    receipts = status.get("receipts")
    if isinstance(receipts, dict) and receipts.get("overdue"):
        found.append("receipts overdue")
    if status.get("sensor_failures"):
        found.append("sensor unavailable")
    rotation = status.get("rotation")
    if isinstance(rotation, dict) and rotation.get("state") == "rejected":
        found.append("key rotation rejected")
    return found


def _credits(micro: object) -> str:
    value = micro if isinstance(micro, int) else 0
    return str(Decimal(value) / MICRO)
