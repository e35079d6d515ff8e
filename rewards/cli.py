"""``edgeproof-owner wallet``: an owner's wallet for the credit its devices mined.

    edgeproof-owner wallet keygen --wallet-key FILE
    edgeproof-owner wallet bind --key OWNER_KEY --wallet-key FILE --gateway URL --rpc URL
    edgeproof-owner wallet status (--wallet-key FILE | --address 0x..) --gateway URL --rpc URL
    edgeproof-owner wallet claim --wallet-key FILE --gateway URL --rpc URL [--json]

The wallet key (secp256k1, mode 0600) is made here and never printed: only its address.
``bind`` signs the binding with the edgeproof owner key; ``status`` shows what the current
root entitles the address to, what it has claimed, what is claimable and the token
balance; ``claim`` sends the claim (signed with the wallet key) and shows the balance after.
Exit status (docs/CLI.md): 0 done, 1 refused or failed, 2 usage error or unreachable. The
owner tool (owner/cli.py) adds these commands with :func:`add_commands` and runs them with
:func:`run`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from osutil.cli import EXIT_OK, EXIT_USAGE
from osutil.jsonrpc import JsonRpc
from protocol.errors import TransportError
from protocol.keys import load_owner_key
from rewards import wallet
from rewards.ethkey import load_eth_key, new_eth_key

PROG = "edgeproof-owner"


def add_commands(sub: Any) -> None:
    """Add ``wallet`` with its subcommands to an owner tool's subparsers."""
    group = sub.add_parser("wallet", help="the wallet the owner's reward tokens are paid to",
                           description="Make a wallet key, bind it to the owner identity, see "
                           "and claim the reward tokens the owner's devices' usage earned.")
    wallet_sub = group.add_subparsers(dest="wallet_command", required=True, metavar="COMMAND")
    keygen = wallet_sub.add_parser(
        "keygen", help="make a wallet key (mode 0600); print its address",
        description="Make a new secp256k1 wallet key in FILE (mode 0600, never overwritten) "
        "and print its address, never the key.")
    _wallet_key(keygen)
    bind = wallet_sub.add_parser(
        "bind", help="bind the wallet to the owner identity (once, final)",
        description="Sign a wallet binding with the owner key and submit it to the gateway, "
        "which logs it. An owner's first binding is final.")
    bind.add_argument("--key", required=True, type=Path, metavar="FILE",
                      help="the owner key file (mode 0600)")
    _wallet_key(bind)
    _endpoints(bind)
    status = wallet_sub.add_parser(
        "status", help="claimable, claimed and balance of the wallet",
        description="Show the amount the distributor's current root entitles the wallet to "
        "(the gateway's proof checked against the root on chain), what it claimed, what is "
        "claimable, and its token balance, in base units.")
    who = status.add_mutually_exclusive_group(required=True)
    who.add_argument("--wallet-key", type=Path, metavar="FILE", help="the wallet key file")
    who.add_argument("--address", metavar="0x..", help="any address (no key needed)")
    _endpoints(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    claim = wallet_sub.add_parser(
        "claim", help="claim what is claimable into the wallet",
        description="Send the claim for the wallet's cumulative amount (signed with the "
        "wallet key) and show the state after.")
    _wallet_key(claim)
    _endpoints(claim)
    claim.add_argument("--json", action="store_true", help="machine-readable output")


def _wallet_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wallet-key", required=True, type=Path, metavar="FILE",
                        help="the wallet key file (secp256k1, mode 0600)")


def _endpoints(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", required=True, metavar="URL", help="http://host:port")
    parser.add_argument("--rpc", required=True, metavar="URL", help="Ethereum JSON-RPC URL")


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``wallet`` command; return the exit status."""
    if args.wallet_command == "keygen":
        print(new_eth_key(args.wallet_key))
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
    if args.wallet_command == "bind":
        _, address = load_eth_key(args.wallet_key)
        owner = load_owner_key(args.key)
        index = wallet.bind(args.gateway, owner.signing, address, rpc.chain_id(),
                            int(time.time() * 1000))
        print(f"bound {address} to owner {owner.owner_id.hex()} (log leaf {index})")
        return EXIT_OK
    if args.wallet_command == "status":
        address = args.address or load_eth_key(args.wallet_key)[1]
        _show(wallet.state(args.gateway, rpc, address), args.json, None)
        return EXIT_OK
    key, address = load_eth_key(args.wallet_key)
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
