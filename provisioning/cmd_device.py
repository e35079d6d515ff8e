"""``device add|enroll|list|revoke|rotate``: one device's life in the fleet."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protocol.errors import ConfigError, EdgeproofError, TransportError
from protocol.keys import OWNER_PUBLIC_KIND, OwnerPublic
from provisioning import broker, devices
from provisioning.devices_store import (
    DEVICE_KEY,
    DeviceRecord,
    bundle_dir,
    load_record,
    load_records,
)
from provisioning.fleet import FleetConfig, changing, load_fleet, read_admin_token
from provisioning.gateway_api import GatewayAPI
from provisioning.output import Output

_Groups = Any  # argparse's _SubParsersAction is private


def add_commands(groups: _Groups) -> None:
    """Add the ``device`` command group to the top-level parser."""
    p = groups.add_parser("device", help="add, enroll, list, revoke, rotate devices",
                          description="Manage the fleet's devices.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_add(sub)
    _add_enroll(sub)
    _simple(sub, "list", "list devices with their gateway status", run_list, name=False)
    _simple(sub, "revoke", "revoke a device at the gateway and the broker", run_revoke)
    _simple(sub, "rotate", "prepare a new key for a device", run_rotate)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fleet", required=True, type=Path, metavar="FLEET_DIR",
                   help="the fleet directory made by init")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _terms_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipient", action="append", default=[], metavar="NAME",
                   help="seal the device's streams to this recipient (repeatable)")
    p.add_argument("--owner", help="the device's owner name (default: the owner id of "
                   "--owner-key, else fleet.toml devices.owner)")
    p.add_argument("--owner-key", metavar="KEY|FILE",
                   help="pin the owner's public keys: the line `edgeproof-owner show` prints, "
                   "or a file holding it; only consents that key signs reach the device, "
                   "and every stream is sealed to the owner too")
    p.add_argument("--rate", type=int, metavar="MICRO_PER_HOUR",
                   help="credit rate in micro-credits per hour (default: fleet.toml)")


def _add_add(sub: _Groups) -> None:
    p = sub.add_parser("add", help="generate a device key here and register it",
                       description="Factory provisioning: generate the device key, register "
                       "the device, and write its bundle to FLEET/devices/NAME.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--count", type=int, metavar="N", help="provision NAME-001 .. NAME-N")
    _terms_flags(p)
    _common(p)
    p.set_defaults(handler=run_add)


def _add_enroll(sub: _Groups) -> None:
    p = sub.add_parser("enroll", help="register a key generated on the device",
                       description="Register a device whose key was made on it with "
                       "`edgeproof-agent keygen` (the secret never leaves it) and write its "
                       "bundle (config and broker credential) to FLEET/devices/NAME.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--public-key", required=True, metavar="KEY",
                   help="the 64 hex digits edgeproof-agent keygen printed")
    _terms_flags(p)
    _common(p)
    p.set_defaults(handler=run_enroll)


def _simple(sub: _Groups, action: str, help_text: str, handler: Any, *, name: bool = True) -> None:
    p = sub.add_parser(action, help=help_text, description=help_text[0].upper() + help_text[1:])
    if name:
        p.add_argument("name", metavar="NAME")
    if action == "list":
        p.add_argument("--local", action="store_true",
                       help="only the fleet's records; do not ask the gateway")
    _common(p)
    p.set_defaults(handler=handler)


def _api(cfg: FleetConfig) -> GatewayAPI:
    return GatewayAPI(cfg.gateway_url, read_admin_token(cfg), timeout_s=cfg.timeout_s)


# --- add / enroll ------------------------------------------------------------------------


def run_add(args: argparse.Namespace) -> int:
    names = devices.expand_names(args.name, args.count)
    return _provision(args, [devices.factory_device(n) for n in names])


def run_enroll(args: argparse.Namespace) -> int:
    key = devices.parse_public_key(args.public_key)
    devices.expand_names(args.name, None)
    return _provision(args, [devices.NewDevice(args.name, key)])


def _provision(args: argparse.Namespace, new: Sequence[devices.NewDevice]) -> int:
    out = Output(as_json=args.json)
    cfg = load_fleet(args.fleet)
    owner_keys = None if args.owner_key is None else _owner_keys(args.owner_key)
    default_owner = owner_keys.owner_id.hex() if owner_keys else cfg.default_owner
    terms = devices.Terms(
        owner=args.owner or default_owner,
        rate_micro_per_hour=cfg.default_rate if args.rate is None else args.rate,
        recipients=devices.resolve_recipients(cfg, args.recipient),
        owner_keys=owner_keys,
    )
    if terms.rate_micro_per_hour < 0:
        raise ConfigError("--rate must be >= 0")
    api = _api(cfg)
    with changing(cfg):
        devices.check_free(cfg, api.list_devices(), new)
        made, failure = _provision_each(out, cfg, api, new, terms)
        if made:  # complete devices stay, and the broker must learn about them
            _report_added(out, cfg, made)
            _refresh_broker(out, cfg)
    if failure:
        raise EdgeproofError(failure)
    return 0


def _owner_keys(value: str) -> OwnerPublic:
    """The owner's public keys from the text itself or a file holding it (ConfigError)."""
    if not value.startswith(OWNER_PUBLIC_KIND):
        try:
            value = Path(value).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--owner-key {value}: cannot read: {exc}") from None
    return OwnerPublic.from_text(value)


