"""``edgeproof-gateway``: run the gateway, make its key, print its verifier key, dump OpenAPI,
deploy the payout contracts (``chain deploy``).

Thin by design: parse arguments, call the library, turn expected errors into one line on
stderr and an exit code of the shared convention (docs/CLI.md): 0 ok, 1 runtime failure,
2 usage or configuration error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import GatewayConfig, load_config
from gateway.gatewaykey import GatewayKey, load_gateway_key, save_gateway_key
from osutil.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_log_level, add_version, run_command
from osutil.lockfile import hold_lock
from osutil.lograte import service_logging
from osutil.signals import SignalRelay
from protocol.errors import ConfigError, EdgeproofError, MalformedRecord

TOKEN_SUPPLY = 10**9 * 10**18  # rewards.contracts.TOKEN_SUPPLY (checked by a test)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeproof-gateway",
        description="The edgeproof ledger gateway: MQTT ingest, verification, Merkle log, "
                    "receipts, checkpoints and the HTTP API.",
        epilog="Exit status: 0 ok, 1 runtime failure, 2 usage or configuration error, "
               "130 interrupted (docs/CLI.md).")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the gateway service (systemd runs this)",
                         description="Run the gateway: MQTT ingest, verification, the Merkle "
                         "log, receipts, checkpoints, anchors and the HTTP API, until SIGTERM "
                         "or Ctrl-C.")
    run.add_argument("--config", type=Path, required=True, help="gateway TOML config file")
    add_log_level(run, "info")
    keygen = sub.add_parser("keygen", help="make the gateway's signing key (C2SP note key)",
                            description="Create the gateway's Ed25519 signing key (a C2SP "
                            "signed-note key, file mode 0600) and print its verifier key.")
    keygen.add_argument("--name", required=True,
                        help="key name = checkpoint origin, e.g. gateway.example.org/edgeproof")
    keygen.add_argument("--out", type=Path, required=True, help="private key file (mode 0600)")
    keygen.add_argument("--json", action="store_true", help="print JSON")
    verifier = sub.add_parser("verifier-key", help="print the verifier key of the config's key",
                              description="Print the verifier key (name+id+public key) of "
                              "the signing key the config names: what verifiers pin.")
    verifier.add_argument("--config", type=Path, required=True, help="gateway TOML config file")
    verifier.add_argument("--json", action="store_true", help="print JSON")
    openapi = sub.add_parser("openapi", help="write the API's OpenAPI description",
                             description="Write the HTTP API's OpenAPI 3 description (JSON).")
    openapi.add_argument("--out", type=Path, help="file to write (default: stdout)")
    chain = sub.add_parser("chain", help="the payout contracts on an Ethereum node",
                           description="Deploy the reward token and the distributor the "
                           "gateway posts payout roots to (docs/OPERATIONS.md §12).")
    chain_sub = chain.add_subparsers(dest="chain_command", required=True, metavar="COMMAND")
    deploy = chain_sub.add_parser(
        "deploy", help="deploy the reward token and the distributor; print the [payout] config",
        description="Deploy the reward token (its supply minted to --token-holder) and the "
        "cumulative Merkle distributor, owned by the gateway's chain key (the [payout] "
        "key_file: the only key that can post roots), both sent from that key; print (or "
        "write to --out) the [payout] section that names them, with the deployment block.")
    deploy.add_argument("--rpc", required=True, metavar="URL", help="Ethereum JSON-RPC URL")
    deploy.add_argument("--key", required=True, type=Path, metavar="FILE",
                        help="the gateway's chain key file (64 hex digits, mode 0600): pays "
                        "the gas and owns the distributor")
    deploy.add_argument("--token-holder", metavar="ADDRESS",
                        help="who receives the token supply (default: the key's address)")
    deploy.add_argument("--supply", type=int, default=TOKEN_SUPPLY, metavar="BASE_UNITS",
                        help=f"token supply in base units (default {TOKEN_SUPPLY})")
    deploy.add_argument("--out", type=Path, metavar="FILE",
                        help="write the [payout] snippet here (never overwritten; default: "
                        "stdout)")
    deploy.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    return run_command("edgeproof-gateway", lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "verifier-key":
            return _verifier_key(args)
        if args.command == "chain":
            return _chain_deploy(args)
        return _openapi(args)
    except ConfigError as exc:
        print(f"edgeproof-gateway: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EdgeproofError as exc:
        print(f"edgeproof-gateway: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _keygen(args: argparse.Namespace) -> int:
    try:
        key = GatewayKey.generate(args.name)
    except MalformedRecord:
        print(f"edgeproof-gateway: error: --name {args.name!r} is not a valid key name "
              "(printable, no spaces or '+')", file=sys.stderr)
        return EXIT_USAGE
    save_gateway_key(args.out, key)
    _print_key(key.verifier_text(), key.name, args.json)
    return EXIT_OK


def _verifier_key(args: argparse.Namespace) -> int:
    key = load_gateway_key(load_config(args.config).key_file)
    _print_key(key.verifier_text(), key.name, args.json)
    return EXIT_OK


def _print_key(verifier: str, name: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"name": name, "verifier_key": verifier}))
    else:
        print(verifier)


def _chain_deploy(args: argparse.Namespace) -> int:
    # Imported here, not at the top: the gateway that `run` starts never loads the
    # Ethereum libraries unless payouts are configured, and its verify pool's forkserver
    # imports this module again (as the parent's __main__) before it forks each worker.
    from osutil.jsonrpc import JsonRpc  # noqa: PLC0415
    from rewards.contracts import deploy_payout, payout_snippet  # noqa: PLC0415
    from rewards.ethkey import load_eth_key  # noqa: PLC0415
    from rewards.tree import checked_address  # noqa: PLC0415

    key, address = load_eth_key(args.key)
    try:
        holder = checked_address(args.token_holder or address)
    except ValueError as exc:
        raise ConfigError(f"--token-holder: {exc}") from None
    if not 0 < args.supply < 2**256:
        raise ConfigError("--supply must be a positive uint256")
    if args.out is not None and args.out.exists():
        raise ConfigError(f"--out {args.out}: exists; it is never overwritten")
    rpc = JsonRpc(args.rpc, timeout_s=30.0)
    try:
        deployed = deploy_payout(rpc, key, rpc.chain_id(), holder=holder, owner=address,
                                 supply=args.supply)
    except RuntimeError as exc:  # node or solc missing, or the contracts do not compile
        raise ConfigError(str(exc)) from None
    finally:
        rpc.close()
    snippet = payout_snippet(deployed, args.rpc, args.key.resolve())
    if args.out is not None:
        try:
            with args.out.open("x", encoding="utf-8") as out:
                out.write(snippet)
        except OSError as exc:
            raise ConfigError(f"--out {args.out}: {exc.strerror}") from None
    if args.json:
        print(json.dumps({"chain_id": deployed.chain_id, "token": deployed.token,
                          "distributor": deployed.distributor,
                          "distributor_block": deployed.distributor_block,
                          "owner": address, "token_holder": holder}))
    elif args.out is None:
        sys.stdout.write(snippet)
    else:
        print(f"distributor {deployed.distributor} (block {deployed.distributor_block}), "
              f"token {deployed.token}; [payout] written to {args.out}")
    return EXIT_OK


def _openapi(args: argparse.Namespace) -> int:
    from gateway.openapi import openapi_text  # noqa: PLC0415 - FastAPI only when asked

    text = openapi_text()
    if args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--out {args.out}: cannot write ({exc.strerror})") from None
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    # One failure repeated thousands of times a second must not flood the journal; main()
    # may run many times in one process (tests): the logging set up here ends with the run.
    with service_logging(args.log_level):
        config = load_config(args.config)
        make_data_dir(config.data_dir)
        # One gateway per data dir: two would append to the same log. Held until exit.
        lock = hold_lock(config.data_dir, "gateway")
        try:
            _run_locked(config)
        finally:
            lock.release()
    return EXIT_OK


def make_data_dir(data_dir: Path) -> None:
    """Create ``gateway.data_dir`` if needed; ConfigError naming the key and the reason
    (a file in the way, a place no directory can be made) instead of a traceback."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"gateway.data_dir: {data_dir} exists and is not a directory"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"gateway.data_dir: cannot create {data_dir} ({exc.strerror})"
                          ) from None
    if not data_dir.is_dir():
        raise ConfigError(f"gateway.data_dir: {data_dir} is not a directory")


def _run_locked(config: GatewayConfig) -> None:
    # Imported here so keygen/verifier-key stay fast and need no FastAPI/uvicorn.
    from gateway.service import GatewayService  # noqa: PLC0415

    service = GatewayService(config)

    # request_stop() runs on the relay's thread, not in the handler: the main thread may
    # hold the queue's lock at the moment the signal lands (osutil.signals).
    with SignalRelay((signal.SIGTERM, signal.SIGINT), lambda _signum: service.request_stop(),
                     "gateway-signals"):
        try:
            service.start()
            service.run()
        finally:
            service.close()


if __name__ == "__main__":
    sys.exit(main())
