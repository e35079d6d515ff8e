"""The agent with a wall clock a test can step: ``python -m tests.harness.testbed_agent``.

The agent has no flag to shift its wall clock (a real device gets its time from the
kernel), but a fault test needs a Pi's clock jumping backwards after a power cut or
forwards when NTP steps it. This runner builds the agent exactly as ``edgeproof-agent run``
does (:func:`agent.cli.run_config`, then :func:`agent.run.run_agent`), except that
the clock it injects is a :class:`ShiftedClock`: the system clocks plus a wall-clock offset
read from a small JSON file, ``{"offset_ms": -86400000, "synced": false}``. The file is
read at start and again on every SIGUSR1, so a running agent's clock jumps at once. The
monotonic clock is never shifted (it cannot jump on a real device either), and the
simulated world keeps true time (a TV schedule does not follow a wrong clock).

Usage: ``python -m tests.harness.testbed_agent --clock-file FILE -- <edgeproof-agent run args>``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from agent.cli import run_config
from agent.clock import SystemClock
from agent.run import run_agent, setup_logging, stop_on_signals
from agent.service import ServiceOptions
from osutil.signals import SignalRelay
from protocol.errors import ConfigError, EdgeproofError


class ShiftedClock(SystemClock):
    """The system clocks with the wall clock moved by ``offset_ms`` (and its sync state)."""

    def __init__(self, control: Path) -> None:
        super().__init__()
        self.control = control
        self.offset_ms = 0
        self.synced: bool | None = None  # None: ask the kernel
        self.reload()

    def reload(self) -> None:
        """Read the control file (a missing or bad file means no offset)."""
        try:
            data = json.loads(self.control.read_text(encoding="utf-8"))
            self.offset_ms = int(data.get("offset_ms", 0))
            synced = data.get("synced")
            self.synced = None if synced is None else bool(synced)
        except (OSError, ValueError, AttributeError):
            self.offset_ms, self.synced = 0, None

    def wall_ms(self) -> int:
        return super().wall_ms() + self.offset_ms

    def wall_synced(self) -> bool:
        return super().wall_synced() if self.synced is None else self.synced


def write_clock_file(path: Path, offset_ms: int, synced: bool | None) -> None:
    """Atomically write the control file a :class:`ShiftedClock` reads."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"offset_ms": offset_ms, "synced": synced}), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Run the agent with a shifted clock; return its exit code (as ``edgeproof-agent``)."""
    parser = argparse.ArgumentParser(prog="testbed-agent", description=__doc__.split("\n")[0])
    parser.add_argument("--clock-file", type=Path, required=True)
    parser.add_argument("agent_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    stop = threading.Event()
    stop_on_signals(stop, "testbed-agent")
    clock = ShiftedClock(args.clock_file)

    def on_usr1(_signum: int) -> None:
        clock.reload()
        logging.getLogger("testbed-agent").warning(
            "wall clock now offset by %d ms (synced: %s)", clock.offset_ms, clock.synced)

    SignalRelay((signal.SIGUSR1,), on_usr1, "testbed-clock").install()
    try:
        config = run_config([a for a in args.agent_args if a != "--"], os.environ)
        setup_logging(config.log_level)
        # The world keeps true time: give it the unshifted clocks.
        options = ServiceOptions(environ=dict(os.environ), world_wall_s=time.time)
        return run_agent(config, clock, options, stop, world_clock=SystemClock())
    except ConfigError as exc:
        print(f"testbed-agent: error: {exc}", file=sys.stderr)
        return 2
    except EdgeproofError as exc:
        print(f"testbed-agent: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