def _provision_each(out: Output, cfg: FleetConfig, api: GatewayAPI,
                    new: Sequence[devices.NewDevice], terms: devices.Terms,
                    ) -> tuple[list[DeviceRecord], str]:
    """Provision in order, stopping at the first failure; return (made, failure line)."""
    made: list[DeviceRecord] = []
    with out.progress("provisioning", len(new)) as bar:
        for dev in new:
            try:
                made.append(devices.provision(cfg, api, dev, terms))
            except EdgeproofError as exc:
                return made, _partial(dev.name, exc, made)
            bar.advance(bar.task_ids[0])
    return made, ""


def _partial(name: str, exc: EdgeproofError, made: Sequence[DeviceRecord]) -> str:
    if not made:
        return f"{name}: {exc}"
    return (f"{name}: {exc} (nothing of {name} was kept; {len(made)} device(s) before it were "
            f"provisioned: {made[0].name} .. {made[-1].name})")


def _report_added(out: Output, cfg: FleetConfig, made: Sequence[DeviceRecord]) -> None:
    if out.as_json:
        out.json([_record_json(cfg, r) for r in made])
        return
    for r in made:
        out.line(f"{r.name}: device id {r.device_id}, bundle {bundle_dir(cfg, r.name)}")
    out.line("install a bundle on its device: see docs/OPERATIONS.md (\"Install a device\")")


def _record_json(cfg: FleetConfig, r: DeviceRecord) -> dict[str, Any]:
    bundle = bundle_dir(cfg, r.name)
    return {"name": r.name, "device_id": r.device_id, "public_key": r.public_key,
            "owner": r.owner, "rate_micro_per_hour": r.rate_micro_per_hour,
            "key_origin": r.key_origin, "recipients": list(r.recipients), "status": r.status,
            "bundle": str(bundle),
            "device_key": str(bundle / DEVICE_KEY) if r.key_origin == "factory" else None}


def _refresh_broker(out: Output, cfg: FleetConfig) -> None:
    try:
        result = broker.refresh(cfg)
    except EdgeproofError as exc:
        raise EdgeproofError(f"the fleet is updated, but the broker is not: {exc}") from None
    out.note(f"broker: {result.reload_message}")


# --- list --------------------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    cfg = load_fleet(args.fleet)
    records = {r.name: r for r in load_records(cfg)}
    remote = {} if args.local else {d.name: d for d in _api(cfg).list_devices()}
    rows = []
    for name in sorted(set(records) | set(remote)):
        rec, dev = records.get(name), remote.get(name)
        rows.append({
            "name": name,
            "device_id": rec.device_id if rec else dev.device_id if dev else "",
            "owner": rec.owner if rec else dev.owner if dev else "",
            "key_origin": rec.key_origin if rec else "",
            "fleet_status": rec.status if rec else "not in fleet",
            "gateway_status": (dev.status if dev else "not registered") if not args.local
            else "not asked",
            "recipients": list(rec.recipients) if rec else [],
        })
    if out.as_json:
        out.json(rows)
    else:
        cols = ["name", "device_id", "owner", "key_origin", "fleet_status", "gateway_status"]
        out.table(f"devices of {cfg.name}", cols, [[str(r[c]) for c in cols] for r in rows])
    return 0


# --- revoke / rotate ---------------------------------------------------------------------


def run_revoke(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    cfg = load_fleet(args.fleet)
    with changing(cfg):
        outcome = devices.revoke(cfg, _api(cfg), args.name)
        result = broker.refresh(cfg)
    if out.as_json:
        out.json({"name": args.name, "device_id": outcome.record.device_id,
                  "gateway_revoked": outcome.record.gateway_revoked,
                  "broker_credential_removed": True, "broker_reloaded": result.reloaded,
                  "broker": result.reload_message})
    else:
        out.line(f"{args.name}: broker credential removed; {result.reload_message}")
        if not outcome.gateway_error:
            out.line(f"{args.name}: revoked at the gateway; its next record is rejected")
    if outcome.gateway_error:
        raise TransportError(f"{args.name}: NOT revoked at the gateway ({outcome.gateway_error}); "
                           "run device revoke again when it is reachable")
    return 0


def _gateway_current_key(cfg: FleetConfig, name: str) -> str | None:
    """The device's current key at the gateway (None if the gateway cannot say)."""
    try:
        record = load_record(cfg, name)
        listed = {d.device_id: d for d in _api(cfg).list_devices()}
    except EdgeproofError:
        return None
    found = listed.get(record.device_id)
    return found.current_key if found else None


def run_rotate(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    cfg = load_fleet(args.fleet)
    with changing(cfg):
        outcome = devices.rotate(cfg, args.name,
                                 gateway_current_key=_gateway_current_key(cfg, args.name))
    if out.as_json:
        out.json({"name": args.name, "device_id": outcome.record.device_id,
                  "next_key_file": str(outcome.next_key_file) if outcome.next_key_file else None,
                  "instructions": outcome.instructions})
    else:
        if outcome.next_key_file:
            out.line(f"{args.name}: next key written to {outcome.next_key_file}")
        out.line(outcome.instructions)
    return 0
