"""Mosquitto's files for an edgeproof fleet: password file, ACL, mosquitto.conf, reload.

Password file
    One ``user:$7$<iterations>$<base64 salt>$<base64 hash>`` line per user: PBKDF2-HMAC-SHA512
    as Mosquitto 2.0's ``mosquitto_passwd`` writes it (checked against the real tool: 101
    iterations, a 12-byte salt, a 64-byte hash, standard padded base64).
ACL
    Explicit ``user`` blocks. A device's broker user name is its device id in hex; it may
    write only ``edgeproof/v1/devices/<id>/records`` and ``.../<id>/policy-sync``, and read
    only ``.../<id>/receipts`` and ``.../<id>/policy``. The gateway user reads every records
    and policy-sync topic (plain and ``$share/`` forms, so shared subscriptions work
    whichever form the broker checks) and writes every receipts and policy topic: only the
    gateway can deliver a consent or revocation to a device (PROTOCOL.md §17).
    Explicit blocks rather than a ``pattern`` line: a revoked device's block disappears, so
    it has no topic at all even if its password entry survived somewhere.
mosquitto.conf
    Every listener binds client ids to user names (``use_username_as_clientid``): a client's
    session is its user name's, so no credential can close another client's connection or
    take over its session, and each client connects with its user name as client id. Sizes
    come from the protocol's caps (:mod:`protocol.mqtt_sizes`): a packet larger than the
    largest batch or receipt closes the sender's connection (``max_packet_size``), and each
    session queues at most ``max_queued_bytes``. Retained messages are refused
    (``retain_available false``): nothing of ours needs them, and a device's retained
    message would be delivered again on every subscribe.
Reload
    Mosquitto re-reads both files on SIGHUP; a removed credential is refused for new
    connections after that (PITFALLS.md). Either a pid file or a reload command tells us how.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol.batch import TOPIC_PREFIX, receipts_topic, records_topic
from protocol.delivery import POLICY_SUFFIX, SYNC_SUFFIX, policy_topic, sync_topic
from protocol.errors import ConfigError, StorageError, TransportError, VerificationError
from protocol.mqtt_sizes import MAX_PACKET_BYTES

PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes ("$7$101$")
SALT_BYTES = 12
HASH_BYTES = 64
HASH_ID = "7"  # Mosquitto's id for PBKDF2-SHA512
GATEWAY_USER = "gateway"
# Per session, Mosquitto queues at most this many full-size packets' worth of bytes for a
# client that is away or slow (64 MiB); past it, it drops, and the device resends because no
# receipt came. It bounds what one credential can make the broker hold.
QUEUED_FULL_PACKETS = 128
DEFAULT_MAX_QUEUED_BYTES = QUEUED_FULL_PACKETS * MAX_PACKET_BYTES


def hash_password(password: str, salt: bytes | None = None) -> str:
    """Return Mosquitto's ``$7$101$<salt>$<hash>`` for ``password`` (fresh salt unless given)."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, PBKDF2_ITERATIONS,
                                 HASH_BYTES)
    b64 = base64.b64encode
    return f"${HASH_ID}${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(entry: str, password: str) -> None:
    """Check ``password`` against a ``$7$`` hash; raise VerificationError if it does not match."""
    try:
        _, hash_id, iterations, salt_b64, hash_b64 = entry.split("$")
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        rounds = int(iterations)
    except ValueError:
        raise VerificationError("not a Mosquitto $7$ password hash") from None
    if hash_id != HASH_ID:
        raise VerificationError(f"unsupported Mosquitto hash type ${hash_id}$")
    got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, rounds, len(expected))
    if not hmac.compare_digest(got, expected):
        raise VerificationError("password does not match")


@dataclass(frozen=True)
class BrokerUser:
    """One broker login: user name and its Mosquitto password hash (never the password)."""

    name: str
    password_hash: str

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ": \t\r\n#"):
            raise ConfigError(f"broker user name {self.name!r} is not allowed")


def render_password_file(users: Sequence[BrokerUser]) -> str:
    """Return a Mosquitto password file holding ``users`` in order."""
    return "".join(f"{u.name}:{u.password_hash}\n" for u in users)


