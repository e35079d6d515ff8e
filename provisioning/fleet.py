"""A fleet directory: its layout, its config (``fleet.toml``) and how one is created.

Layout (paths relative to the fleet directory)::

    fleet.toml                          the fleet's config (this module)
    trusted-gateway.vkey                the gateway's verifier key text (public, 0644):
                                        what agents and edgeproof-verify --gateway-key trust
    gateway/etc/edgeproof/gateway.toml  the gateway's config (provisioning.gateway_config)
    gateway/etc/edgeproof/gateway.key   the gateway's C2SP signing key        (0600)
    gateway/etc/edgeproof/admin.token   the gateway's admin bearer token      (0600)
    gateway/etc/edgeproof/broker.password  the gateway's broker password      (0600)
    gateway/var/lib/edgeproof/gateway/  the gateway's data when run in place
    broker/service.passwd               Mosquitto hashes of service users (the gateway)
    broker/passwd, broker/acl           derived from the records on every change
    devices/<name>/                     one bundle per device (provisioning.devices)
    recipients/<name>.key, <name>.pub   data recipients' X25519 keys

The gateway directory mirrors the root file system, so ``gateway/etc/edgeproof`` can be
copied to ``/etc/edgeproof`` on the gateway host unchanged; see docs/OPERATIONS.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from osutil.brokerurl import parse_broker_url
from osutil.toml_table import Table, read_toml
from protocol.errors import ConfigError, EdgeproofError, MalformedRecord, StorageError
from protocol.keys import read_secret_file, write_secret_file
from protocol.note import NoteSigner, NoteVerifier
from provisioning import gateway_config, mosquitto, tomlwrite

FLEET_FILE = "fleet.toml"
GATEWAY_ETC = Path("gateway/etc/edgeproof")
GATEWAY_KEY = GATEWAY_ETC / "gateway.key"
ADMIN_TOKEN = GATEWAY_ETC / "admin.token"
GATEWAY_BROKER_PASSWORD = GATEWAY_ETC / "broker.password"
GATEWAY_CONFIG = GATEWAY_ETC / "gateway.toml"
BROKER_DIR = Path("broker")
SERVICE_PASSWD = BROKER_DIR / "service.passwd"
DEVICES_DIR = Path("devices")
RECIPIENTS_DIR = Path("recipients")
VERIFIER_KEY_FILE = Path("trusted-gateway.vkey")
# New devices' credit rate unless init --rate or device add/enroll --rate says otherwise:
# one credit (10^6 micro-credits) per hour of use, so a fleet made by hand earns something.
DEFAULT_RATE_MICRO_PER_HOUR = 1_000_000
MAX_TIMEOUT_S = 3600  # [gateway] timeout_s: an hour at most (a socket timeout must fit)

_SECTIONS: dict[str, frozenset[str]] = {
    "fleet": frozenset({"name", "broker_url", "gateway_url", "gateway_verifier_key"}),
    "gateway": frozenset({"admin_token_file", "timeout_s"}),
    "devices": frozenset({"owner", "rate_micro_per_hour"}),
    "broker": frozenset({"pid_file", "reload_command"}),
}


@dataclass(frozen=True)
class FleetConfig:
    """A loaded, validated ``fleet.toml`` with the fleet directory it belongs to."""

    root: Path
    name: str
    broker_url: str
    gateway_url: str
    gateway_verifier_key: str
    admin_token_file: Path
    timeout_s: float = 10.0
    default_owner: str = ""
    default_rate: int = 0
    broker_control: mosquitto.BrokerControl = field(default_factory=mosquitto.BrokerControl)

    @property
    def devices_dir(self) -> Path:
        return self.root / DEVICES_DIR

    @property
    def recipients_dir(self) -> Path:
        return self.root / RECIPIENTS_DIR

    @property
    def broker_dir(self) -> Path:
        return self.root / BROKER_DIR


def check_gateway_url(url: str, key: str = "gateway_url") -> tuple[str, int]:
    """Return (host, port) of an ``http(s)://`` URL; raise ConfigError naming ``key``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key} must look like http://host:8080, got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{key} must not carry credentials, a query or a fragment")
    try:
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"{key} has a bad port: {url!r}") from None


