"""Device operations: add (factory key), enroll (key made on the device), revoke, rotate.

Adding a device touches three places: the fleet directory, the gateway's registry and the
broker's files. The order makes a failure leave nothing half-made:

1. check locally and at the gateway (``GET /v1/devices``) that every name and key is free,
   so an unreachable gateway or a taken name stops before anything is written;
2. build the complete bundle under a dot-name inside ``FLEET/devices``;
3. register at the gateway; if that fails the dot-directory is removed;
4. rename the bundle into place (same directory, one atomic step). If even that fails, the
   registration just made is revoked, so no live device exists without a bundle;
5. rewrite the broker's password file and ACL and ask it to reload (a failure here is
   reported, and ``broker-config`` or the next device change repairs it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from protocol.errors import ConfigError, EdgeproofError, KeyFileError, StorageError
from protocol.keys import (
    OwnerPublic,
    SigningKey,
    device_id_for,
    save_device_key,
    write_secret_file,
)
from provisioning import agent_config, mosquitto
from provisioning.devices_store import (
    AGENT_CONFIG,
    BROKER_PASSWORD,
    DEVICE_KEY,
    FACTORY,
    NEXT_KEY,
    ON_DEVICE,
    DeviceRecord,
    bundle_dir,
    ensure_dirs,
    load_record,
    load_records,
    save_record,
)
from provisioning.fleet import FleetConfig
from provisioning.gateway_api import GatewayAPI, GatewayDevice, UnknownDevice
from provisioning.recipients import Recipient, check_name, load_recipient

TokenSource = Callable[[int], str]
MAX_COUNT = 9999


def expand_names(name: str, count: int | None) -> list[str]:
    """Return ``[name]`` or ``name-001 .. name-NNN`` for ``--count``; raise ConfigError."""
    check_name(name, "device")
    if count is None:
        return [name]
    if not 1 <= count <= MAX_COUNT:
        raise ConfigError(f"--count must be 1..{MAX_COUNT}, got {count}")
    width = max(3, len(str(count)))
    return [check_name(f"{name}-{i:0{width}d}", "device") for i in range(1, count + 1)]


def parse_public_key(text: str) -> bytes:
    """Return the 32-byte Ed25519 public key from 64 hex digits; raise ConfigError otherwise."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError("--public-key must be the 64 hex digits printed by "
                          "edgeproof-agent keygen")
    return key


@dataclass(frozen=True)
class NewDevice:
    """One device to provision: its name and key (``key`` is None when enrolled)."""

    name: str
    public_key: bytes
    key: SigningKey | None = None

    @property
    def device_id(self) -> str:
        return device_id_for(self.public_key).hex()


@dataclass(frozen=True)
class Terms:
    """Registration terms shared by the devices of one command."""

    owner: str
    rate_micro_per_hour: int
    recipients: tuple[Recipient, ...] = ()
    owner_keys: OwnerPublic | None = None  # the owner's public keys, pinned at enrolment


def check_free(fleet: FleetConfig, registered: Sequence[GatewayDevice],
               devices: Sequence[NewDevice]) -> None:
    """Raise ConfigError if a name or key is already used locally or at the gateway."""
    taken_names = {d.name for d in registered}
    taken_keys = {d.public_key.lower() for d in registered}
    taken_keys |= {r.public_key for r in load_records(fleet)}
    for dev in devices:
        if bundle_dir(fleet, dev.name).exists():
            raise ConfigError(f"device {dev.name!r} already exists in the fleet")
        if dev.name in taken_names:
            raise ConfigError(f"device {dev.name!r} is already registered at the gateway")
        if dev.public_key.hex() in taken_keys:
            raise ConfigError(f"the public key of {dev.name!r} is already registered")


