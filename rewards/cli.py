"""``edgeproof-wallet``: an owner's wallet for the credit its devices mined.

    edgeproof-wallet keygen --key FILE
    edgeproof-wallet bind --key FILE --owner-key FILE --gateway URL --rpc URL
    edgeproof-wallet status (--key FILE | --address 0x..) --gateway URL --rpc URL [--json]
    edgeproof-wallet claim --key FILE --gateway URL --rpc URL [--json]

The wallet key (secp256k1, mode 0600) is made here and never printed: only its address.
``bind`` signs the binding with the edgeproof owner key; ``status`` shows what the current
root entitles the address to, what it has claimed, what is claimable and the token
balance; ``claim`` sends the claim (signed with the wallet key) and shows the balance after.
Exit status (docs/CLI.md): 0 done, 1 refused or failed, 2 usage error or unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from osutil.cli import EXIT_OK, EXIT_USAGE, add_version, run_command
from osutil.jsonrpc import JsonRpc
from protocol.errors import TransportError
from protocol.keys import load_owner_key
from rewards import wallet
from rewards.ethkey import load_eth_key, new_eth_key

PROG = "edgeproof-wallet"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="An owner's wallet: bind it to the owner identity, see and "
        "claim the reward tokens its devices' usage credit earned.",
        epilog="Exit status: 0 done, 1 refused or failed, 2 usage error or unreachable "
               "(docs/CLI.md).")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keygen = sub.add_parser("keygen", help="make a wallet key (mode 0600); print its address",
                            description="Make a new secp256k1 wallet key in FILE (mode 0600, "
                            "never overwritten) and print its address, never the key.")
    keygen.add_argument("--key", required=True, type=Path, metavar="FILE")
    bind = sub.add_parser("bind", help="bind the wallet to the owner identity (once, final)",
                          description="Sign a wallet binding with the owner key and submit it "
                          "to the gateway, which logs it. An owner's first binding is final.")
    bind.add_argument("--key", required=True, type=Path, metavar="FILE", help="wallet key")
    bind.add_argument("--owner-key", required=True, type=Path, metavar="FILE",
                      help="the edgeproof owner key file (mode 0600)")
    _endpoints(bind)
    status = sub.add_parser("status", help="claimable, claimed and balance of the wallet",
                            description="Show the amount the distributor's current root "
                            "entitles the wallet to (the gateway's proof checked against the "
                            "root on chain), what it claimed, what is claimable, its balance.")
    who = status.add_mutually_exclusive_group(required=True)
    who.add_argument("--key", type=Path, metavar="FILE", help="wallet key")
    who.add_argument("--address", metavar="0x..", help="any address (no key needed)")
    _endpoints(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    claim = sub.add_parser("claim", help="claim what is claimable into the wallet",
                           description="Send the claim for the wallet's cumulative amount "
                           "(signed with the wallet key) and show the balance after.")
    claim.add_argument("--key", required=True, type=Path, metavar="FILE", help="wallet key")
    _endpoints(claim)
    claim.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _endpoints(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", required=True, metavar="URL", help="http://host:port")
    parser.add_argument("--rpc", required=True, metavar="URL", help="Ethereum JSON-RPC URL")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    return run_command(PROG, lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        print(new_eth_key(args.key))
        return EXIT_OK
    rpc = JsonRpc(args.rpc, timeout_s=wallet.TIMEOUT_S)
    try:
        return _run(args, rpc)
    except TransportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        rpc.close()


def _run(args: argparse.Namespace, rpc: JsonRpc) -> int:
    if args.command == "bind":
        _, address = load_eth_key(args.key)
        owner = load_owner_key(args.owner_key)
        index = wallet.bind(args.gateway, owner.signing, address, rpc.chain_id(),
                            int(time.time() * 1000))
        print(f"bound {address} to owner {owner.owner_id.hex()} (log leaf {index})")
        return EXIT_OK
    if args.command == "status":
        address = args.address or load_eth_key(args.key)[1]
        _show(wallet.state(args.gateway, rpc, address), args.json, None)
        return EXIT_OK
    key, address = load_eth_key(args.key)
    after, tx_hash = wallet.claim(args.gateway, rpc, key, address)
    _show(after, args.json, tx_hash)
    return EXIT_OK


def _show(state: wallet.WalletState, as_json: bool, tx_hash: str | None) -> None:
    shown = state.as_json() | ({"claim_tx": tx_hash} if tx_hash else {})
    if as_json:
        print(json.dumps(shown))
        return
    for name, value in shown.items():
        print(f"{name}: {value}")
