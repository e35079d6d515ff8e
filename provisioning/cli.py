"""``edgeproof-provision``: the operator's command line.

Thin by design: it parses arguments, calls the command group modules
(:mod:`provisioning.cmd_fleet`, :mod:`provisioning.cmd_device`) and turns an expected error
into one line on stderr and a non-zero exit code. Tests call :func:`main` with a list.
"""

from __future__ import annotations

import argparse
import sys

from protocol.errors import EdgeproofError
from provisioning import cmd_device, cmd_fleet

PROG = "edgeproof-provision"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for every command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Provision an edgeproof fleet: gateway, broker, devices.")
    groups = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cmd_fleet.add_commands(groups)
    cmd_device.add_commands(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code (0 on success, 1 on a failure, 2 on bad usage)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the command's own handling: one line, no trace
        print("edgeproof-provision: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except EdgeproofError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