def provision(fleet: FleetConfig, api: GatewayAPI, dev: NewDevice, terms: Terms, *,
              token: TokenSource = secrets.token_urlsafe) -> DeviceRecord:
    """Build the bundle, register the device and move the bundle into place; return its record.

    Raises AlreadyRegistered, RejectedByPeer or TransportError from the gateway (nothing is
    left behind), ConfigError / StorageError for local failures.
    """
    final = bundle_dir(fleet, dev.name)
    for stale in fleet.devices_dir.glob(f".{dev.name}.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = fleet.devices_dir / f".{dev.name}.tmp-{os.getpid()}"
    try:
        record = _build_bundle(fleet, tmp, dev, terms, token)
        pinned = terms.owner_keys
        device_id = api.register(
            name=dev.name, public_key=dev.public_key, owner=terms.owner,
            rate_micro_per_hour=terms.rate_micro_per_hour,
            owner_keys=None if pinned is None else (pinned.public_key, pinned.sealing_key))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if device_id != record.device_id:
        detail = f"gateway gave {dev.name!r} device id {device_id}, expected {record.device_id}"
    else:
        try:
            tmp.rename(final)
        except OSError as exc:
            detail = str(exc.strerror)
        else:
            return record
    _undo_registration(api, record.device_id)
    shutil.rmtree(tmp, ignore_errors=True)
    raise StorageError(f"{final}: {detail}; its registration was revoked again")


def _undo_registration(api: GatewayAPI, device_id: str) -> None:
    # Best effort: the caller's error already says the device is not usable.
    with contextlib.suppress(EdgeproofError):
        api.revoke(device_id)


def _build_bundle(fleet: FleetConfig, tmp: Path, dev: NewDevice, terms: Terms,
                  token: TokenSource) -> DeviceRecord:
    ensure_dirs(tmp)
    password = token(24)
    record = DeviceRecord(
        name=dev.name, device_id=dev.device_id, public_key=dev.public_key.hex(),
        owner=terms.owner, rate_micro_per_hour=terms.rate_micro_per_hour,
        key_origin=FACTORY if dev.key else ON_DEVICE, broker_user=dev.device_id,
        broker_password_hash=mosquitto.hash_password(password),
        recipients=tuple(r.name for r in terms.recipients),
    )
    settings = agent_config.AgentSettings(
        name=dev.name, device_id=dev.device_id, broker_url=fleet.broker_url,
        gateway_verifier_key=fleet.gateway_verifier_key,
        rate_micro_per_hour=terms.rate_micro_per_hour, recipients=terms.recipients,
        owner=terms.owner_keys,
    )
    try:
        (tmp / AGENT_CONFIG).write_text(agent_config.render(settings), encoding="utf-8")
    except OSError as exc:
        raise StorageError(f"{tmp / AGENT_CONFIG}: cannot write: {exc.strerror}") from None
    write_secret_file(tmp / BROKER_PASSWORD, (password + "\n").encode("ascii"))
    if dev.key is not None:
        save_device_key(tmp / DEVICE_KEY, dev.key)
    save_record(tmp, record)
    return record


def resolve_recipients(fleet: FleetConfig, names: Iterable[str]) -> tuple[Recipient, ...]:
    """Return the recipients named (each once, in order); raise ConfigError for an unknown one."""
    return tuple(load_recipient(fleet, n) for n in dict.fromkeys(names))


# --- revoke ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevokeOutcome:
    """What ``revoke`` achieved; ``gateway_error`` is set when the gateway part failed."""

    record: DeviceRecord
    gateway_error: str = ""


def revoke(fleet: FleetConfig, api: GatewayAPI, name: str) -> RevokeOutcome:
    """Revoke device ``name`` at the gateway and mark its record revoked; return the outcome.

    The record is marked revoked even when the gateway cannot be reached, so that the broker
    credential is removed by the following refresh; running revoke again retries the gateway.
    Raises ConfigError for an unknown device, StorageError if the record cannot be written.
    """
    record = load_record(fleet, name)
    gateway_error = ""
    if not record.gateway_revoked:
        try:
            api.revoke(record.device_id)
        except UnknownDevice:
            pass  # the gateway never knew it: nothing to reject there
        except EdgeproofError as exc:
            gateway_error = str(exc)
    updated = record.revoked(at_gateway=not gateway_error)
    save_record(bundle_dir(fleet, name), updated)
    return RevokeOutcome(updated, gateway_error)


# --- rotate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RotateOutcome:
    """A factory device's new key file, or the steps for a device that made its own key."""

    record: DeviceRecord
    next_key_file: Path | None
    instructions: str


def rotate(fleet: FleetConfig, name: str, key: SigningKey | None = None, *,
           gateway_current_key: str | None = None) -> RotateOutcome:
    """Prepare a key rotation for device ``name``; return where the next key is or what to do.

    For a factory device the next key is written as ``var/lib/edgeproof/device.next.key`` in
    its bundle; the agent announces it in a KeyRotation record signed by the current key and
    signs everything after it with the new key, so the device id and chain carry on
    (docs/AGENT.md, "Key rotation"). A previous rotation counts as finished once the
    gateway's current key (``gateway_current_key``, from its device list) is that rotation's
    key; the bundle then takes the new key as its ``device.key`` before the next one is made.
    Raises ConfigError for an unknown or revoked device or a rotation still pending.
    """
    record = load_record(fleet, name)
    if not record.active:
        raise ConfigError(f"device {name!r} is revoked; a revoked device cannot rotate keys")
    if record.key_origin != FACTORY:
        return RotateOutcome(record, None, _on_device_rotation_steps(name))
    bundle = bundle_dir(fleet, name)
    path = bundle / NEXT_KEY
    if record.next_public_key and gateway_current_key == record.next_public_key:
        record = _finish_rotation(bundle, record)
    if path.exists() or record.next_public_key:
        raise ConfigError(f"device {name!r} already has a pending rotation ({path})")
    key = key or SigningKey.generate()
    try:
        save_device_key(path, key)
        save_record(bundle, replace(record, next_public_key=key.public_key.hex()))
    except KeyFileError:
        path.unlink(missing_ok=True)
        raise
    return RotateOutcome(record, path, (
        f"copy {path} to /var/lib/edgeproof/device.next.key on {name} (owner edgeproof, "
        "mode 0600) and restart edgeproof-agent; it announces the new key in a rotation "
        "record signed by the current key"))


def _finish_rotation(bundle: Path, record: DeviceRecord) -> DeviceRecord:
    """The gateway now knows the pending key: make it the bundle's current key."""
    next_key = bundle / NEXT_KEY
    if next_key.exists():
        os.replace(next_key, bundle / DEVICE_KEY)
    finished = replace(record, next_public_key="")
    save_record(bundle, finished)
    return finished


def _on_device_rotation_steps(name: str) -> str:
    return (
        f"{name} generated its own key, so its next key must be generated there too: on the "
        "device, create /var/lib/edgeproof/device.next.key (edgeproof-agent keygen "
        "--state-dir DIR into an empty DIR, then move DIR/device.key there, owner edgeproof, "
        "mode 0600) and restart edgeproof-agent; it announces the new key in a rotation record "
        "signed by the current key"
    )


def factory_device(name: str, key: SigningKey | None = None) -> NewDevice:
    """Return a device with a freshly generated (or the given) key."""
    key = key or SigningKey.generate()
    return NewDevice(name, key.public_key, key)
