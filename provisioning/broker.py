"""The fleet's broker files, derived from its records, and where they are installed.

The password file and ACL are never edited in place: they are rendered from the service
users (``broker/service.passwd``, the gateway) and the device records that are not revoked,
then written to ``FLEET/broker/`` and to the directory ``broker-config --out`` last wrote to
(remembered in ``broker/out_dir``), and the broker is told to reload. A device change
therefore always leaves the broker's view equal to the fleet's records.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

from osutil.brokerurl import parse_broker_url
from protocol.errors import ConfigError, StorageError
from provisioning import mosquitto
from provisioning.devices_store import load_records
from provisioning.fleet import SERVICE_PASSWD, FleetConfig

PASSWD = "passwd"  # noqa: S105 - a file name, not a password
ACL = "acl"
CONF = "mosquitto.conf"
OUT_DIR_MARKER = "out_dir"


def service_users(fleet: FleetConfig) -> list[mosquitto.BrokerUser]:
    """Return the service users (``user:hash`` lines of broker/service.passwd)."""
    path = fleet.root / SERVICE_PASSWD
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise StorageError(f"{path}: cannot read: {exc.strerror}") from None
    users = []
    for line in lines:
        if line.strip() and not line.startswith("#"):
            name, sep, hashed = line.partition(":")
            if not sep:
                raise ConfigError(f"{path}: line {line[:20]!r}... is not user:hash")
            users.append(mosquitto.BrokerUser(name, hashed))
    return users


def render_files(fleet: FleetConfig) -> tuple[str, str]:
    """Return (password file, ACL) for the fleet as it stands.

    Every service user gets the gateway's rights: ``gateway`` and any further gateway
    worker (each needs its own user, because the broker makes a user name the client id).
    """
    active = [r for r in load_records(fleet) if r.active]
    service = service_users(fleet)
    users = service + [
        mosquitto.BrokerUser(r.broker_user, r.broker_password_hash) for r in active
    ]
    acl = mosquitto.render_acl([u.name for u in service],
                               [bytes.fromhex(r.device_id) for r in active])
    return mosquitto.render_password_file(users), acl


def add_gateway_user(fleet: FleetConfig, name: str, password: str) -> RefreshResult:
    """Add broker user ``name`` with the gateway's rights (another gateway worker of a
    shared subscription); rewrite the broker files and reload as a device change does.

    The caller holds the fleet lock (:func:`provisioning.fleet.changing`) and keeps the
    password (mode 0600) for that worker's ``broker.password_file``. Raises ConfigError for
    a name already in use or one shaped like a device id, StorageError if a file cannot be
    written, TransportError if a configured reload fails.
    """
    existing = service_users(fleet)
    taken = {u.name for u in existing} | {r.broker_user for r in load_records(fleet)}
    looks_like_device = len(name) == 32 and all(c in "0123456789abcdef" for c in name)
    if name in taken or looks_like_device:
        raise ConfigError(f"broker user {name!r} is taken or looks like a device id")
    users = [*existing, mosquitto.BrokerUser(name, mosquitto.hash_password(password))]
    mosquitto.write_broker_file(fleet.root / SERVICE_PASSWD, mosquitto.render_password_file(users))
    return refresh(fleet)


def installed_dir(fleet: FleetConfig) -> Path | None:
    """Return the directory ``broker-config --out`` last wrote to, if any."""
    marker = fleet.broker_dir / OUT_DIR_MARKER
    try:
        text = marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"{marker}: cannot read: {exc.strerror}") from None
    return Path(text) if text else None


@dataclass(frozen=True)
class RefreshResult:
    """What a refresh did: the directories written and the reload outcome in one line."""

    written: tuple[Path, ...]
    reload_message: str
    reloaded: bool


def refresh(fleet: FleetConfig) -> RefreshResult:
    """Rewrite the broker files from the records and ask the broker to reload.

    Returns what was done; a missing reload configuration is not an error (the message says
    what to run). Raises StorageError if the files cannot be written, TransportError if a
    configured reload fails.
    """
    passwd, acl = render_files(fleet)
    targets = [fleet.broker_dir]
    out = installed_dir(fleet)
    if out is not None and out != fleet.broker_dir:
        targets.append(out)
    for target in targets:
        mosquitto.write_broker_file(target / PASSWD, passwd)
        mosquitto.write_broker_file(target / ACL, acl)
    if out is None:
        return RefreshResult(tuple(targets), "no broker files installed yet; run "
                             f"edgeproof-provision broker-config --fleet {fleet.root} --out DIR",
                             False)
    if not fleet.broker_control.configured:
        return RefreshResult(tuple(targets), "tell the broker to reload: "
                             f"{mosquitto.RELOAD_HINT}", False)
    return RefreshResult(tuple(targets), mosquitto.reload_broker(fleet.broker_control), True)


@dataclass(frozen=True)
class BrokerConfigRequest:
    """What ``broker-config`` was asked for."""

    out: Path
    bind: str | None = None
    port: int | None = None
    data_dir: Path = Path("/var/lib/mosquitto")
    run_as: str = "mosquitto"
    max_queued_messages: int = 100_000
    max_queued_bytes: int = mosquitto.DEFAULT_MAX_QUEUED_BYTES
    tls: mosquitto.TlsListener | None = None


def write_broker_config(fleet: FleetConfig, req: BrokerConfigRequest) -> list[Path]:
    """Write mosquitto.conf, passwd and acl into ``req.out``; remember it; return the files.

    Later device changes rewrite passwd and acl there too. Every value is checked, and
    every file rendered, before anything is written: a ConfigError changes nothing. Raises
    ConfigError or StorageError.
    """
    url_port = parse_broker_url(fleet.broker_url, "fleet.broker_url").port
    out = req.out.absolute()
    check_broker_request(req, out)
    owner = _broker_owner(req.run_as)
    settings = mosquitto.ListenerSettings(
        port=req.port if req.port is not None else url_port, bind=req.bind,
        data_dir=req.data_dir.absolute(), password_file=out / PASSWD, acl_file=out / ACL,
        run_as=req.run_as, max_queued_messages=req.max_queued_messages,
        max_queued_bytes=req.max_queued_bytes, tls=req.tls,
    )
    conf = mosquitto.render_mosquitto_conf(settings, fleet_name=fleet.name)
    passwd, acl = render_files(fleet)
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        raise StorageError(f"{out}: cannot create: {exc.strerror}") from None
    try:
        mosquitto.write_broker_file(out / PASSWD, passwd)
        mosquitto.write_broker_file(out / ACL, acl)
        (out / CONF).write_text(conf, encoding="utf-8")
        if owner is not None:
            for path in (out, out / PASSWD, out / ACL):
                os.chown(path, owner[0], owner[1])
        mosquitto.write_broker_file(fleet.broker_dir / OUT_DIR_MARKER, f"{out}\n")
    except OSError as exc:
        raise StorageError(f"{out}: cannot write broker files: {exc.strerror}") from None
    return [out / CONF, out / PASSWD, out / ACL]


MAX_PORT = 65535
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_broker_request(req: BrokerConfigRequest, out: Path) -> None:
    """Raise ConfigError naming the flag for any value ``broker-config`` must refuse.

    Ports are 1..65535, ``--bind`` is an IP address or a host name, no path or value that
    goes into mosquitto.conf holds a control character (a newline would add a line to the
    config), and the TLS files exist.
    """
    ports = [("--port", req.port)] + ([("--tls-port", req.tls.port)] if req.tls else [])
    for flag, port in ports:
        if port is not None and not 1 <= port <= MAX_PORT:
            raise ConfigError(f"{flag} must be 1..{MAX_PORT}, got {port}")
    if req.bind is not None and not _plain_host(req.bind):
        raise ConfigError(f"--bind must be an IP address or a host name, got {req.bind!r}")
    if not req.run_as or not req.run_as.isprintable() or any(c.isspace() for c in req.run_as):
        raise ConfigError(f"--run-as must be a user name, got {req.run_as!r}")
    paths = [("--out", out), ("--data-dir", req.data_dir)]
    if req.tls is not None:
        paths += [("--cafile", req.tls.cafile), ("--certfile", req.tls.certfile),
                  ("--keyfile", req.tls.keyfile)]
        if req.tls.crlfile is not None:
            paths.append(("--crlfile", req.tls.crlfile))
    for flag, path in paths:
        if mosquitto.has_control_character(str(path)):
            raise ConfigError(f"{flag} {str(path)!r}: a path with a control character "
                              "(such as a newline) cannot go into mosquitto.conf")
    for flag, path in paths[2:]:
        if not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")


def _plain_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        labels = text.removesuffix(".").split(".")
        return len(text) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
    return True


def _broker_owner(user: str) -> tuple[int, int] | None:
    """As root, the (uid, gid) the directory, password file and ACL are given to.

    Mosquitto reads them after dropping to that user; later rewrites keep the owner
    (:func:`mosquitto.write_broker_file`). Not root: None, the files stay ours, and the
    broker must run as us (``--run-as``) or the operator hands them over. Looked up before
    anything is written: an unknown user changes nothing.
    """
    if os.geteuid() != 0 or user == "root":
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--run-as {user!r}: no such user on this machine") from None
    return entry.pw_uid, entry.pw_gid
