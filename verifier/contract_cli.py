"""``edgeproof-verify`` commands for contract documents (PROTOCOL.md §16):

    edgeproof-verify signing-key --out FILE                      a recipient's Ed25519 key
    edgeproof-verify request --gateway URL --signing-key FILE --recipient-key FILE
                             (--device ID | --owner ID) ... --field STREAM:FIELDS ...
                             [--min-interval S] --not-before T --not-after T
                             --purpose TEXT [--reward MICRO_PER_HOUR] [--json]
    edgeproof-verify document FILE [--signer HEX] [--json]       check one document offline
    edgeproof-verify audit (--gateway URL --device ID [--save FILE] | --bundle FILE)
                           [--from T] [--to T] [--gateway-key KEY] [--owner-key HEX] [--json]

A recipient signs its request here and submits it; anyone checks a document's signature
offline (with ``--signer``: that a given key, e.g. the owner key a device pinned, signed it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from osutil.cli import EXIT_OK
from protocol.audit import AuditBundle, verify_audit
from protocol.contract import DataRequest, Terms
from protocol.documents import sign_document, verify_document
from protocol.errors import ConfigError, MalformedRecord
from protocol.keys import SigningKey, load_recipient_key, load_signing_key, save_signing_key
from verifier.audit import audit_json, build_audit, print_audit
from verifier.client import DocumentClient
from verifier.documents import (
    as_text,
    describe,
    parse_device_ids,
    parse_hex,
    parse_streams,
    parse_time_ms,
)

COMMANDS = ("signing-key", "request", "document", "audit")


def add_commands(sub: Any) -> None:
    """Add the document commands to ``edgeproof-verify``'s subcommands."""
    key = sub.add_parser("signing-key", help="make a recipient's Ed25519 signing key",
                         description="Create an Ed25519 key file (mode 0600) to sign data "
                         "requests with; print its public key for the operator to register "
                         "(edgeproof-provision recipient register).")
    key.add_argument("--out", required=True, type=Path, metavar="FILE")
    request = sub.add_parser("request", help="sign and submit a data request",
                             description="Sign a data request with the recipient's signing "
                             "key for data sealed to its X25519 key, and submit it.")
    request.add_argument("--gateway", required=True, metavar="URL", help="http://host:port")
    request.add_argument("--signing-key", required=True, type=Path, metavar="FILE")
    request.add_argument("--recipient-key", required=True, type=Path, metavar="FILE",
                         help="the recipient's X25519 key file (only its public half is used)")
    request.add_argument("--device", action="append", default=[], metavar="ID")
    request.add_argument("--owner", action="append", default=[], metavar="OWNER_ID",
                         help="every device of this owner (32 hex, `edgeproof-owner show`)")
    request.add_argument("--field", action="append", required=True, metavar="STREAM:FIELDS",
                         help="fields asked for, e.g. climate:Cel (repeatable)")
    request.add_argument("--min-interval", type=int, default=0, metavar="S",
                         help="at most one reading per S seconds (default 0: every reading)")
    request.add_argument("--not-before", required=True, metavar="T", help="ms or ISO 8601")
    request.add_argument("--not-after", required=True, metavar="T", help="ms or ISO 8601")
    request.add_argument("--purpose", required=True, metavar="TEXT")
    request.add_argument("--reward", type=int, default=0, metavar="MICRO_PER_HOUR",
                         help="micro-credits per hour of data")
    request.add_argument("--json", action="store_true", help="machine-readable output")
    document = sub.add_parser("document", help="check a signed document offline",
                              description="Verify a request, consent, revocation or lapse "
                              "notice (raw COSE_Sign1 bytes, or hex) and print what it says "
                              "(a notice: its embedded consent verified and carrying the "
                              "lapse term). With --signer, also require that key to have "
                              "signed it.")
    document.add_argument("path", type=Path, metavar="FILE")
    document.add_argument("--signer", metavar="HEX",
                          help="the Ed25519 public key that must have signed it")
    document.add_argument("--json", action="store_true", help="machine-readable output")
    audit = sub.add_parser(
        "audit", help="who could decrypt which fields of a device, from which consent, until",
        description="For a device and a wall-time range, show every recipient that could "
        "decrypt its data, which fields at which rate, from which consent (and request), "
        "applied by which key epochs, until which revocation or expiry; proven from logged "
        "leaves with inclusion proofs into one signed checkpoint. From a gateway (--save "
        "writes the audit bundle) or offline from a bundle (--bundle).")
    source = audit.add_mutually_exclusive_group(required=True)
    source.add_argument("--gateway", metavar="URL", help="http://host:port")
    source.add_argument("--bundle", type=Path, metavar="FILE", help="an audit bundle (offline)")
    audit.add_argument("--device", metavar="ID", help="device id (32 hex; with --gateway)")
    audit.add_argument("--from", dest="from_time", metavar="T", default="0",
                       help="start, ms or ISO 8601 (default: the beginning)")
    audit.add_argument("--to", dest="to_time", metavar="T",
                       help="end, ms or ISO 8601 (default: now)")
    audit.add_argument("--gateway-key", metavar="KEY",
                       help="the gateway verifier key you trust (text or file)")
    audit.add_argument("--owner-key", metavar="HEX",
                       help="the owner's Ed25519 key you trust (else the bundle's, untrusted)")
    audit.add_argument("--save", type=Path, metavar="FILE", help="write the audit bundle")
    audit.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; VerificationError means a failed check (exit 1)."""
    if args.command == "signing-key":
        key = SigningKey.generate()
        save_signing_key(args.out, key)
        print(f"wrote {args.out} (mode 0600); public key {key.public_key.hex()}")
        return EXIT_OK
    if args.command == "request":
        return _request(args)
    if args.command == "audit":
        return _audit(args)
    raw = _read_document(args.path)
    signer = None if args.signer is None else parse_hex(args.signer, 32, "--signer key")
    doc = verify_document(raw, expected_signer=signer)
    _emit(args.json, describe(doc))
    return EXIT_OK


def _request(args: argparse.Namespace) -> int:
    signing = load_signing_key(args.signing_key)
    sealing = load_recipient_key(args.recipient_key).public_key
    owners = tuple(sorted({parse_hex(o, 16, "owner id") for o in args.owner}))
    terms = Terms(parse_streams(args.field), args.min_interval,
                  parse_time_ms(args.not_before), parse_time_ms(args.not_after))
    try:
        body = DataRequest(sealing, parse_device_ids(args.device), owners, terms,
                           args.purpose, args.reward)
    except MalformedRecord as exc:
        raise ConfigError(f"request: {exc.detail or exc}") from None
    doc = sign_document(body, signing, time.time_ns() // 1_000_000)
    index, duplicate = DocumentClient(args.gateway).submit(doc.raw)
    info = describe(doc, index)
    info["duplicate"] = duplicate
    _emit(args.json, info)
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    trusted = gateway_key_arg(args.gateway_key)
    if args.bundle is not None:
        bundle = AuditBundle.from_json(args.bundle.read_bytes())
    else:
        if args.device is None:
            raise ConfigError("audit --gateway needs --device ID")
        device = parse_device_ids([args.device])[0]
        to_ms = time.time_ns() // 1_000_000 if args.to_time is None else \
            parse_time_ms(args.to_time)
        client = DocumentClient(args.gateway)
        bundle = build_audit(client, device, parse_time_ms(args.from_time), to_ms,
                             trusted or client.verifier_key())
        if args.save is not None:
            args.save.write_text(bundle.to_json())
    owner = None if args.owner_key is None else parse_hex(args.owner_key, 32, "--owner-key")
    result = verify_audit(bundle, trusted, owner)
    if args.json:
        print(json.dumps(audit_json(result), sort_keys=True))
    else:
        print_audit(result, sys.stdout)
    return EXIT_OK


def gateway_key_arg(value: str | None) -> str | None:
    """A ``--gateway-key`` argument: the key text, or a file holding it."""
    if value is None:
        return None
    path = Path(value)
    if "+" not in value and path.is_file():
        return path.read_text(encoding="utf-8").strip()
    return value.strip()


def _read_document(path: Path) -> bytes:
    data = path.read_bytes()
    text = data.strip()
    try:
        return bytes.fromhex(text.decode("ascii")) if text and text[:2] != b"\xd2\x84" else data
    except (UnicodeDecodeError, ValueError):
        return data


def _emit(as_json: bool, info: dict[str, object]) -> None:
    print(json.dumps(info, sort_keys=True) if as_json else as_text(info))
