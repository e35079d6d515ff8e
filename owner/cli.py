"""``edgeproof-owner``: the owner's side of data on a contract basis (docs/CLI.md).

    edgeproof-owner init --key FILE                       make the owner key file (0600)
    edgeproof-owner show --key FILE                       print the public keys to pin
    edgeproof-owner devices --key FILE --gateway URL      the devices pinned to this owner
    edgeproof-owner requests --key FILE --gateway URL [--all] [--json]
    edgeproof-owner consent REQUEST_ID --key FILE --gateway URL [--device ID ...]
                            [--field STREAM:FIELD[,FIELD] ...] [--min-interval S]
                            [--not-before T] [--not-after T] [--lapse-on-shortfall]
    edgeproof-owner revoke CONSENT_ID --key FILE --gateway URL [--reason TEXT]
    edgeproof-owner data --key FILE --gateway URL [--device ID ...] [--stream S ...] [--json]
    edgeproof-owner wallet keygen | bind | status | claim ...   (rewards/cli.py)

The secret keys never leave the key file and are never printed. Consents and revocations
are signed here and submitted to the gateway, which logs them and delivers them to the
devices; a device applies only what the key it pinned at enrolment signed. Exit status:
0 done, 1 refused or failed, 2 usage or configuration error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from osutil.cli import EXIT_OK, add_version, run_command
from owner import actions
from protocol.errors import ConfigError
from protocol.keys import OwnerKey, OwnerPublic, load_owner_key, save_owner_key
from rewards import cli as wallet_cli
from verifier.client import DocumentClient
from verifier.documents import as_text, parse_device_ids, parse_streams, parse_time_ms
from verifier.records import Follow, show_records

PROG = "edgeproof-owner"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="An owner's keys, consents and revocations, and its devices' "
        "data, decrypted with its own key.",
        epilog="Exit status: 0 done, 1 refused or failed, 2 usage error, 130 interrupted "
               "(docs/CLI.md).")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = sub.add_parser("init", help="make a new owner key file (mode 0600)",
                          description="Create the owner's Ed25519 and X25519 keys in one file "
                          "of mode 0600 and print the public line to give the operator.")
    _key(init)
    show = sub.add_parser("show", help="print the owner's public keys and owner id",
                          description="Print the line devices pin (edgeproof-provision device "
                          "add --owner-key), and the owner id requests name.")
    _key(show)
    devices = sub.add_parser("devices", help="list the devices pinned to this owner",
                             description="List the devices the gateway registered with this "
                             "owner's key pinned.")
    _key(devices)
    _gateway(devices)
    requests = sub.add_parser("requests", help="list data requests for this owner's devices",
                              description="List logged requests that name this owner or one "
                              "of its devices (--all: every request).")
    _key(requests)
    _gateway(requests)
    requests.add_argument("--all", action="store_true", help="every logged request")
    consent = sub.add_parser("consent", help="consent to a request, possibly narrower",
                             description="Sign and submit a consent to REQUEST_ID. By default "
                             "it grants what was asked for the owner's targeted devices; each "
                             "option narrows it.")
    consent.add_argument("request", metavar="REQUEST_ID", help="the request's id (64 hex)")
    _key(consent)
    _gateway(consent)
    consent.add_argument("--device", action="append", default=[], metavar="ID",
                         help="only this device (repeatable)")
    consent.add_argument("--field", action="append", default=[], metavar="STREAM:FIELDS",
                         help="only these fields, e.g. climate:Cel (repeatable)")
    consent.add_argument("--min-interval", type=int, metavar="S",
                         help="at most one reading per S seconds (>= the request's)")
    consent.add_argument("--not-before", metavar="T", help="start (ms or ISO 8601)")
    consent.add_argument("--not-after", metavar="T", help="end (ms or ISO 8601)")
    consent.add_argument("--lapse-on-shortfall", action="store_true",
                         help="let the gateway end this consent with a signed lapse notice "
                         "if the company's funding falls short (PROTOCOL.md §19.4)")
    revoke = sub.add_parser("revoke", help="revoke a consent",
                            description="Sign and submit a revocation of CONSENT_ID with the "
                            "next counter of this owner.")
    revoke.add_argument("consent", metavar="CONSENT_ID", help="the consent's id (64 hex)")
    _key(revoke)
    _gateway(revoke)
    revoke.add_argument("--reason", default="owner", help="why (default: owner)")
    data = sub.add_parser("data", help="the owner's devices' readings, decrypted, with times",
                          description="Verify and open every record of the owner's devices "
                          "with the owner's X25519 key (devices seal every stream to it).")
    _key(data)
    _gateway(data)
    data.add_argument("--device", action="append", default=[], metavar="ID",
                      help="only this device (repeatable; default: all of the owner's)")
    data.add_argument("--stream", action="append", metavar="S", help="only this stream")
    for p in (devices, requests, consent, revoke, data):
        p.add_argument("--json", action="store_true", help="machine-readable output")
    wallet_cli.add_commands(sub)
    return parser


def _key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, type=Path, metavar="FILE",
                   help="the owner key file (mode 0600)")


def _gateway(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", required=True, metavar="URL", help="http://host:port")


def _check_address(args: argparse.Namespace) -> None:
    """``wallet status --address``: checked (and checksummed) before any connection is
    made; ConfigError (exit 2) naming the flag, as ``gateway chain deploy --token-holder``."""
    from rewards.tree import checked_address  # noqa: PLC0415 - eth_utils only when asked

    try:
        args.address = checked_address(args.address)
    except ValueError as exc:
        raise ConfigError(f"--address: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    return run_command(PROG, lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "init":
        key = OwnerKey.generate()
        save_owner_key(args.key, key)
        print(f"wrote {args.key} (mode 0600; keep it here, never share it)")
        print(OwnerPublic.of(key).text())
        return EXIT_OK
    if args.command == "wallet":
        if getattr(args, "address", None) is not None:
            _check_address(args)
        return wallet_cli.run(args)
    key = load_owner_key(args.key)
    if args.command == "show":
        print(OwnerPublic.of(key).text())
        print(f"owner id {key.owner_id.hex()}")
        return EXIT_OK
    client = DocumentClient(args.gateway)
    if args.command == "devices":
        found = client.owner_devices(key.public_key)
        _emit(args.json, [{"device_id": d.hex(), "name": n, "status": s} for d, n, s in found])
        return EXIT_OK
    if args.command == "requests":
        _emit(args.json, actions.requests_for(client, key, everything=args.all))
        return EXIT_OK
    if args.command == "consent":
        wanted = actions.Narrowing(
            parse_device_ids(args.device), parse_streams(args.field), args.min_interval,
            None if args.not_before is None else parse_time_ms(args.not_before),
            None if args.not_after is None else parse_time_ms(args.not_after),
            args.lapse_on_shortfall)
        _emit(args.json, [actions.consent(client, key, args.request, wanted)])
        return EXIT_OK
    if args.command == "revoke":
        _emit(args.json, [actions.revoke(client, key, args.consent, args.reason)])
        return EXIT_OK
    return _data(args, client, key)


def _data(args: argparse.Namespace, client: DocumentClient, key: OwnerKey) -> int:
    devices = parse_device_ids(args.device) or tuple(
        d for d, _, _ in client.owner_devices(key.public_key))
    errors = 0
    for device_id in devices:
        if not args.json:
            print(f"device {device_id.hex()}")
        errors += show_records(client, device_id, key.sealing,
                               streams=set(args.stream) if args.stream else None,
                               json_lines=args.json, follow=Follow(False, 0.0, lambda s: None),
                               out=sys.stdout)
    if errors:
        print(f"{PROG}: FAILED: {errors} record(s) did not verify", file=sys.stderr)
        return 1
    return EXIT_OK


def _emit(as_json: bool, items: list[dict[str, object]]) -> None:
    if as_json:
        print(json.dumps(items, sort_keys=True))
        return
    for item in items:
        print(as_text(item))


if __name__ == "__main__":
    sys.exit(main())
