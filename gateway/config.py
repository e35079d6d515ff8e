"""Gateway configuration: one TOML file, validated into frozen dataclasses at start.

The documented reference is ``examples/gateway.toml``. Unknown keys and bad values raise
:class:`~protocol.errors.ConfigError` naming the key (``section.key``). Relative paths are
resolved against the directory of the config file. Secrets (broker password, admin token,
gateway key) are never in the config itself, only the paths of mode-0600 files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from osutil.brokerurl import parse_broker_url
from osutil.toml_table import Table, read_toml
from protocol.errors import ConfigError
from protocol.signed import MAX_SIGNED_RECORD_BYTES

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
    max_record_bytes: int = MAX_SIGNED_RECORD_BYTES
    max_future_skew_s: float = 300.0


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP client may cost the API (docs/GATEWAY.md, "HTTP limits").

    A client holding no credential must not be able to fill memory, file handles or the
    log: bodies are capped before they are read, a request must arrive whole within
    ``request_timeout_s`` and at most ``max_connections`` connections are kept open.
    """

    max_body_bytes: int = 64 * 1024
    request_timeout_s: float = 10.0
    keepalive_timeout_s: int = 5
    max_connections: int = 256
    max_header_bytes: int = 16 * 1024


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
class PayoutConfig:
    """Reward payout epochs (docs/OPERATIONS.md, "Reward payouts"): [payout]."""

    rpc_url: str
    key_file: Path  # hex secp256k1 key of the distributor's owner, mode 0600
    chain_id: int
    distributor: str  # the CumulativeMerkleDistributor's address
    interval_s: float = 3600.0  # at most one epoch per interval
    resend_after_s: float = 60.0  # a root post the node lost this long ago is re-sent
    max_attempts: int = 3  # reverted root posts per epoch before it is a failure
    # Pay only consented, funded credit (PROTOCOL.md §19.4). False only with the explicit
    # ``unsafe_ungated = true``: every bound owner's whole settled credit, consent or not.
    consent_gated: bool = True
    # Validators (signer ids) whose faulty verdicts withhold credit (§19.4 rule 5), sorted.
    quality_validators: tuple[bytes, ...] = ()
    distributor_block: int = 0  # the distributor's deployment block: Funded events start there
    funding_confirmations: int = 0  # blocks behind the head taken as final for funding


@dataclass(frozen=True)
class StoreConfig:
    """Where the log lives (docs/GATEWAY.md, "Store").

    ``sqlite`` (the default): ``gateway.sqlite`` in the data directory. ``postgresql``: the
    database that ``dsn`` names (libpq key=value or URI form, never with a password); the
    password, if the server asks for one, is in ``password_file`` (mode 0600).
    """

    backend: str = "sqlite"
    dsn: str | None = None
    password_file: Path | None = None
    shared: bool = False  # several gateway processes, one elected sequencer (SCALING.md)


def cores() -> int:
    """The cores this process may run on (the default ``verify_workers``)."""
    return max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class GatewayConfig:
    """The whole gateway configuration."""

    broker: BrokerConfig
    data_dir: Path
    key_file: Path
    admin_token_file: Path
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http: HttpLimits = HttpLimits()
    checkpoints: CheckpointConfig = CheckpointConfig()
    limits: Limits = Limits()
    anchor: str = "local"
    verify_threads: int = 2  # with verify_workers = 0: threads verifying in this process
    verify_workers: int = field(default_factory=cores)  # 0: none, verify in-process
    ethereum: EthereumAnchorConfig | None = None  # set when anchor == "ethereum"
    store: StoreConfig = StoreConfig()
    payout: PayoutConfig | None = None  # set when [payout] is configured

    @property
    def db_path(self) -> Path:
        """The SQLite log database inside ``data_dir``."""
        return self.data_dir / "gateway.sqlite"


