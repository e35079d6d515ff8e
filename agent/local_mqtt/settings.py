"""The ``[local_mqtt]`` and ``[metrics]`` config sections, as validated frozen dataclasses.

Parsed in :mod:`agent.config` (which parses the broker-connection keys both broker sections
share into :class:`agent.uplink.transport.MqttConfig`); kept here so the local publisher and
the metrics writer depend on nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.uplink.transport import MqttConfig
from protocol.errors import ConfigError

TOPIC_FORBIDDEN = ("+", "#", "\x00")


@dataclass(frozen=True)
class LocalMqttConfig:
    """The owner's own broker (Home Assistant): where, as whom, and what to publish."""

    connection: MqttConfig
    client_id: str | None = None  # default: the user name, else edgeproof-<device id>
    topic_prefix: str = "edgeproof"  # states under <topic_prefix>/<device id>/...
    discovery_prefix: str = "homeassistant"  # Home Assistant's discovery prefix
    device_name: str | None = None  # default: edgeproof <first 8 hex digits of the id>
    status_interval_s: float = 30.0  # how often usage, credit, outbox and health go out
    streams: tuple[str, ...] | None = None  # None: every stream not sealed for others
    payout_url: str | None = None  # the gateway's HTTP API, for the owner's payout notice
    payout_interval_s: float = 600.0  # how often the notice is fetched


@dataclass(frozen=True)
class MetricsConfig:
    """Where the Prometheus text file for node_exporter's textfile collector goes."""

    textfile: Path


def check_topic_prefix(value: str, name: str) -> str:
    """Return ``value`` if it is usable as the start of MQTT topics; else raise ConfigError."""
    if (not value or value.startswith("/") or value.endswith("/")
            or any(c in value for c in TOPIC_FORBIDDEN)):
        raise ConfigError(f"{name}: must be a topic without wildcards or outer slashes "
                          f"(got {value!r})")
    return value


def check_local_streams(streams: tuple[str, ...], sealed: dict[str, bool], name: str) -> None:
    """Refuse a stream that is not configured or is sealed for others (ConfigError).

    ``sealed`` maps each stream to whether it is sealed for recipients other than the
    device's owner (a stream sealed to the owner alone is the owner's own, and allowed)."""
    for stream in streams:
        if stream not in sealed:
            raise ConfigError(f"{name}: unknown stream {stream!r} (not in [[sensors]])")
        if sealed[stream]:
            raise ConfigError(f"{name}: stream {stream!r} is sealed for recipients "
                              f"other than the owner; such a stream is never published "
                              f"to the local broker")


def check_payout_url(url: str, owned: bool, name: str) -> str:
    """An http(s) base URL, and only with a pinned owner (ConfigError)."""
    if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
        raise ConfigError(f"{name}: must be the gateway's http:// or https:// URL "
                          f"(got {url!r})")
    if not owned:
        raise ConfigError(f"{name}: needs [owner] (the payout notice is the owner's; only a "
                          f"device that pins its owner can check it is)")
    return url


def check_textfile(path: Path, name: str) -> Path:
    """node_exporter's textfile collector reads only ``*.prom`` files (ConfigError)."""
    if path.suffix != ".prom":
        raise ConfigError(f"{name}: must end in .prom (node_exporter's textfile collector "
                          f"reads only *.prom files)")
    return path