# --- loading -----------------------------------------------------------------------------


def load_fleet(root: Path) -> FleetConfig:
    """Read and validate ``root/fleet.toml``; return the config.

    Raises ConfigError naming the file or the offending ``section.key``.
    """
    raw = read_toml(root / FLEET_FILE,
                    missing=f"{root}: not a fleet directory (no {FLEET_FILE}); "
                            f"create one with: edgeproof-provision init --fleet {root} ...")
    return _parse(raw, root.resolve())


def _parse(raw: dict[str, object], root: Path) -> FleetConfig:
    for section, table in raw.items():
        if section not in _SECTIONS or not isinstance(table, dict):
            raise ConfigError(f"{FLEET_FILE}: unknown section [{section}]")
        for key in table:
            if key not in _SECTIONS[section]:
                raise ConfigError(f"{FLEET_FILE}: unknown key {section}.{key}")
    top = Table(raw, "", root)
    fleet, gateway, devices, broker = (top.table(name)
                                       for name in ("fleet", "gateway", "devices", "broker"))
    broker_url = fleet.required_string("broker_url")
    parse_broker_url(broker_url, "fleet.broker_url")
    gateway_url = fleet.required_string("gateway_url").rstrip("/")
    check_gateway_url(gateway_url, "fleet.gateway_url")
    verifier = fleet.required_string("gateway_verifier_key")
    try:
        NoteVerifier.from_text(verifier)
    except MalformedRecord as exc:
        raise ConfigError(f"fleet.gateway_verifier_key is not a verifier key: {exc}") from None
    pid_file = broker.string("pid_file", "", allow_empty=True)
    timeout_s = gateway.number("timeout_s", 10.0, high=MAX_TIMEOUT_S)
    if timeout_s <= 0:
        raise ConfigError(f"{gateway.name('timeout_s')}: must be a number > 0")
    rate = devices.optional_integer("rate_micro_per_hour", low=0)
    if rate is None:
        raise devices.missing("rate_micro_per_hour")
    return FleetConfig(
        root=root, name=fleet.required_string("name"), broker_url=broker_url,
        gateway_url=gateway_url, gateway_verifier_key=verifier,
        admin_token_file=root / (gateway.string("admin_token_file", str(ADMIN_TOKEN))
                                 or str(ADMIN_TOKEN)),
        timeout_s=timeout_s,
        default_owner=devices.required_string("owner"),
        default_rate=rate,
        broker_control=mosquitto.BrokerControl(
            pid_file=(root / pid_file) if pid_file else None,
            reload_command=broker.string("reload_command", "", allow_empty=True) or "",
        ),
    )


# --- creating ----------------------------------------------------------------------------


@dataclass(frozen=True)
class InitRequest:
    """What ``init`` was asked for."""

    root: Path
    broker_url: str
    gateway_url: str
    name: str | None = None
    owner: str | None = None
    rate_micro_per_hour: int = DEFAULT_RATE_MICRO_PER_HOUR


TokenSource = Callable[[int], str]


