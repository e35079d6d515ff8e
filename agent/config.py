"""The agent's configuration: TOML in, typed frozen dataclasses out, validated at start.

``examples/agent.toml`` is the documented reference (a test loads it). Every unknown key
and every bad value raises :class:`~protocol.errors.ConfigError` naming the key, e.g.
``outbox.full_policy: must be one of drop-oldest, reject-new``. Relative paths are
resolved against the directory of the config file.

Precedence: command-line flags > environment variables (``EDGEPROOF_STATE_DIR``,
``EDGEPROOF_BROKER``, ``EDGEPROOF_GATEWAY_KEY``, ``EDGEPROOF_MQTT_USERNAME``,
``EDGEPROOF_MQTT_PASSWORD_FILE``, ``EDGEPROOF_LOG_LEVEL``) > the file > defaults.
Secrets (the MQTT password) stay in mode-0600 files and are read only when the service
starts (:func:`broker_settings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.local_mqtt.settings import (
    LocalMqttConfig,
    MetricsConfig,
    check_local_streams,
    check_payout_url,
    check_textfile,
    check_topic_prefix,
)
from agent.outbox import FULL_POLICIES, OutboxSettings
from agent.records import EpochPolicy
from agent.sensors import DEFAULT_PIN_FACTORY, SensorConfig, validate_sensor_configs
from agent.uplink.settings import GatewayKey, UplinkSettings
from agent.uplink.transport import BrokerSettings, MqttConfig
from osutil.brokerurl import parse_broker_url
from osutil.toml_table import Table, read_toml
from protocol.errors import ConfigError
from protocol.keys import Secret, read_secret_file

DEFAULT_STATE_DIR = Path("/var/lib/edgeproof")
ENV_OVERRIDES = {
    "EDGEPROOF_STATE_DIR": ("agent", "state_dir"),
    "EDGEPROOF_BROKER": ("mqtt", "broker"),
    "EDGEPROOF_GATEWAY_KEY": ("gateway", "key"),
    "EDGEPROOF_MQTT_USERNAME": ("mqtt", "username"),
    "EDGEPROOF_MQTT_PASSWORD_FILE": ("mqtt", "password_file"),
    "EDGEPROOF_LOG_LEVEL": ("agent", "log_level"),
}
# Overrides that name files: a relative one is relative to where the command was typed,
# not to the config file (which is what relative paths *inside* the file are relative to).
PATH_OVERRIDES = frozenset({("agent", "state_dir"), ("agent", "key_file"),
                            ("mqtt", "password_file")})
LOG_LEVELS = ("debug", "info", "warning", "error")
USAGE_INPUT_KINDS = ("power_sense", "motion", "button")


@dataclass(frozen=True)
class UsageConfig:
    """The usage meter: which digital input, the reward rate, checkpoints and reports."""

    input: str
    rate_micro_per_hour: int
    checkpoint_interval_s: float = 60.0
    report_interval_s: float = 300.0


@dataclass(frozen=True)
class ServiceSettings:
    """The main loop: final flush bound, status file period, uplink watchdog."""

    final_flush_s: float = 5.0
    status_interval_s: float = 60.0
    uplink_watchdog_s: float = 60.0


@dataclass(frozen=True)
class OwnerConfig:
    """The device's owner, pinned at enrolment (the bundle writes ``[owner]``).

    ``public_key`` (Ed25519) is the only key whose consents and revocations the device
    applies; ``sealing_key`` (X25519) is sealed every stream, so the owner reads all its
    device's data.
    """

    public_key: bytes
    sealing_key: bytes


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to run, validated."""

    state_dir: Path
    key_file: Path
    backend: str
    pin_factory: str
    sim_seed: int
    log_level: str
    mqtt: MqttConfig
    gateway: GatewayKey
    uplink: UplinkSettings
    outbox: OutboxSettings
    epoch: EpochPolicy
    recipients: Mapping[str, bytes]
    sensors: tuple[SensorConfig, ...]
    usage: UsageConfig | None
    service: ServiceSettings = field(default_factory=ServiceSettings)
    owner: OwnerConfig | None = None
    local_mqtt: LocalMqttConfig | None = None
    metrics: MetricsConfig | None = None
    sim_faults: Path | None = None  # seeded sensor faults of the simulated hardware (TOML)

    def stream_recipients(self) -> dict[str, tuple[bytes, ...]]:
        """Stream name -> the X25519 public keys its full values are sealed for.

        With an owner, every stream is sealed to the owner's sealing key and to nobody
        else: who else reads what is the owner's decision, by signed consent (derived
        streams, docs/AGENT.md), never the config's (see :meth:`ignored_recipients`).
        Without an owner, each stream is sealed to the recipients configured for it.
        """
        if self.owner is not None:
            return {s.stream: (self.owner.sealing_key,) for s in self.sensors}
        return {s.stream: tuple(self.recipients[name] for name in s.recipients)
                for s in self.sensors if s.recipients}

    def ignored_recipients(self) -> dict[str, tuple[str, ...]]:
        """Stream -> the configured recipients NOT sealed to, because an owner is pinned."""
        if self.owner is None:
            return {}
        return {s.stream: s.recipients for s in self.sensors if s.recipients}


