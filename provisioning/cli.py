"""``edgeproof-provision``: the operator's command line.

Thin by design: it parses arguments, calls the command group modules
(:mod:`provisioning.cmd_fleet`, :mod:`provisioning.cmd_device`) and turns an expected error
into one line on stderr and a non-zero exit code. Tests call :func:`main` with a list.
"""

from __future__ import annotations

import argparse

from osutil.cli import add_version, run_command
from provisioning import cmd_device, cmd_fleet, cmd_site

PROG = "edgeproof-provision"


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for every command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Provision an edgeproof fleet: gateway, broker, devices.",
        epilog="Every command names its fleet with --fleet FLEET_DIR. Exit status: 0 ok, "
        "1 runtime failure, 2 usage or configuration error, 130 interrupted (docs/CLI.md).")
    add_version(parser)
    groups = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cmd_fleet.add_commands(groups)
    cmd_device.add_commands(groups)
    cmd_site.add_commands(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code (0 ok, 1 failure, 2 usage or configuration,
    130 interrupted; docs/CLI.md)."""
    return run_command(PROG, lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