def render_acl(gateway_users: Sequence[str], device_ids: Sequence[bytes]) -> str:
    """Return the ACL: one gateway block per gateway user (each gateway worker has its own
    user, since a user name is also its client id), then one block per (not revoked) device.
    """
    if isinstance(gateway_users, str):  # a str is a Sequence[str] too: one user, not letters
        gateway_users = [gateway_users]
    all_records = f"{TOPIC_PREFIX}+/records"
    all_syncs = f"{TOPIC_PREFIX}+/{SYNC_SUFFIX}"
    lines = [
        "# Generated by edgeproof-provision; regenerated on every device change.",
        "# A user without a block below may neither publish nor subscribe.",
    ]
    for gateway_user in gateway_users:
        lines += ["", f"user {gateway_user}",
                  f"topic read {all_records}",
                  f"topic read $share/+/{all_records}",
                  f"topic write {TOPIC_PREFIX}+/receipts",
                  f"topic read {all_syncs}",
                  f"topic read $share/+/{all_syncs}",
                  f"topic write {TOPIC_PREFIX}+/{POLICY_SUFFIX}"]
    for device_id in device_ids:
        lines += ["", f"user {device_id.hex()}",
                  f"topic write {records_topic(device_id)}",
                  f"topic read {receipts_topic(device_id)}",
                  f"topic write {sync_topic(device_id)}",
                  f"topic read {policy_topic(device_id)}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener that requires a client certificate whose CN is the broker user name."""

    port: int
    cafile: Path
    certfile: Path
    keyfile: Path
    crlfile: Path | None = None

    def render(self, bind: str | None) -> list[str]:
        """Return the listener's mosquitto.conf lines."""
        lines = [
            f"listener {self.port}" + (f" {bind}" if bind else ""),
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            "require_certificate true",
            "# The certificate's CN (the device id in hex) is the ACL user name; no password.",
            "use_identity_as_username true",
            *_BIND_CLIENT_ID,
        ]
        if self.crlfile is not None:
            lines.append(f"crlfile {self.crlfile}")
        return lines


@dataclass(frozen=True)
class ListenerSettings:
    """What mosquitto.conf needs to know: where to listen and where the other files live."""

    port: int
    bind: str | None
    data_dir: Path
    password_file: Path
    acl_file: Path
    run_as: str = "mosquitto"
    max_queued_messages: int = 100_000
    max_inflight_messages: int = 20
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    max_packet_bytes: int = MAX_PACKET_BYTES
    tls: TlsListener | None = None


# Per listener: the session (client id) is the user name's, whatever the client sent.
_BIND_CLIENT_ID = [
    "# The client id is replaced by the user name: no credential can close another client's",
    "# connection or take over its session (Mosquitto does not tie the two otherwise).",
    "use_username_as_clientid true",
]


_TLS_EXAMPLE = """\
# Optional TLS listener with client certificates (docs/OPERATIONS.md, "TLS"; broker-config
# --tls-port writes it). Each device gets a certificate whose CN is its device id in hex;
# use_identity_as_username makes that CN the ACL user name, so the same ACL blocks apply
# and no password is sent.
#listener 8883
#cafile /etc/mosquitto/ca_certificates/edgeproof-ca.crt
#certfile /etc/mosquitto/certs/broker.crt
#keyfile /etc/mosquitto/certs/broker.key
#require_certificate true
#use_identity_as_username true
#use_username_as_clientid true
#crlfile /etc/mosquitto/ca_certificates/edgeproof-ca.crl
"""


def has_control_character(text: str) -> bool:
    """Whether ``text`` holds a control character (a newline would start a new line)."""
    return any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in text)


def _check_values(s: ListenerSettings) -> None:
    """Raise ConfigError if a value written into mosquitto.conf could break out of its line."""
    values: dict[str, object] = {"listener": s.bind or "", "user": s.run_as,
                                 "persistence_location": s.data_dir,
                                 "password_file": s.password_file, "acl_file": s.acl_file}
    if s.tls is not None:
        values |= {"cafile": s.tls.cafile, "certfile": s.tls.certfile,
                   "keyfile": s.tls.keyfile, "crlfile": s.tls.crlfile or ""}
    for key, value in values.items():
        text = str(value)
        if has_control_character(text) or (key in ("listener", "user") and " " in text):
            raise ConfigError(f"mosquitto.conf {key}: {text!r} cannot go into the config")