def apply_overrides(data: dict[str, object], overrides: Mapping[tuple[str, str], object]
                    ) -> dict[str, object]:
    """Return ``data`` with ``(section, key) -> value`` overrides applied (None = unset)."""
    out: dict[str, object] = {k: (dict(v) if isinstance(v, dict) else v)
                              for k, v in data.items()}
    for (section, key), value in overrides.items():
        if value is None:
            continue
        table = out.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: must be a table")
        if (section, key) in PATH_OVERRIDES and isinstance(value, str | Path):
            table[key] = str(Path(value).absolute())
        else:
            table[key] = value
    return out


def env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, str], object]:
    """The overrides named by ``EDGEPROOF_*`` environment variables that are set."""
    return {target: environ[name] for name, target in ENV_OVERRIDES.items()
            if environ.get(name)}


def parse_config(data: Mapping[str, object], base_dir: Path) -> AgentConfig:
    """Validate a parsed TOML document; return the config. Raises ConfigError naming the key."""
    root = Table(data, "", base_dir)
    agent = root.table("agent")
    state_dir = agent.path("state_dir", DEFAULT_STATE_DIR)
    assert state_dir is not None
    key_file = agent.path("key_file", state_dir / "device.key")
    pin_factory = agent.string("pin_factory", DEFAULT_PIN_FACTORY)
    sim_seed = agent.integer("sim_seed", 1, low=0)
    sim_faults = agent.path("sim_faults", None)
    log_level = agent.choice("log_level", LOG_LEVELS, "info")
    assert key_file is not None
    assert pin_factory is not None
    agent.finish()
    recipients = _recipients(root.table("recipients"))
    sensors = _sensors(data.get("sensors", []), recipients)
    owner = _owner(root.optional_table("owner"))
    config = AgentConfig(
        state_dir=state_dir,
        key_file=key_file,
        backend="hardware",  # only the --simulate flag selects simulated hardware
        pin_factory=pin_factory,
        sim_seed=sim_seed,
        sim_faults=sim_faults,
        log_level=log_level,
        mqtt=_mqtt(root.table("mqtt")),
        gateway=_gateway(root.table("gateway")),
        uplink=_uplink(root.table("uplink")),
        outbox=_outbox(root.table("outbox")),
        epoch=_epoch(root.table("encryption")),
        recipients=recipients,
        sensors=sensors,
        usage=_usage(root.optional_table("usage"), sensors),
        service=_service(root.table("service")),
        owner=owner,
        local_mqtt=_local_mqtt(root.optional_table("local_mqtt"), sensors, owner is not None),
        metrics=_metrics(root.optional_table("metrics")),
    )
    root.finish(allowed=("sensors",))
    return config


def load_config(path: Path | None, overrides: Mapping[tuple[str, str], object],
                defaults: Mapping[str, object] | None = None) -> AgentConfig:
    """Load ``path`` (or ``defaults`` when there is no file), apply overrides, validate."""
    data = read_toml(path) if path is not None else dict(defaults or {})
    base = path.parent if path is not None else Path.cwd()
    return parse_config(apply_overrides(data, overrides), base)


# --- sections ------------------------------------------------------------------------------


def _mqtt(t: Table) -> MqttConfig:
    out = _broker_connection(t, "mqtts://broker.example.net:8883")
    t.finish()
    return out


