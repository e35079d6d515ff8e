"""Commands for the fleet as a whole: ``init``, ``recipient add|list``, ``broker-config``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from protocol.errors import ConfigError
from provisioning import broker, fleet, mosquitto, recipients
from provisioning.gateway_api import GatewayAPI
from provisioning.output import Output

_Groups = Any  # argparse's _SubParsersAction is private; typing it buys nothing here


def add_commands(groups: _Groups) -> None:
    """Add ``init``, ``recipient`` and ``broker-config`` to the top-level parser."""
    _add_init(groups)
    _add_recipient(groups)
    _add_broker_config(groups)


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _fleet_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fleet", required=True, type=Path, metavar="FLEET_DIR",
                   help="the fleet directory made by init")


# --- init --------------------------------------------------------------------------------


def _add_init(groups: _Groups) -> None:
    p = groups.add_parser("init", help="create a fleet: gateway key, admin token, configs",
                          description="Create a fleet directory with the gateway's signing key, "
                          "admin token, broker credential and config, and fleet.toml.")
    p.add_argument("--fleet", type=Path, metavar="FLEET_DIR",
                   help="the fleet directory to create (new or empty)")
    # The spelling before docs/CLI.md's one convention (`init DIR`), kept as a hidden alias.
    p.add_argument("fleet_dir", type=Path, nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:1883 or mqtts://")
    p.add_argument("--gateway", required=True, metavar="URL", help="http://host:8080")
    p.add_argument("--name", metavar="ORIGIN",
                   help="the gateway key's name (default: <gateway host>/edgeproof)")
    p.add_argument("--owner", help="default owner of new devices (default: the key name)")
    p.add_argument("--rate", type=int, default=fleet.DEFAULT_RATE_MICRO_PER_HOUR,
                   metavar="MICRO_PER_HOUR",
                   help="default credit rate of new devices, micro-credits per hour "
                   f"(default {fleet.DEFAULT_RATE_MICRO_PER_HOUR}: one credit per hour of "
                   "use; 0 earns nothing)")
    _json_flag(p)
    p.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    cfg = fleet.init_fleet(fleet.InitRequest(
        root=_init_dir(args), broker_url=args.broker, gateway_url=args.gateway,
        name=args.name, owner=args.owner, rate_micro_per_hour=args.rate,
    ))
    gateway_config = cfg.root / fleet.GATEWAY_CONFIG
    if out.as_json:
        out.json({"fleet": str(cfg.root), "name": cfg.name, "broker_url": cfg.broker_url,
                  "gateway_url": cfg.gateway_url, "gateway_config": str(gateway_config),
                  "gateway_verifier_key": cfg.gateway_verifier_key,
                  "gateway_verifier_key_file": str(cfg.root / fleet.VERIFIER_KEY_FILE),
                  "default_rate_micro_per_hour": cfg.default_rate})
        return 0
    out.line(f"fleet created in {cfg.root}")
    out.line(f"gateway verifier key: {cfg.gateway_verifier_key}")
    out.line(f"  (also in {cfg.root / fleet.VERIFIER_KEY_FILE}, for --gateway-key)")
    out.line(f"credit rate of new devices: {cfg.default_rate} micro-credits per hour")
    out.line(f"gateway config:       {gateway_config}")
    out.line("next: edgeproof-provision broker-config --fleet "
             f"{cfg.root} --out /etc/mosquitto/edgeproof, then start the gateway with "
             f"edgeproof-gateway run --config {gateway_config}")
    return 0


def _init_dir(args: argparse.Namespace) -> Path:
    if args.fleet is not None and args.fleet_dir is not None and args.fleet != args.fleet_dir:
        raise ConfigError("init: give the fleet directory once, as --fleet FLEET_DIR")
    root: Path | None = args.fleet or args.fleet_dir
    if root is None:
        raise ConfigError("init: --fleet FLEET_DIR is required")
    return root


# --- recipients --------------------------------------------------------------------------


def _add_recipient(groups: _Groups) -> None:
    p = groups.add_parser("recipient", help="data recipients' X25519 keys",
                          description="Manage data recipients (X25519 key pairs).")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="create a recipient key pair",
                         description="Create FLEET/recipients/NAME.key (secret, 0600) and "
                         "NAME.pub (hex); hand NAME.key to the recipient.")
    add.add_argument("name", metavar="NAME")
    _fleet_flag(add)
    _json_flag(add)
    add.set_defaults(handler=run_recipient_add)
    reg = sub.add_parser("register", help="register a recipient at the gateway",
                         description="Register recipient NAME (its X25519 key NAME.pub) with "
                         "the Ed25519 key it signs data requests with, so the gateway logs "
                         "its requests (`edgeproof-verify signing-key` makes one).")
    reg.add_argument("name", metavar="NAME")
    reg.add_argument("--signing-key", required=True, metavar="HEX",
                     help="the recipient's Ed25519 public key (64 hex digits)")
    _fleet_flag(reg)
    _json_flag(reg)
    reg.set_defaults(handler=run_recipient_register)
    lst = sub.add_parser("list", help="list recipients", description="List the fleet's recipients.")
    _fleet_flag(lst)
    _json_flag(lst)
    lst.set_defaults(handler=run_recipient_list)


def _recipient_json(r: recipients.Recipient) -> dict[str, str]:
    return {"name": r.name, "public_key": r.public_key.hex(), "kid": r.kid.hex()}


def run_recipient_add(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    cfg = fleet.load_fleet(args.fleet)
    with fleet.changing(cfg):
        r = recipients.add_recipient(cfg, args.name)
    if out.as_json:
        out.json(_recipient_json(r))
    else:
        out.line(f"recipient {r.name}: public key {r.public_key.hex()}")
        out.line(f"give {cfg.recipients_dir / (r.name + '.key')} to the recipient (a secret)")
    return 0


def run_recipient_register(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    cfg = fleet.load_fleet(args.fleet)
    r = recipients.load_recipient(cfg, args.name)
    try:
        signing = bytes.fromhex(args.signing_key)
    except ValueError:
        signing = b""
    if len(signing) != 32:
        raise ConfigError("--signing-key: give the 64 hex digits of an Ed25519 public key")
    GatewayAPI(cfg.gateway_url, fleet.read_admin_token(cfg),
               timeout_s=cfg.timeout_s).register_recipient(r.name, signing, r.public_key)
    if out.as_json:
        out.json(_recipient_json(r) | {"signing_key": signing.hex()})
    else:
        out.line(f"recipient {r.name}: registered at {cfg.gateway_url}; its requests are "
                 "logged from now on")
    return 0


def run_recipient_list(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    found = recipients.list_recipients(fleet.load_fleet(args.fleet))
    if out.as_json:
        out.json([_recipient_json(r) for r in found])
    else:
        out.table("recipients", ["name", "kid", "public key"],
                  [[r.name, r.kid.hex(), r.public_key.hex()] for r in found])
    return 0


# --- broker-config -----------------------------------------------------------------------


def _add_broker_config(groups: _Groups) -> None:
    p = groups.add_parser(
        "broker-config", help="write mosquitto.conf, password file and ACL",
        description="Write a Mosquitto config (anonymous access off), a password file "
        "(PBKDF2-SHA512) and an ACL into DIR. Later device changes rewrite the password file "
        "and ACL there too.")
    _fleet_flag(p)
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--bind", metavar="ADDRESS",
                   help="listen on this address only (default: all interfaces)")
    p.add_argument("--port", type=int, help="listener port (default: the broker URL's)")
    p.add_argument("--data-dir", type=Path, default=Path("/var/lib/mosquitto"),
                   help="Mosquitto's persistence directory (default: /var/lib/mosquitto)")
    p.add_argument("--max-queued-bytes", type=int, default=mosquitto.DEFAULT_MAX_QUEUED_BYTES,
                   metavar="BYTES", help="bytes Mosquitto queues per session at most (default: "
                   f"{mosquitto.DEFAULT_MAX_QUEUED_BYTES}, {mosquitto.QUEUED_FULL_PACKETS} "
                   "full-size batches)")
    p.add_argument("--run-as", default="mosquitto", metavar="USER",
                   help="the user Mosquitto runs as; it must be able to read the password "
                   "file and ACL (default: mosquitto; run as root to hand them over)")
    tls = p.add_argument_group("TLS listener with client certificates (optional)")
    tls.add_argument("--tls-port", type=int, metavar="PORT",
                     help="also listen with TLS here; clients must present a certificate "
                     "whose CN is their broker user name (the device id)")
    tls.add_argument("--cafile", type=Path, help="CA that signed the client certificates")
    tls.add_argument("--certfile", type=Path, help="the broker's certificate")
    tls.add_argument("--keyfile", type=Path, help="the broker's private key")
    tls.add_argument("--crlfile", type=Path, help="revoked client certificates (optional)")
    _json_flag(p)
    p.set_defaults(handler=run_broker_config)


def _tls(args: argparse.Namespace) -> mosquitto.TlsListener | None:
    files = (args.cafile, args.certfile, args.keyfile)
    if args.tls_port is None:
        if any(files) or args.crlfile:
            raise ConfigError("--cafile/--certfile/--keyfile/--crlfile need --tls-port")
        return None
    if not all(files):
        raise ConfigError("--tls-port needs --cafile, --certfile and --keyfile")
    return mosquitto.TlsListener(args.tls_port, args.cafile.absolute(),
                                 args.certfile.absolute(), args.keyfile.absolute(),
                                 args.crlfile.absolute() if args.crlfile else None)


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise ConfigError(f"{flag} must be at least 1, got {value}")
    return value


def run_broker_config(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    cfg = fleet.load_fleet(args.fleet)
    request = broker.BrokerConfigRequest(
        out=args.out, bind=args.bind, port=args.port, data_dir=args.data_dir,
        run_as=args.run_as, max_queued_bytes=_positive(args.max_queued_bytes,
                                                       "--max-queued-bytes"), tls=_tls(args))
    with fleet.changing(cfg):
        files = broker.write_broker_config(cfg, request)
    if out.as_json:
        out.json({"files": [str(f) for f in files]})
    else:
        for f in files:
            out.line(f"wrote {f}")
        out.line(f"run: mosquitto -c {files[0]}   (files must be readable by the broker's user)")
    return 0
