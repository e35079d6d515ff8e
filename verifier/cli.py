"""``edgeproof-verify``: check records offline, trusting nobody; decrypt granted streams.

    edgeproof-verify record --gateway URL (--leaf N | --file RECORD) [--gateway-key KEY]
                            [--rpc URL] [--wait [SECONDS]] [--save BUNDLE] [--json]
    edgeproof-verify bundle BUNDLE [--gateway-key KEY] [--json]          (no network)
    edgeproof-verify records --gateway URL --device ID [--key FILE] [--stream S ...]
                             [--json] [--follow [--interval S]]
    edgeproof-verify decrypt --gateway URL --device ID --key FILE [--stream S ...] [--json]
    edgeproof-verify payout --gateway URL --rpc URL [--epoch N] [--gateway-key KEY]
                            [--no-scan] [--json]
    edgeproof-verify signing-key | request | document ...   (verifier/contract_cli.py)

Exit status (docs/CLI.md) 0 only when every requested check passed; 1 when a check failed
(or the gateway refused a submitted document, with its reason code); 2 for bad usage
(including a ``--gateway``/``--rpc`` that is no http(s) URL and a ``--gateway-key`` that is
no verifier key nor a file holding one), when something could not be fetched, or when the
record is logged but no checkpoint (with ``--rpc``: no anchored checkpoint) covers it yet
(``--wait`` waits for one); 130 when interrupted (how ``records --follow`` ends).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osutil.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, add_version, run_command
from osutil.jsonrpc import JsonRpc
from protocol.bundle import EthereumAnchor, ProofBundle, RotationProof, verify_bundle
from protocol.checkpoint import Checkpoint, checkpoint_hash
from protocol.errors import (
    ConfigError,
    EdgeproofError,
    MalformedRecord,
    RejectedByPeer,
    VerificationError,
)
from protocol.keys import RecipientKey, load_recipient_key
from protocol.note import NoteVerifier
from protocol.signed import parse_signed_record
from verifier import contract_cli
from verifier.client import (
    TIMEOUT_S,
    DocumentClient,
    GatewayClient,
    LoggedRecord,
    anchoring_transaction,
    check_url,
)
from verifier.payout import verify_payout
from verifier.quality import covering_attestations
from verifier.recipient import open_records
from verifier.records import Follow, as_line, show_records


class UsageError(EdgeproofError):
    """Bad command-line input."""


class NotYetCovered(EdgeproofError):
    """The record is logged, but no (anchored) checkpoint covers it yet: not a failed check."""


DEFAULT_WAIT_S = 120.0  # twice the gateway's default checkpoint interval
MAX_WAIT_S = 86_400.0
POLL_S = 0.5
FOLLOW_S = 2.0


@dataclass(frozen=True)
class Waiting:
    """How long ``record`` waits for a covering checkpoint (0: not at all); clocks injectable."""

    seconds: float = 0.0
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= MAX_WAIT_S:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_WAIT_S:.0f}] seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeproof-verify",
        description="Verify edgeproof records, proofs, checkpoints and anchors; "
                    "show a device's readings; decrypt the streams a recipient was granted.",
        epilog="Exit status: 0 every check passed, 1 a check failed, 2 usage error or "
               "nothing to check yet (unreachable, not yet covered), 130 interrupted "
               "(docs/CLI.md).")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    record = sub.add_parser(
        "record", help="verify one logged record against a gateway",
        description="Fetch a logged record, its device key, a covering checkpoint and an "
        "inclusion proof (and with --rpc the anchoring transaction) and check each. Pin the "
        "gateway's verifier key with --gateway-key; without it the key is fetched from the "
        "gateway being checked and reported as untrusted.")
    which = record.add_mutually_exclusive_group(required=True)
    which.add_argument("--leaf", type=int, metavar="N", help="leaf index in the gateway's log")
    which.add_argument("--file", type=Path, metavar="RECORD",
                       help="a signed record (raw COSE_Sign1 bytes, or hex)")
    record.add_argument("--gateway", required=True, metavar="URL", help="http://host:port")
    record.add_argument("--gateway-key", metavar="KEY",
                        help="the gateway verifier key you trust (text, or a file holding it, "
                             "e.g. from `edgeproof-gateway verifier-key`); without it the "
                             "key is fetched from the gateway itself and reported as untrusted")
    record.add_argument("--rpc", metavar="URL",
                        help="Ethereum JSON-RPC URL: also check the checkpoint's anchor")
    record.add_argument("--wait", type=_wait_seconds, nargs="?", const=DEFAULT_WAIT_S,
                        metavar="SECONDS",
                        help="if no checkpoint covers the record yet, poll the gateway until "
                             f"one does (default {DEFAULT_WAIT_S:.0f} s), then verify")
    record.add_argument("--save", type=Path, metavar="BUNDLE",
                        help="write a proof bundle that `bundle` can verify offline")
    record.add_argument("--json", action="store_true", help="machine-readable output")

    bundle = sub.add_parser(
        "bundle", help="verify a saved proof bundle with no network",
        description="Check a proof bundle written by `record --save` offline. Pin the "
        "gateway's verifier key with --gateway-key; without it the key the bundle carries "
        "is used and reported as untrusted.")
    bundle.add_argument("path", type=Path, metavar="BUNDLE", help="the bundle's JSON file")
    bundle.add_argument("--gateway-key", metavar="KEY",
                        help="the gateway verifier key you trust (text, or a file holding it)")
    bundle.add_argument("--json", action="store_true", help="machine-readable output")

    records = sub.add_parser(
        "records", help="show a device's readings with their times (--follow for new ones)",
        description="Print a device's logged readings, one line each: sequence number, wall "
        "time (ISO 8601, UTC), whether the device's clock was synchronised, stream, values. "
        "Every record's signature is checked first. Plaintext streams need no key; sealed "
        "ones open with --key and otherwise show as `sealed (no key)`. --follow keeps "
        "polling the gateway for new records until Ctrl-C.")
    _device_args(records)
    records.add_argument("--key", type=Path, metavar="FILE",
                         help="a recipient's X25519 key file (mode 0600): open sealed streams")
    records.add_argument("--json", action="store_true",
                         help="one JSON object per line (JSON Lines)")
    records.add_argument("--follow", action="store_true",
                         help="keep printing new records as they are logged, until Ctrl-C")
    records.add_argument("--interval", type=_wait_seconds, default=FOLLOW_S, metavar="S",
                         help=f"with --follow, poll this often (default {FOLLOW_S:g} s)")

    decrypt = sub.add_parser(
        "decrypt", help="decrypt a device's records with a recipient key",
        description="Verify a device's records and open the sealed streams the recipient "
        "key was granted (see `records` for readings with their times and no key needed).")
    _device_args(decrypt)
    decrypt.add_argument("--key", required=True, type=Path, metavar="FILE",
                         help="the recipient's X25519 key file (mode 0600)")
    decrypt.add_argument("--json", action="store_true", help="one JSON array of records")

    payout = sub.add_parser(
        "payout", help="recompute a payout epoch from the log and compare it with the chain",
        description="Fetch a payout epoch (the gateway-signed document, the checkpoint it "
        "was computed at and its balances table) and the owners' wallet bindings, check every "
        "signature, rebuild the distribution tree and compare its root and total with the "
        "epoch and with the distributor's RootPosted event on chain. A consent-gated epoch's "
        "leaves are each proven in its checkpoint, and the log below it is read leaf by leaf "
        "so that no listing can hide one.")
    payout.add_argument("--gateway", required=True, metavar="URL", help="http://host:port")
    payout.add_argument("--rpc", required=True, metavar="URL", help="Ethereum JSON-RPC URL")
    payout.add_argument("--epoch", type=int, metavar="N",
                        help="the epoch to check (default: the latest posted)")
    payout.add_argument("--gateway-key", metavar="KEY",
                        help="the gateway verifier key you trust (text, or a file holding it)")
    payout.add_argument("--no-scan", dest="scan", action="store_false",
                        help="prove each leaf used by an inclusion proof, without reading "
                        "the whole log: faster, but a leaf the gateway leaves out of its "
                        "listings goes unnoticed")
    payout.add_argument("--json", action="store_true", help="machine-readable output")
    contract_cli.add_commands(sub)
    return parser


def _device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", required=True, metavar="URL", help="http://host:port")
    parser.add_argument("--device", required=True, metavar="ID", help="device id (32 hex)")
    parser.add_argument("--stream", action="append", metavar="S",
                        help="only this stream (repeatable)")


def main(argv: Sequence[str] | None = None, waiting: Waiting | None = None) -> int:
    """Run the command line; return the exit status. ``waiting`` injects clocks (tests)."""
    return run_command("edgeproof-verify", lambda: _main(argv, waiting))


def _main(argv: Sequence[str] | None, waiting: Waiting | None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_options(args)
        if args.command == "bundle":
            return _cmd_bundle(args)
        if args.command == "record":
            base = waiting or Waiting()
            return _cmd_record(args, Waiting(args.wait or 0.0, base.monotonic, base.sleep))
        if args.command == "records":
            base = waiting or Waiting()
            return _cmd_records(args, Follow(args.follow, args.interval, base.sleep))
        if args.command == "payout":
            return _cmd_payout(args)
        if args.command in contract_cli.COMMANDS:
            return contract_cli.run(args)
        return _cmd_decrypt(args)
    except (VerificationError, RejectedByPeer) as exc:  # a refusal: the gateway's check failed
        print(f"edgeproof-verify: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (EdgeproofError, OSError) as exc:
        print(f"edgeproof-verify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _check_options(args: argparse.Namespace) -> None:
    """Check the URLs and the gateway key given on the command line before anything is
    fetched: they are the user's input, so a typo is bad usage (ConfigError, exit 2) and
    never a failed check (exit 1). A bad key inside a bundle stays a failed check.

    ``args.gateway_key`` is replaced by the key text (read from its file if one was named).
    """
    for option, what in (("gateway", "--gateway"), ("rpc", "--rpc")):
        url = getattr(args, option, None)
        if url is not None:
            check_url(url, what)
    if getattr(args, "gateway_key", None) is not None:
        args.gateway_key = _gateway_key_option(args.gateway_key)


def _gateway_key_option(value: str) -> str:
    """A ``--gateway-key``: verifier key text, or a file holding it (as
    :func:`verifier.contract_cli.gateway_key_arg` reads it); the key text, once it parses
    as a gateway verifier key. ConfigError naming the option otherwise."""
    text = value.strip()
    path = Path(value)
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError):  # a name too long or with a NUL: no file, so key text
        is_dir = is_file = False
    if "+" not in value:
        if is_dir:
            raise ConfigError(f"--gateway-key {value!r} is a directory, not a key or a file "
                              "holding one")
        if is_file:
            try:
                text = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(f"--gateway-key {value!r}: cannot read it: {why}") from None
    try:
        NoteVerifier.from_text(text)
    except MalformedRecord as exc:
        raise ConfigError(f"--gateway-key {value!r} is not a gateway verifier key "
                          f"(name+id+base64, from `edgeproof-gateway verifier-key`) nor a "
                          f"file holding one: {exc.reason}") from None
    return text


def _print_report(passed: list[tuple[str, str]], extra: dict[str, object],
                  as_json: bool, untrusted_key_from: str | None) -> None:
    """Print the passed checks. ``untrusted_key_from`` says where the gateway key came
    from when none was pinned (None: --gateway-key was given and matched): then every
    signature check rests on a key nobody vouched for, and the output says so."""
    if untrusted_key_from is not None:
        passed = [(name, detail) for name, detail in passed if name != "gateway key"]
    if as_json:
        trust = {} if untrusted_key_from is None else {
            "gateway_key": {"trusted": False, "source": untrusted_key_from}}
        print(json.dumps({"ok": True, "checks": [{"check": name, "detail": detail}
                                                  for name, detail in passed],
                          **trust, **extra}))
        return
    if untrusted_key_from is not None:
        print(f"warn  gateway key: UNTRUSTED, taken from {untrusted_key_from}; pin the key "
              "you trust with --gateway-key")
    for name, detail in passed:
        print(f"ok  {name}: {detail}")
    for key, value in extra.items():
        print(f"--  {key}: {value}")
    print("all requested checks passed" if untrusted_key_from is None else
          "all requested checks passed, against a gateway key that was not pinned")


def _cmd_payout(args: argparse.Namespace) -> int:
    client = DocumentClient(args.gateway)
    trusted = contract_cli.gateway_key_arg(args.gateway_key)
    gateway_key = trusted or client.verifier_key()
    rpc = JsonRpc(args.rpc, timeout_s=TIMEOUT_S)
    try:
        report = verify_payout(client, gateway_key, rpc, args.epoch, scan=args.scan)
    finally:
        rpc.close()
    checks = [("epoch document", f"epoch {report['epoch']} signed by the gateway key"),
              ("checkpoint", f"size {report['checkpoint_size']} commits to its balances"),
              ("tree", f"recomputed root {report['root']} ({report['owners']} owners)"),
              *([("leaves", "every leaf used is in the checkpoint, consistent with the "
                  "latest" + ("; no listing hides one (log scanned)"
                              if report["log_scanned"] else " (listings not scanned)"))]
                if report["consent_gated"] else []),
              ("chain", f"RootPosted of epoch {report['epoch']} on the distributor "
                        f"{report['distributor']} holds the same root and total"),
              ("events", f"read from the distributor's deployment block "
                         f"{report['distributor_block']} (its creation found there)"
                         if report["distributor_block"] is not None else
                         "read from block 0 (the epoch states no deployment block)")]
    _print_report(checks, report, args.json, None if trusted else f"{args.gateway}")
    return EXIT_OK


def _cmd_bundle(args: argparse.Namespace) -> int:
    try:
        text = args.path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{args.path}: {exc.strerror}") from None
    bundle = ProofBundle.from_json(text)
    trusted = contract_cli.gateway_key_arg(args.gateway_key)
    report = verify_bundle(bundle, trusted)
    _print_report(report.passed, {"offline": True}, args.json,
                  None if trusted else f"the bundle {args.path}")
    return EXIT_OK


def _cmd_record(args: argparse.Namespace, waiting: Waiting) -> int:
    client = DocumentClient(args.gateway)
    logged = _find_record(client, args.leaf, args.file)
    trusted = contract_cli.gateway_key_arg(args.gateway_key)
    gateway_key = trusted or client.verifier_key()
    keys = client.device_keys(logged.device_id)
    extra: dict[str, object] = {}
    note, size, info = _covering_checkpoint(client, args.rpc is not None, logged.index,
                                            gateway_key, waiting)
    anchor = None if info is None else _anchor(args.rpc, note, info, extra)
    bundle = ProofBundle(
        record=logged.record, device_public_key=keys[0][1],
        leaf_index=logged.index, tree_size=size,
        inclusion_proof=tuple(client.inclusion_proof(logged.index, size)),
        checkpoint=note, gateway_key=gateway_key, anchor=anchor,
        rotations=_rotations(client, logged, keys, size),
        attestations=covering_attestations(client, logged, size))
    report = verify_bundle(bundle, trusted)
    if report.verdicts and args.json:
        extra["verdicts"] = report.verdicts
    if args.save:
        args.save.write_text(bundle.to_json())
        extra["bundle"] = str(args.save)
    _print_report(report.passed, extra, args.json,
                  None if trusted else f"the live gateway at {client.base}")
    return EXIT_OK


def _rotations(client: GatewayClient, logged: LoggedRecord, keys: list[tuple[int, bytes]],
               size: int) -> tuple[RotationProof, ...]:
    """The device's key-rotation records before ``logged``, each with its inclusion proof
    in the tree of ``size`` leaves, so the bundle proves the key that signed the record.

    A key the gateway lists from seq ``f > 0`` was named by the rotation record at seq
    ``f - 1`` (docs/PROTOCOL.md §3.3). Raises VerificationError if the gateway does not
    serve that record, or it was logged after the checkpoint (it cannot be proved there).
    """
    proofs = []
    for from_seq, _ in keys[1:]:
        if from_seq > logged.seq:
            break
        found = [r for r in client.device_records(logged.device_id, from_seq - 2, 1)
                 if r.seq == from_seq - 1]
        if not found:
            raise VerificationError(f"record signature: the gateway serves no rotation "
                                    f"record at seq {from_seq - 1}")
        if found[0].index >= size:
            raise VerificationError(f"record signature: the rotation at seq {from_seq - 1} "
                                    f"is not covered by the checkpoint of size {size}")
        proofs.append(RotationProof(found[0].record, found[0].index,
                                    tuple(client.inclusion_proof(found[0].index, size))))
    return tuple(proofs)


def _find_record(client: GatewayClient, leaf: int | None, path: Path | None) -> LoggedRecord:
    if leaf is not None:
        if leaf < 0:
            raise UsageError("--leaf must be >= 0")
        return client.leaf(leaf)
    assert path is not None
    raw = _read_record_file(path)
    message, record = parse_signed_record(raw)
    for logged in client.device_records(message.kid, record.seq - 1, 1):
        if logged.seq == record.seq:
            if logged.record != raw:
                raise VerificationError("record: the gateway logged other bytes under this "
                                        "device and sequence number")
            return logged
    raise VerificationError("record: not in the gateway's log")


def _read_record_file(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    text = raw.strip()
    if text and all(c in b"0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text.decode("ascii"))
    return raw


def _covering_checkpoint(client: GatewayClient, anchored: bool, index: int,
                         gateway_key: str, waiting: Waiting
                         ) -> tuple[str, int, dict[str, Any] | None]:
    """The signed note to prove leaf ``index`` against, its size, and with ``anchored`` the
    gateway's anchor information: the latest checkpoint, or the latest anchored one.

    A record logged after that checkpoint is not covered yet; with ``waiting.seconds`` the
    gateway is polled until a covering one appears. Raises NotYetCovered (one line saying
    so, and how to wait) when none covers it (in time), VerificationError if a note's
    signature fails, TransportError or MalformedRecord when fetching fails.
    """
    verifier = NoteVerifier.from_text(gateway_key)
    what = "an anchored checkpoint" if anchored else "a checkpoint"
    deadline = waiting.monotonic() + waiting.seconds
    while True:
        info = _anchor_info(client) if anchored else None
        note = client.checkpoint() if not anchored else None if info is None else info["note"]
        size = None if note is None else Checkpoint.from_note(note, verifier).size
        if note is not None and size is not None and size > index:
            return note, size, info
        latest = "none yet" if size is None else f"latest size {size}"
        if waiting.seconds <= 0:
            raise NotYetCovered(f"leaf {index} is logged but not yet covered by {what} "
                                f"({latest}); rerun with --wait to wait for one")
        left = deadline - waiting.monotonic()
        if left <= 0:
            raise NotYetCovered(f"leaf {index} is still not covered by {what} after "
                                f"waiting {waiting.seconds:g} s ({latest})")
        waiting.sleep(min(POLL_S, left))


def _anchor_info(client: GatewayClient) -> dict[str, Any] | None:
    """The gateway's latest Ethereum anchor (None: none yet), with note and transaction."""
    info = client.anchor(None)
    if info is None:
        return None
    if info.get("backend") != "ethereum":
        raise VerificationError("anchor: the gateway reports no Ethereum anchor")
    if not isinstance(info.get("note"), str) or not isinstance(info.get("tx_hash"), str):
        raise MalformedRecord("bad_response", "anchor without note or transaction hash")
    return info