def _broker_connection(t: Table, example: str) -> MqttConfig:
    """The connection keys of a broker section (``[mqtt]``, ``[local_mqtt]``); the caller
    reads its other keys and finishes the table."""
    url = t.string("broker", None)
    if url is None:
        raise ConfigError(f"{t.name('broker')}: required (e.g. {example})")
    host, port, tls = parse_broker_url(url, t.name("broker"))
    username = t.string("username", None)
    password_file = t.path("password_file", None)
    if password_file is not None and username is None:
        raise ConfigError(f"{t.name('password_file')}: needs {t.name('username')}")
    cert, key = t.path("cert_file", None), t.path("key_file", None)
    if (cert is None) != (key is None):
        raise ConfigError(f"{t.name('cert_file')}: cert_file and key_file go together")
    ca = t.path("ca_file", None)
    if not tls and (ca or cert):
        raise ConfigError(f"{t.name('ca_file')}: TLS files need an mqtts:// broker URL")
    return MqttConfig(url, host, port, tls, ca, cert, key, username, password_file,
                      keepalive_s=t.integer("keepalive_s", 30, low=5, high=3600),
                      session_expiry_s=t.integer("session_expiry_s", 7 * 24 * 3600, low=60,
                                                 high=0xFFFFFFFF),
                      section=t.name("broker").rsplit(".", 1)[0])


def _local_mqtt(t: Table | None, sensors: tuple[SensorConfig, ...],
                owned: bool) -> LocalMqttConfig | None:
    if t is None:
        return None
    connection = _broker_connection(t, "mqtt://homeassistant.local:1883")
    streams = t.string_list("streams")
    if streams is not None:
        # With a pinned owner every stream is sealed to the owner alone (the configured
        # recipients are ignored): all of them are the owner's own readings.
        check_local_streams(streams, {s.stream: bool(s.recipients) and not owned
                                      for s in sensors}, t.name("streams"))
    out = LocalMqttConfig(
        connection,
        client_id=t.string("client_id", None),
        topic_prefix=check_topic_prefix(t.string("topic_prefix", "edgeproof") or "",
                                        t.name("topic_prefix")),
        discovery_prefix=check_topic_prefix(t.string("discovery_prefix", "homeassistant")
                                            or "", t.name("discovery_prefix")),
        device_name=t.string("device_name", None),
        status_interval_s=t.number("status_interval_s", 30.0, low=0.1, high=86_400.0),
        streams=streams,
        payout_url=_payout_url(t, owned),
        payout_interval_s=t.number("payout_interval_s", 600.0, low=5.0, high=86_400.0),
    )
    t.finish()
    return out


def _payout_url(t: Table, owned: bool) -> str | None:
    url = t.string("payout_url", None)
    return None if url is None else check_payout_url(url, owned, t.name("payout_url"))


def _metrics(t: Table | None) -> MetricsConfig | None:
    if t is None:
        return None
    out = MetricsConfig(check_textfile(t.required_path("textfile"), t.name("textfile")))
    t.finish()
    return out


def _gateway(t: Table) -> GatewayKey:
    text, key_file = t.string("key", None), t.path("key_file", None)
    t.finish()
    if text is not None:
        return GatewayKey.from_text_or_file(text, "gateway.key")
    if key_file is not None:
        return GatewayKey.from_text_or_file(str(key_file), "gateway.key_file")
    raise ConfigError("gateway.key: required (the gateway's verifier key text, or key_file)")


def _uplink(t: Table) -> UplinkSettings:
    ms = t.millis
    backoff_min = ms("backoff_min_s", 1.0, low=0.05)
    out = UplinkSettings(
        batch_max_records=t.integer("batch_max_records", 256, low=1, high=1000),
        batch_max_bytes=t.integer("batch_max_bytes", 64 * 1024, low=4608, high=512 * 1024 - 64),
        batch_interval_ms=ms("batch_interval_s", 1.0, low=0.01),
        batch_jitter=t.number("batch_jitter", 0.2, low=0.0, high=0.9),
        receipt_timeout_ms=ms("receipt_timeout_s", 30.0, low=0.2),
        max_inflight_batches=t.integer("max_inflight_batches", 8, low=1, high=100),
        backoff_min_ms=backoff_min,
        backoff_max_ms=ms("backoff_max_s", 60.0, low=backoff_min / 1000),
        receipt_overdue_ms=_optional_millis(t, "receipt_overdue_s"),
    )
    t.finish()
    return out