def render_mosquitto_conf(s: ListenerSettings, *, fleet_name: str) -> str:
    """Return mosquitto.conf for one listener with anonymous access off.

    Raises ConfigError if a path or value holds a control character (a newline would add a
    line of its own to the config) or the bind address or user holds a space.
    """
    _check_values(s)
    listener = f"listener {s.port}" + (f" {s.bind}" if s.bind else "")
    lines = [
        f"# Mosquitto configuration for the edgeproof fleet {fleet_name!r},",
        "# generated by edgeproof-provision broker-config.",
        "",
        "# Started as root, Mosquitto drops to this user before it reads the password file",
        "# and ACL (and again on every reload), so they must be readable by it.",
        f"user {s.run_as}",
        "",
        "# One password file and ACL for every listener.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {s.password_file}",
        f"acl_file {s.acl_file}",
        "",
        "# Keep queued QoS 1 messages across a broker restart (the default forgets them).",
        "persistence true",
        f"persistence_location {s.data_dir}/",
        "autosave_interval 60",
        "# Mosquitto drops messages silently past max_queued_messages (default 1000): a device",
        "# that was offline for a while must still get all its receipts.",
        f"max_queued_messages {s.max_queued_messages}",
        f"max_inflight_messages {s.max_inflight_messages}",
        "# ...but never more bytes than this per session: one credential must not be able to",
        "# make the broker hold more (the device resends what was dropped: no receipt came).",
        f"max_queued_bytes {s.max_queued_bytes}",
        "persistent_client_expiration 30d",
        "",
        "# The largest packet edgeproof needs: a full batch (PROTOCOL.md §11) with its topic and",
        "# header. A client sending a larger one is disconnected before the payload is stored.",
        f"max_packet_size {s.max_packet_bytes}",
        "# Nothing of ours publishes retained messages; a device's would be sent again to every",
        "# new subscription. A client that sets the retain flag is disconnected.",
        "retain_available false",
        "",
        "log_dest stderr",
        "connection_messages true",
        "",
        listener,
        *_BIND_CLIENT_ID,
        "",
        *(s.tls.render(s.bind) if s.tls else [_TLS_EXAMPLE]),
    ]
    return "\n".join(lines) + "\n"


def write_broker_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text`` (mode 0600), keeping its owner if it had one.

    Keeping the owner matters on a broker host where the files belong to the ``mosquitto``
    user: a refresh run by root must not make them unreadable for the broker. Raises
    StorageError on any OS error.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        old = path.stat() if path.exists() else None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"{path}: cannot write: {exc.strerror}") from None


@dataclass(frozen=True)
class BrokerControl:
    """How to tell the broker to re-read its files: a pid file, a command, or neither."""

    pid_file: Path | None = None
    reload_command: str = ""

    @property
    def configured(self) -> bool:
        return self.pid_file is not None or bool(self.reload_command)


RELOAD_HINT = "sudo systemctl reload mosquitto   (or: sudo kill -HUP <mosquitto pid>)"

Runner = Callable[[list[str]], int]


def _run(argv: list[str]) -> int:
    return subprocess.run(argv, check=False, timeout=30).returncode  # noqa: S603 - operator's own command


def reload_broker(control: BrokerControl, *, run: Runner = _run,
                  kill: Callable[[int, int], None] = os.kill) -> str:
    """Ask the broker to reload; return a one-line description of what was done.

    Raises ConfigError if nothing is configured, TransportError if the pid file is unreadable,
    the process is gone, or the reload command fails.
    """
    if control.pid_file is not None:
        try:
            pid = int(control.pid_file.read_text().strip())
            kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            raise TransportError(
                f"cannot signal the broker via {control.pid_file}: {exc}") from None
        return f"sent SIGHUP to mosquitto (pid {pid})"
    if control.reload_command:
        argv = shlex.split(control.reload_command)
        try:
            code = run(argv)
        except (OSError, subprocess.SubprocessError) as exc:
            raise TransportError(f"broker reload command failed: {exc}") from None
        if code != 0:
            raise TransportError(f"broker reload command exited {code}: {control.reload_command}")
        return f"ran {control.reload_command}"
    raise ConfigError("no broker reload configured ([broker] pid_file or reload_command)")