_SECTIONS: dict[str, frozenset[str]] = {
    "gateway": frozenset({"data_dir", "key_file", "admin_token_file", "verify_threads",
                          "verify_workers"}),
    "broker": frozenset({"url", "client_id", "username", "password_file", "ca_file",
                         "shared_group", "session_expiry_s", "keepalive_s"}),
    "http": frozenset({"bind", "max_body_bytes", "request_timeout_s", "keepalive_timeout_s",
                       "max_connections"}),
    "checkpoints": frozenset({"interval_s", "every_leaves"}),
    "limits": frozenset({"max_batch_bytes", "max_record_bytes", "max_future_skew_s"}),
    "anchor": frozenset({"backend", "rpc_url", "key_file", "chain_id", "interval_s",
                         "to_address", "confirmations", "gas_limit", "resend_after_s",
                         "max_attempts"}),
    "store": frozenset({"backend", "dsn", "password_file", "shared"}),
    "payout": frozenset({"rpc_url", "key_file", "chain_id", "distributor", "interval_s",
                         "resend_after_s", "max_attempts", "consent_gated",
                         "unsafe_ungated", "quality_validators", "distributor_block",
                         "funding_confirmations"}),
}
_REQUIRED = {"gateway": ("data_dir", "key_file", "admin_token_file"), "broker": ("url",)}


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a gateway config file; return it.

    Raises ConfigError naming the file or the offending ``section.key``.
    """
    return parse_config(read_toml(path), base_dir=path.resolve().parent)


def parse_config(raw: Mapping[str, object], base_dir: Path) -> GatewayConfig:
    """Validate a parsed TOML document; return the config or raise ConfigError."""
    for section, table in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown config section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        for key in table:
            if key not in _SECTIONS[section]:
                raise ConfigError(f"unknown config key {section}.{key}")
    root = Table(raw, "", base_dir)
    for section, keys in _REQUIRED.items():
        table = root.table(section)
        for key in keys:
            if key not in table:
                raise table.missing(key)
    gateway, checkpoints, limits = (root.table(name)
                                    for name in ("gateway", "checkpoints", "limits"))
    bind = root.table("http").string("bind", "127.0.0.1:8080")
    assert bind is not None
    host, port = _parse_bind(bind)
    config = GatewayConfig(
        broker=_broker(root.table("broker")),
        data_dir=gateway.required_path("data_dir"),
        key_file=gateway.required_path("key_file"),
        admin_token_file=gateway.required_path("admin_token_file"),
        verify_threads=gateway.integer("verify_threads", 2, low=1, high=64),
        verify_workers=gateway.integer("verify_workers", cores(), low=0, high=64),
        http_host=host,
        http_port=port,
        http=_http_limits(root.table("http")),
        checkpoints=CheckpointConfig(
            interval_s=checkpoints.number("interval_s", 60.0, low=0.05),
            every_leaves=checkpoints.integer("every_leaves", 1000, low=1),
        ),
        limits=Limits(
            max_batch_bytes=limits.integer("max_batch_bytes", 512 * 1024,
                                           low=64, high=512 * 1024),
            max_record_bytes=limits.integer("max_record_bytes", MAX_SIGNED_RECORD_BYTES,
                                            low=64, high=MAX_SIGNED_RECORD_BYTES),
            max_future_skew_s=limits.number("max_future_skew_s", 300.0, low=0.0),
        ),
        anchor=_anchor_backend(root.table("anchor")),
        ethereum=_ethereum_anchor(root.table("anchor")),
        store=_store(root.table("store")),
        payout=_payout(root.table("payout")) if "payout" in raw else None,
    )
    _check_shared(config)
    return config


def _payout(payout: Table) -> PayoutConfig:
    for key in ("rpc_url", "key_file", "chain_id", "distributor"):
        if key not in payout:
            raise payout.missing(key)
    rpc_url = payout.required_string("rpc_url")
    if not rpc_url.startswith(("http://", "https://")):
        raise ConfigError(f"payout.rpc_url must look like http://host:8545, got {rpc_url!r}")
    distributor = payout.required_string("distributor")
    if len(distributor) != 42 or not distributor.startswith("0x") or any(
            c not in "0123456789abcdefABCDEF" for c in distributor[2:]):
        raise ConfigError("payout.distributor must be 0x followed by 40 hex digits")
    return PayoutConfig(
        rpc_url=rpc_url, key_file=payout.required_path("key_file"),
        chain_id=payout.integer("chain_id", 0, low=1, high=2**53), distributor=distributor,
        interval_s=payout.number("interval_s", 3600.0, low=0.05),
        resend_after_s=payout.number("resend_after_s", 60.0, low=0.05),
        max_attempts=payout.integer("max_attempts", 3, low=1, high=100),
        consent_gated=_consent_gated(payout),
        quality_validators=_validators(payout),
        distributor_block=payout.integer("distributor_block", 0, low=0, high=2**63 - 1),
        funding_confirmations=payout.integer("funding_confirmations", 0, low=0, high=10_000),
    )


def _consent_gated(payout: Table) -> bool:
    """Consent gating is the default; only ``unsafe_ungated = true`` turns it off."""
    if not payout.boolean("consent_gated", True):
        raise ConfigError("payout.consent_gated = false is not a setting: consent gating is "
                          "always on; the ungated mode is payout.unsafe_ungated = true "
                          "(pays credit no owner consented to; OPERATIONS.md §12)")
    return not payout.boolean("unsafe_ungated", False)


def _validators(payout: Table) -> tuple[bytes, ...]:
    """``payout.quality_validators``: signer ids (32 hex digits) of trusted validators."""
    names = payout.string_list("quality_validators") or ()
    ids = set()
    for name in names:
        if not re.fullmatch(r"[0-9a-fA-F]{32}", name):
            raise ConfigError("payout.quality_validators must be validator signer ids "
                              f"(32 hex digits), got {name!r}")
        ids.add(bytes.fromhex(name))
    if ids and payout.boolean("unsafe_ungated", False):
        raise ConfigError("payout.quality_validators needs consent gating: remove "
                          "payout.unsafe_ungated")
    if len(ids) > 64:
        raise ConfigError("payout.quality_validators: at most 64")
    return tuple(sorted(ids))


def _check_shared(config: GatewayConfig) -> None:
    """A shared store needs a shared subscription (SCALING.md)."""
    if not config.store.shared:
        return
    if not config.broker.shared_group:
        raise ConfigError("store.shared needs broker.shared_group: every gateway process of "
                          "the log subscribes to the same shared subscription")


def _broker(broker: Table) -> BrokerConfig:
    address = parse_broker_url(broker.required_string("url"), broker.name("url"))
    group = broker.string("shared_group", None)
    if group is not None and any(c in group for c in "/+#"):
        raise ConfigError("broker.shared_group must be a name without '/', '+' or '#'")
    username = broker.string("username", None)
    # Default: the user name, which an edgeproof broker makes the client id anyway
    # (use_username_as_clientid); so each gateway worker with its own user has its own session.
    client_id = broker.string("client_id", username or DEFAULT_CLIENT_ID)
    if client_id is None or not 1 <= len(client_id) <= 64:
        raise ConfigError("broker.client_id must be 1..64 characters")
    return BrokerConfig(
        host=address.host, port=address.port, tls=address.tls, client_id=client_id,
        username=username,
        password_file=broker.path("password_file", None),
        ca_file=broker.path("ca_file", None),
        shared_group=group,
        session_expiry_s=broker.integer("session_expiry_s", 7 * 24 * 3600,
                                        low=1, high=0xFFFFFFFF),
        keepalive_s=broker.integer("keepalive_s", 30, low=5, high=3600),
    )


def _http_limits(http: Table) -> HttpLimits:
    return HttpLimits(
        max_body_bytes=http.integer("max_body_bytes", 64 * 1024,
                                    low=1024, high=16 * 1024 * 1024),
        request_timeout_s=http.number("request_timeout_s", 10.0, low=0.1),
        keepalive_timeout_s=http.integer("keepalive_timeout_s", 5, low=1, high=3600),
        max_connections=http.integer("max_connections", 256, low=4, high=65536),
    )


def _anchor_backend(anchor: Table) -> str:
    backend = anchor.string("backend", "local")
    if backend not in ("local", "ethereum"):
        raise ConfigError(f"anchor.backend {backend!r} is not available "
                          "(supported: local, ethereum)")
    return backend


def _ethereum_anchor(anchor: Table) -> EthereumAnchorConfig | None:
    if _anchor_backend(anchor) != "ethereum":
        for key in anchor:
            if key != "backend":
                raise ConfigError(f"anchor.{key} applies only to backend = \"ethereum\"")
        return None
    for key in ("rpc_url", "key_file", "chain_id"):
        if key not in anchor:
            raise anchor.missing(key)
    rpc_url = anchor.required_string("rpc_url")
    parts = urlsplit(rpc_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"anchor.rpc_url must look like http://host:8545, got {rpc_url!r}")
    to_address = anchor.string("to_address", None)
    if to_address is not None and _ETH_ADDRESS.fullmatch(to_address) is None:
        raise ConfigError("anchor.to_address must be 0x followed by 40 hex digits")
    return EthereumAnchorConfig(
        rpc_url=rpc_url,
        key_file=anchor.required_path("key_file"),
        chain_id=anchor.integer("chain_id", 0, low=1, high=2**53),
        interval_s=anchor.number("interval_s", 600.0, low=0.05),
        to_address=to_address,
        confirmations=anchor.integer("confirmations", 1, low=1, high=256),
        gas_limit=anchor.optional_integer("gas_limit", low=21_000, high=30_000_000),
        resend_after_s=anchor.number("resend_after_s", 180.0, low=0.05),
        max_attempts=anchor.integer("max_attempts", 3, low=1, high=100),
    )


def _store(store: Table) -> StoreConfig:
    backend = store.string("backend", "sqlite")
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"store.backend {backend!r} is not available "
                          "(supported: sqlite, postgresql)")
    if backend == "sqlite":
        for key in store:
            if key != "backend":
                raise ConfigError(f"store.{key} applies only to backend = \"postgresql\"")
        return StoreConfig()
    if "dsn" not in store:
        raise store.missing("dsn")
    dsn = store.required_string("dsn")
    if "password" in dsn_keys(dsn, store.name("dsn")):
        raise ConfigError("store.dsn must not contain a password: put it in a mode-0600 file "
                          "and name that file in store.password_file")
    return StoreConfig(backend=backend, dsn=dsn,
                       password_file=store.path("password_file", None),
                       shared=store.boolean("shared", False))


_URI_SCHEMES = ("postgresql://", "postgres://")


def dsn_keys(dsn: str, where: str = "dsn") -> dict[str, str]:
    """Return the parameters of a libpq connection string (key=value or URI form).

    Only what the gateway checks is taken apart: a URI's user, password and host, and its
    query parameters. Raises ConfigError naming ``where`` if the string is malformed.
    """
    if dsn.startswith(_URI_SCHEMES):
        parts = urlsplit(dsn)
        found = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            if parts.password is not None:
                found["password"] = parts.password
            if parts.username:
                found.setdefault("user", parts.username)
            if parts.hostname:
                found.setdefault("host", parts.hostname)
        except ValueError as exc:
            raise ConfigError(f"{where}: malformed URI: {exc}") from None
        return found
    found = {}
    position = 0
    while True:
        match = _DSN_KEY.match(dsn, position)
        if match is None:
            if dsn[position:].strip():
                raise ConfigError(f"{where}: expected key=value at {dsn[position:][:20]!r}")
            return found
        value, position = _dsn_value(dsn, match.end(), where)
        found[match.group(1)] = value


_DSN_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")


def _dsn_value(dsn: str, start: int, where: str) -> tuple[str, int]:
    """Read one value (quoted with ' and backslash escapes, or bare) from ``start``."""
    quoted = dsn.startswith("'", start)
    position = start + 1 if quoted else start
    value: list[str] = []
    while position < len(dsn):
        char = dsn[position]
        if char == "\\" and position + 1 < len(dsn):
            value.append(dsn[position + 1])
            position += 2
            continue
        if quoted and char == "'":
            return "".join(value), position + 1
        if not quoted and char.isspace():
            break
        value.append(char)
        position += 1
    if quoted:
        raise ConfigError(f"{where}: unterminated quoted value")
    return "".join(value), position


def _parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port_text = bind.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"http.bind must be host:port, got {bind!r}")
    return host.strip("[]"), int(port_text)