def _optional_millis(t: Table, key: str) -> int | None:
    if key not in t:
        return None
    return t.millis(key, 0.0, low=0.1)


def _outbox(t: Table) -> OutboxSettings:
    out = OutboxSettings(
        max_bytes=t.integer("max_bytes", 64 * 1024 * 1024, low=64 * 1024),
        full_policy=t.choice("full_policy", FULL_POLICIES, "drop-oldest"),
        commit_window_ms=t.millis("commit_window_s", 5.0, low=0.0, high=3600),
        commit_max_records=t.integer("commit_max_records", 256, low=1, high=100_000),
        dead_letter_max=t.integer("dead_letter_max", 10_000, low=1),
    )
    t.finish()
    return out


def _epoch(t: Table) -> EpochPolicy:
    out = EpochPolicy(max_records=t.integer("epoch_records", 1000, low=1),
                      max_ms=t.millis("epoch_s", 3600.0, low=1.0))
    t.finish()
    return out


def _service(t: Table) -> ServiceSettings:
    out = ServiceSettings(
        final_flush_s=t.number("final_flush_s", 5.0, low=0.0, high=300.0),
        status_interval_s=t.number("status_interval_s", 60.0, low=0.1),
        uplink_watchdog_s=t.number("uplink_watchdog_s", 60.0, low=1.0),
    )
    t.finish()
    return out


def _owner(t: Table | None) -> OwnerConfig | None:
    if t is None:
        return None
    out = OwnerConfig(_hex_key(t, "owner", "public_key", "an Ed25519 public key"),
                      _hex_key(t, "owner", "sealing_key", "an X25519 public key"))
    t.finish()
    return out


def _hex_key(t: Table, section: str, name: str, what: str) -> bytes:
    text = t.string(name, None)
    try:
        key = bytes.fromhex(text or "")
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{section}.{name}: must be {what}, 64 hex digits")
    return key


def _recipients(t: Table) -> dict[str, bytes]:
    out = {name: _hex_key(t, "recipients", name, "an X25519 public key")
           for name in t.keys()}  # noqa: SIM118 - Table is not a dict
    t.finish()
    return out


def _sensors(raw: object, recipients: Mapping[str, bytes]) -> tuple[SensorConfig, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise ConfigError("sensors: must be an array of tables ([[sensors]])")
    configs = tuple(SensorConfig.from_table(table, f"sensors[{i}]")
                    for i, table in enumerate(raw))
    validate_sensor_configs(configs)
    for i, config in enumerate(configs):
        for name in config.recipients:
            if name not in recipients:
                raise ConfigError(f"sensors[{i}].recipients: unknown recipient {name!r} "
                                  f"(define it under [recipients])")
    return configs


def _usage(t: Table | None, sensors: tuple[SensorConfig, ...]) -> UsageConfig | None:
    if t is None:
        return None
    stream = t.string("input", None)
    inputs = {s.stream: s.kind for s in sensors if s.kind in USAGE_INPUT_KINDS}
    if stream not in inputs:
        raise ConfigError(f"usage.input: must name a configured digital input sensor "
                          f"({', '.join(sorted(inputs)) or 'none configured'})")
    assert stream is not None
    rate = t.optional_integer("rate_micro_per_hour", low=0)
    if rate is None:
        raise ConfigError("usage.rate_micro_per_hour: required (micro-credits per hour)")
    out = UsageConfig(stream, rate,
                      checkpoint_interval_s=t.number("checkpoint_interval_s", 60.0, low=0.1,
                                                     high=86_400.0),
                      report_interval_s=t.number("report_interval_s", 300.0, low=0.1))
    t.finish()
    return out


def broker_settings(mqtt: MqttConfig) -> BrokerSettings:
    """Resolve the broker settings, reading the password file (mode 0600 required).

    Raises ConfigError (KeyFileError) if the password file is missing or open to others.
    """
    password = None
    if mqtt.password_file is not None:
        raw = read_secret_file(mqtt.password_file).decode("utf-8", "replace").strip()
        if not raw:
            raise ConfigError(f"{mqtt.section}.password_file: the file is empty")
        password = Secret(raw.encode("utf-8"))
    return BrokerSettings(mqtt, password)