def _anchor(rpc: str, note: str, info: dict[str, Any],
            extra: dict[str, object]) -> EthereumAnchor:
    """The transaction that anchored ``note``, as the chain at ``rpc`` reports it."""
    tx_hash = str(info["tx_hash"])
    chain = JsonRpc(rpc, timeout_s=TIMEOUT_S)
    try:
        tx_input, block, status = anchoring_transaction(chain, tx_hash)
        if status != 1:
            raise VerificationError(f"anchor: transaction {tx_hash} failed on chain")
        extra["anchored_checkpoint_hash"] = checkpoint_hash(note).hex()
        return EthereumAnchor(chain.chain_id(), tx_hash, block, tx_input)
    finally:
        chain.close()


def _device_id(text: str) -> bytes:
    try:
        device_id = bytes.fromhex(text)
    except ValueError:
        raise UsageError("--device must be the 32-hex-digit device id") from None
    if len(device_id) != 16:
        raise UsageError("--device must be the 32-hex-digit device id")
    return device_id


def _cmd_records(args: argparse.Namespace, follow: Follow) -> int:
    device_id = _device_id(args.device)
    recipient: RecipientKey | None = None if args.key is None else load_recipient_key(args.key)
    client = GatewayClient(args.gateway)
    try:
        errors = show_records(client, device_id, recipient,
                              streams=set(args.stream) if args.stream else None,
                              json_lines=args.json, follow=follow, out=sys.stdout)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if errors:
        print(f"edgeproof-verify: FAILED: {errors} record(s) did not verify (shown as error)",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_decrypt(args: argparse.Namespace) -> int:
    device_id = _device_id(args.device)
    recipient = load_recipient_key(args.key)
    client = GatewayClient(args.gateway)
    records = client.all_device_records(device_id)
    opened = open_records(records, client.device_keys(device_id), recipient,
                          set(args.stream) if args.stream else None)
    if args.json:
        print(json.dumps([{"seq": o.seq, "stream": o.stream, "wall_ms": o.wall_ms,
                           "clock_synced": o.clock_synced, "status": o.status,
                           "detail": o.detail,
                           "values": [[m.mantissa, m.exponent, m.unit] for m in o.values]}
                          for o in opened]))
    else:
        for o in opened:  # the same lines as `records`: with the wall time and clock state
            print(as_line(o))
    return 1 if any(o.status == "error" for o in opened) else 0


if __name__ == "__main__":
    sys.exit(main())
