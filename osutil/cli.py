"""The conventions every edgeproof command line shares (docs/CLI.md), written once.

- exit codes: :data:`EXIT_OK` 0, :data:`EXIT_FAILED` 1 (a runtime failure),
  :data:`EXIT_USAGE` 2 (bad usage or configuration; argparse also exits 2),
  :data:`EXIT_INTERRUPTED` 130 (Ctrl-C, 128 + SIGINT), :data:`EXIT_BROKEN_PIPE` 141 (the
  reader of stdout went away, 128 + SIGPIPE, as a shell reports a process SIGPIPE killed);
- ``--version`` on every top-level parser: the installed package's version;
- ``--log-level`` takes ``debug``, ``info``, ``warning`` or ``error`` in any case.

- :func:`run_command`: a configuration error, any other failure and Ctrl-C each end in one
  line on stderr and their exit code, never a traceback; a closed stdout ends quietly.

Standard library and :mod:`protocol.errors` only, so a CLI's ``--help`` and ``--version``
stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from importlib import metadata

from protocol.errors import ConfigError, EdgeproofError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout's reader went away (`... | head -1`)

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


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run one command's ``body``; return its exit code, or the code of how it failed.

    A :class:`ConfigError` prints ``PROG: error: ...`` and gives :data:`EXIT_USAGE`, any
    other :class:`EdgeproofError` gives :data:`EXIT_FAILED`, and Ctrl-C (also before the
    command installed its own signal handling) prints ``PROG: interrupted`` and gives
    :data:`EXIT_INTERRUPTED`. When stdout's reader goes away (``| head -1``) the command
    stops quietly with :data:`EXIT_BROKEN_PIPE`: no traceback, no message (whoever closed
    the pipe wanted no more). Anything else is a bug and keeps its traceback.
    """
    try:
        try:
            code = body()
        finally:  # also after argparse's --help/--version, which end in SystemExit
            _flush_stdout()  # a broken pipe shows here, not at exit where nothing catches it
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EdgeproofError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


def _flush_stdout() -> None:
    """Flush stdout; BrokenPipeError passes, a stdout already closed is left alone."""
    with contextlib.suppress(ValueError):  # closed: nothing left to write
        sys.stdout.flush()


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit cannot fail on the
    broken pipe again (the recipe of the Python docs, "Note on SIGPIPE")."""
    with contextlib.suppress(OSError, ValueError):  # no real file descriptor (a test's
        devnull = os.open(os.devnull, os.O_WRONLY)  # captured stdout): nothing to redirect
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
