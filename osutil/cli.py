"""The conventions every edgeproof command line shares (docs/CLI.md), written once.

- exit codes: :data:`EXIT_OK` 0, :data:`EXIT_FAILED` 1 (a runtime failure),
  :data:`EXIT_USAGE` 2 (bad usage or configuration; argparse also exits 2),
  :data:`EXIT_INTERRUPTED` 130 (Ctrl-C, 128 + SIGINT);
- ``--version`` on every top-level parser: the installed package's version;
- ``--log-level`` takes ``debug``, ``info``, ``warning`` or ``error`` in any case.

Standard library only, so a CLI's ``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import argparse
from importlib import metadata

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

PACKAGE = "edgeproof"
LOG_LEVELS = ("debug", "info", "warning", "error")


def package_version() -> str:
    """The installed edgeproof version ("unknown" when run from a tree never installed)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def add_version(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` a ``--version`` that prints ``PROG VERSION`` and exits 0."""
    parser.add_argument("--version", action="version",
                        version=f"{parser.prog} {package_version()}",
                        help="print the version and exit")


def log_level(text: str) -> str:
    """argparse type for ``--log-level``: any case in, the lower-case name out.

    Raises argparse.ArgumentTypeError (a usage error, exit 2) for anything else.
    """
    value = text.strip().lower()
    if value not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"invalid log level {text!r} (choose from {', '.join(LOG_LEVELS)}; any case)")
    return value


def add_log_level(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """Add the shared ``--log-level LEVEL`` option (value lower-cased; see :func:`log_level`)."""
    shown = f" (default {default})" if default else ""
    parser.add_argument("--log-level", type=log_level, default=default, metavar="LEVEL",
                        help=f"{', '.join(LOG_LEVELS)}, any case{shown}")
