"""Gateway configuration: one TOML file, validated into frozen dataclasses at start.

The documented reference is ``examples/gateway.toml``. Unknown keys and bad values raise
:class:`~protocol.errors.ConfigError` naming the key (``section.key``). Relative paths are
resolved against the directory of the config file. Secrets (broker password, admin token,
gateway key) are never in the config itself, only the paths of mode-0600 files.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from protocol.errors import ConfigError

DEFAULT_CLIENT_ID = "edgeproof-gateway"
_ETH_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


@dataclass(frozen=True)
class BrokerConfig:
    """How to reach the MQTT broker."""

    host: str
    port: int
    tls: bool
    client_id: str = DEFAULT_CLIENT_ID
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    shared_group: str | None = None
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30


@dataclass(frozen=True)
class CheckpointConfig:
    """When checkpoints are issued: every ``interval_s`` or every ``every_leaves`` leaves."""

    interval_s: float = 60.0
    every_leaves: int = 1000


@dataclass(frozen=True)
class Limits:
    """Caps applied to untrusted input before and while decoding."""

    max_batch_bytes: int = 512 * 1024
    max_record_bytes: int = 4096 + 256
    max_future_skew_s: float = 300.0


@dataclass(frozen=True)
class EthereumAnchorConfig:
    """The ``ethereum`` anchor backend (docs/GATEWAY.md, "Ethereum anchor")."""

    rpc_url: str
    key_file: Path  # hex secp256k1 private key, mode 0600
    chain_id: int  # must equal the node's eth_chainId (checked at start)
    interval_s: float = 600.0  # at most one anchoring transaction per interval
    to_address: str | None = None  # None: the sender's own address
    confirmations: int = 1
    gas_limit: int | None = None  # None: eth_estimateGas plus a margin
    resend_after_s: float = 180.0  # a transaction missing or pending this long is re-sent
    max_attempts: int = 3  # reverted transactions per checkpoint before it is a failure


@dataclass(frozen=True)
class GatewayConfig:
    """The whole gateway configuration."""

    broker: BrokerConfig
    data_dir: Path
    key_file: Path
    admin_token_file: Path
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    checkpoints: CheckpointConfig = CheckpointConfig()
    limits: Limits = Limits()
    anchor: str = "local"
    verify_threads: int = 2
    ethereum: EthereumAnchorConfig | None = None  # set when anchor == "ethereum"

    @property
    def db_path(self) -> Path:
        """The SQLite log database inside ``data_dir``."""
        return self.data_dir / "gateway.sqlite"


_SECTIONS: dict[str, frozenset[str]] = {
    "gateway": frozenset({"data_dir", "key_file", "admin_token_file", "verify_threads"}),
    "broker": frozenset({"url", "client_id", "username", "password_file", "ca_file",
                         "shared_group", "session_expiry_s", "keepalive_s"}),
    "http": frozenset({"bind"}),
    "checkpoints": frozenset({"interval_s", "every_leaves"}),
    "limits": frozenset({"max_batch_bytes", "max_record_bytes", "max_future_skew_s"}),
    "anchor": frozenset({"backend", "rpc_url", "key_file", "chain_id", "interval_s",
                         "to_address", "confirmations", "gas_limit", "resend_after_s",
                         "max_attempts"}),
}
_REQUIRED = {"gateway": ("data_dir", "key_file", "admin_token_file"), "broker": ("url",)}


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a gateway config file; return it.

    Raises ConfigError naming the file or the offending ``section.key``.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, base_dir=path.resolve().parent)


def parse_config(raw: dict[str, Any], base_dir: Path) -> GatewayConfig:
    """Validate a parsed TOML document; return the config or raise ConfigError."""
    for section, table in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown config section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        for key in table:
            if key not in _SECTIONS[section]:
                raise ConfigError(f"unknown config key {section}.{key}")
    for section, keys in _REQUIRED.items():
        for key in keys:
            if key not in raw.get(section, {}):
                raise ConfigError(f"missing required config key {section}.{key}")
    reader = _Reader(raw, base_dir)
    host, port = _parse_bind(reader.text("http", "bind", "127.0.0.1:8080"))
    return GatewayConfig(
        broker=_broker(reader),
        data_dir=reader.path("gateway", "data_dir"),
        key_file=reader.path("gateway", "key_file"),
        admin_token_file=reader.path("gateway", "admin_token_file"),
        verify_threads=reader.integer("gateway", "verify_threads", 2, low=1, high=64),
        http_host=host,
        http_port=port,
        checkpoints=CheckpointConfig(
            interval_s=reader.number("checkpoints", "interval_s", 60.0, low=0.05),
            every_leaves=reader.integer("checkpoints", "every_leaves", 1000, low=1),
        ),
        limits=Limits(
            max_batch_bytes=reader.integer("limits", "max_batch_bytes", 512 * 1024,
                                           low=64, high=512 * 1024),
            max_record_bytes=reader.integer("limits", "max_record_bytes", 4096 + 256,
                                            low=64, high=4096 + 256),
            max_future_skew_s=reader.number("limits", "max_future_skew_s", 300.0, low=0.0),
        ),
        anchor=_anchor_backend(reader),
        ethereum=_ethereum_anchor(reader),
    )


def _broker(reader: _Reader) -> BrokerConfig:
    url = reader.text("broker", "url", "")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"broker.url must look like mqtt://host:1883 or mqtts://host:8883, "
                          f"got {url!r}")
    if parts.path not in ("", "/") or parts.username or parts.password:
        raise ConfigError("broker.url must not carry a path or credentials "
                          "(use broker.username and broker.password_file)")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError(f"broker.url has a bad port: {url!r}") from None
    group = reader.optional_text("broker", "shared_group")
    if group is not None and (not group or any(c in group for c in "/+#")):
        raise ConfigError("broker.shared_group must be a name without '/', '+' or '#'")
    username = reader.optional_text("broker", "username")
    # Default: the user name, which an edgeproof broker makes the client id anyway
    # (use_username_as_clientid); so each gateway worker with its own user has its own session.
    client_id = reader.text("broker", "client_id", username or DEFAULT_CLIENT_ID)
    if not 1 <= len(client_id) <= 64:
        raise ConfigError("broker.client_id must be 1..64 characters")
    return BrokerConfig(
        host=parts.hostname, port=port, tls=tls, client_id=client_id,
        username=username,
        password_file=reader.optional_path("broker", "password_file"),
        ca_file=reader.optional_path("broker", "ca_file"),
        shared_group=group,
        session_expiry_s=reader.integer("broker", "session_expiry_s", 7 * 24 * 3600,
                                        low=1, high=0xFFFFFFFF),
        keepalive_s=reader.integer("broker", "keepalive_s", 30, low=5, high=3600),
    )


def _anchor_backend(reader: _Reader) -> str:
    backend = reader.text("anchor", "backend", "local")
    if backend not in ("local", "ethereum"):
        raise ConfigError(f"anchor.backend {backend!r} is not available "
                          "(supported: local, ethereum)")
    return backend


def _ethereum_anchor(reader: _Reader) -> EthereumAnchorConfig | None:
    if _anchor_backend(reader) != "ethereum":
        for key in reader.raw.get("anchor", {}):
            if key != "backend":
                raise ConfigError(f"anchor.{key} applies only to backend = \"ethereum\"")
        return None
    for key in ("rpc_url", "key_file", "chain_id"):
        if key not in reader.raw["anchor"]:
            raise ConfigError(f"missing required config key anchor.{key}")
    rpc_url = reader.text("anchor", "rpc_url", "")
    parts = urlsplit(rpc_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"anchor.rpc_url must look like http://host:8545, got {rpc_url!r}")
    to_address = reader.optional_text("anchor", "to_address")
    if to_address is not None and _ETH_ADDRESS.fullmatch(to_address) is None:
        raise ConfigError("anchor.to_address must be 0x followed by 40 hex digits")
    gas_limit = reader._get("anchor", "gas_limit")
    return EthereumAnchorConfig(
        rpc_url=rpc_url,
        key_file=reader.path("anchor", "key_file"),
        chain_id=reader.integer("anchor", "chain_id", 0, low=1, high=2**53),
        interval_s=reader.number("anchor", "interval_s", 600.0, low=0.05),
        to_address=to_address,
        confirmations=reader.integer("anchor", "confirmations", 1, low=1, high=256),
        gas_limit=None if gas_limit is None else reader.integer(
            "anchor", "gas_limit", 0, low=21_000, high=30_000_000),
        resend_after_s=reader.number("anchor", "resend_after_s", 180.0, low=0.05),
        max_attempts=reader.integer("anchor", "max_attempts", 3, low=1, high=100),
    )


def _parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port_text = bind.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"http.bind must be host:port, got {bind!r}")
    return host.strip("[]"), int(port_text)


class _Reader:
    """Typed access to the parsed TOML with errors that name the key."""

    def __init__(self, raw: dict[str, Any], base_dir: Path) -> None:
        self.raw = raw
        self.base_dir = base_dir

    def _get(self, section: str, key: str) -> Any:
        return self.raw.get(section, {}).get(key)

    def text(self, section: str, key: str, default: str) -> str:
        value = self._get(section, key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{section}.{key} must be a string")
        return value

    def optional_text(self, section: str, key: str) -> str | None:
        value = self._get(section, key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{section}.{key} must be a non-empty string")
        return value

    def path(self, section: str, key: str) -> Path:
        value = self.optional_text(section, key)
        if value is None:
            raise ConfigError(f"missing required config key {section}.{key}")
        return self._resolve(value)

    def optional_path(self, section: str, key: str) -> Path | None:
        value = self.optional_text(section, key)
        return None if value is None else self._resolve(value)

    def _resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def integer(self, section: str, key: str, default: int, *, low: int = 0,
                high: int | None = None) -> int:
        value = self._get(section, key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{section}.{key} must be an integer")
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ConfigError(f"{section}.{key} must be {bound}, got {value}")
        return value

    def number(self, section: str, key: str, default: float, *, low: float) -> float:
        value = self._get(section, key)
        if value is None:
            return default
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{section}.{key} must be a number")
        if value < low:
            raise ConfigError(f"{section}.{key} must be >= {low}, got {value}")
        return float(value)