def init_fleet(req: InitRequest, *, token: TokenSource = secrets.token_urlsafe,
               seed: Callable[[int], bytes] = os.urandom) -> FleetConfig:
    """Create a fleet directory; return its config.

    Everything is written into a temporary sibling directory that is renamed into place at
    the end, so a failure leaves nothing behind. Raises ConfigError for bad input or an
    existing fleet, StorageError when the files cannot be written.
    """
    parse_broker_url(req.broker_url, "--broker")
    gw_host, gw_port = check_gateway_url(req.gateway_url, "--gateway")
    if req.rate_micro_per_hour < 0:
        raise ConfigError(f"--rate must be >= 0 (micro-credits per hour), "
                          f"got {req.rate_micro_per_hour}")
    name = req.name or f"{gw_host}/edgeproof"
    try:
        signer = NoteSigner(name, seed(32))
    except MalformedRecord:
        raise ConfigError(f"--name {name!r} is not a valid key name "
                          "(no spaces, no '+')") from None
    root = req.root.absolute()
    _refuse_existing(root)
    tmp = root.with_name(f".{root.name}.init-{os.getpid()}")
    try:
        tmp.mkdir(parents=True, mode=0o700)
        _write_fleet_files(tmp, req, signer, token,
                           http_bind=gateway_config.default_http_bind(gw_host, gw_port))
        load_fleet(tmp)  # what was written must load: refuse it before it takes the name
        if root.exists():
            root.rmdir()  # empty (checked above); rename cannot replace a directory otherwise
        tmp.rename(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(f"{root}: cannot create the fleet: {exc.strerror}") from None
    except EdgeproofError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_fleet(root)


def _refuse_existing(root: Path) -> None:
    if (root / FLEET_FILE).exists():
        raise ConfigError(f"{root}: a fleet already exists here; refusing to overwrite it")
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if any(root.iterdir()):
            raise ConfigError(f"{root}: directory is not empty; choose a new fleet directory")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: exists and is not a directory")


def _write_fleet_files(tmp: Path, req: InitRequest, signer: NoteSigner, token: TokenSource,
                       *, http_bind: str) -> None:
    for sub in (GATEWAY_ETC, BROKER_DIR, DEVICES_DIR, RECIPIENTS_DIR):
        (tmp / sub).mkdir(parents=True, mode=0o700, exist_ok=True)
    write_secret_file(tmp / GATEWAY_KEY, (signer.private_text() + "\n").encode("ascii"))
    write_secret_file(tmp / ADMIN_TOKEN, (token(32) + "\n").encode("ascii"))
    password = token(24)
    write_secret_file(tmp / GATEWAY_BROKER_PASSWORD, (password + "\n").encode("ascii"))
    service = mosquitto.BrokerUser(mosquitto.GATEWAY_USER, mosquitto.hash_password(password))
    mosquitto.write_broker_file(tmp / SERVICE_PASSWD, mosquitto.render_password_file([service]))
    (tmp / GATEWAY_CONFIG).write_text(
        gateway_config.render(broker_url=req.broker_url, http_bind=http_bind), encoding="utf-8")
    (tmp / FLEET_FILE).write_text(_render_fleet_toml(req, signer), encoding="utf-8")
    vkey = tmp / VERIFIER_KEY_FILE  # a public key: readable by anyone who can reach it
    vkey.write_text(signer.verifier_text() + "\n", encoding="ascii")
    vkey.chmod(0o644)


def _render_fleet_toml(req: InitRequest, signer: NoteSigner) -> str:
    return tomlwrite.document(
        tomlwrite.table("fleet", {
            "name": signer.name,
            "broker_url": req.broker_url,
            "gateway_url": req.gateway_url.rstrip("/"),
            "gateway_verifier_key": signer.verifier_text(),
        }),
        tomlwrite.table("gateway", {"admin_token_file": str(ADMIN_TOKEN), "timeout_s": 10}),
        tomlwrite.table("devices", {"owner": req.owner or signer.name,
                                    "rate_micro_per_hour": req.rate_micro_per_hour}),
        tomlwrite.table("broker", {"pid_file": "", "reload_command": ""}),
        comment=(
            "edgeproof fleet, created by edgeproof-provision init.\n"
            "Relative paths are relative to this directory.\n"
            "[devices]: defaults for device add/enroll (--owner, --rate).\n"
            "[broker]: how to make Mosquitto re-read its password file and ACL after a\n"
            "device change: pid_file (SIGHUP) or reload_command, e.g.\n"
            "\"systemctl reload mosquitto\". Empty: provisioning says what to run."
        ),
    )


LOCK_FILE = ".lock"


@contextlib.contextmanager
def changing(fleet: FleetConfig) -> Iterator[None]:
    """Hold the fleet's lock while a command changes it; raise ConfigError if it is held.

    Two commands changing one fleet at once could each rewrite the broker files from a view
    that lacks the other's device; the second one is refused instead of waiting silently.
    """
    try:
        fd = os.open(fleet.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"{fleet.root}: cannot open the fleet lock: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{fleet.root}: another edgeproof-provision command is changing "
                              "this fleet; try again when it has finished") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_admin_token(fleet: FleetConfig) -> str:
    """Return the admin token (file must be mode 0600); raise KeyFileError otherwise."""
    return read_secret_file(fleet.admin_token_file).decode("ascii", "replace").strip()
