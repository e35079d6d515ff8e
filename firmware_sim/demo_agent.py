"""One demo device: the real agent (``agent.service``) over simulated hardware whose world
is set to an evening, so the TV comes on during a short demo and credit accrues.

    python -m firmware_sim.demo_agent --config FILE --state-dir DIR [--seed S] [--tv-on-in SECONDS]
                                      [--unsafe-assume-clock-synced]

Everything else is ``edgeproof-agent run --config FILE --simulate --state-dir DIR``: the
same config loader with the same precedence (flags, then ``EDGEPROOF_*`` variables such as
``EDGEPROOF_MQTT_PASSWORD_FILE``, then the file), the same service, outbox, uplink and
drivers. The only difference is the simulated world's clock: the simulated TV follows
evening viewing sessions (19:00-23:00 UTC), so a demo run at noon on real time would show
no usage at all. Here the world runs ``--tv-on-in`` seconds before the start of this
household's first session of the day, and on from there at real speed. Only the world
moves; the agent's own clocks (wall time in records, monotonic time for usage) are real.

``--unsafe-assume-clock-synced`` makes the agent treat the wall clock as synchronised when
the kernel says it is not (a container or laptop without NTP): a device whose clock is not
synchronised seals nothing to an owner's grants (docs/AGENT.md), so the demo's contract
story needs it there. It weakens a safety check, says so in a warning, and exists only
in this simulator, never in ``edgeproof-agent``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from agent.cli import run_config
from agent.clock import SystemClock
from agent.run import run_agent, setup_logging, stop_on_signals
from agent.service import ServiceOptions
from firmware_sim.hardware import TvSchedule
from firmware_sim.hardware.models import DAY_S
from protocol.errors import ConfigError, EdgeproofError

PROG = "edgeproof-sim demo-agent"


def world_offset_s(tv: TvSchedule, now_s: float, tv_on_in_s: float) -> float:
    """Return how far the world runs ahead of ``now_s`` (may be negative) so that this
    household's first TV session of the day starts ``tv_on_in_s`` seconds from now."""
    first_start = tv.sessions_on_day(int(now_s // DAY_S))[0][0]
    return first_start - tv_on_in_s - now_s


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run one demo device: the agent with simulated hardware "
        "whose world is set to an evening (the TV comes on after --tv-on-in seconds).")
    parser.add_argument("--config", type=Path, required=True, help="the agent's TOML config")
    parser.add_argument("--state-dir", help="device key, outbox and state (overrides config)")
    parser.add_argument("--seed", type=int, default=None, help="simulation seed")
    parser.add_argument("--tv-on-in", type=float, default=5.0, metavar="SECONDS",
                        help="when the simulated TV switches on (default 5)")
    parser.add_argument("--world-offset-s", type=float, default=None, metavar="SECONDS",
                        help="run the simulated world this far ahead of real time instead "
                        "(devices of one room share it, so they measure the same climate)")
    parser.add_argument("--unsafe-assume-clock-synced", action="store_true",
                        help="treat the wall clock as NTP-synchronised even when the kernel "
                        "says it is not (weakens grant expiry; simulation only)")
    return parser


class AssumedSyncedClock(SystemClock):
    """The system clocks, with the wall clock reported as synchronised (see the module doc)."""

    def wall_synced(self) -> bool:
        return True


def main(argv: list[str] | None = None) -> int:
    """Run the device until SIGTERM or SIGINT; return the exit code."""
    return run(argv, os.environ)


def run(argv: list[str] | None, environ: Mapping[str, str]) -> int:
    """:func:`main` with the environment passed in."""
    args = _parser().parse_args(argv)
    stop = threading.Event()
    stop_on_signals(stop, PROG)
    try:
        return _run(args, environ, stop)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except EdgeproofError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, environ: Mapping[str, str], stop: threading.Event) -> int:
    argv = ["--config", str(args.config), "--simulate"]
    argv += ["--state-dir", args.state_dir] if args.state_dir is not None else []
    argv += ["--seed", str(args.seed)] if args.seed is not None else []
    config = run_config(argv, environ)
    setup_logging(config.log_level)
    clock = SystemClock()
    if args.unsafe_assume_clock_synced and not clock.wall_synced():
        logging.getLogger(PROG).warning(
            "UNSAFE: the wall clock is not synchronised, and is treated as if it were "
            "(--unsafe-assume-clock-synced): grant periods are judged on an unproven clock")
        clock = AssumedSyncedClock()
    offset = args.world_offset_s
    if offset is None:
        offset = world_offset_s(TvSchedule(config.sim_seed), clock.wall_ms() / 1000,
                                args.tv_on_in)
    logging.getLogger(PROG).info("simulated world runs %+.0f s from real time", offset)
    options = ServiceOptions(environ=dict(environ),
                             world_wall_s=lambda: time.time() + offset)
    return run_agent(config, clock, options, stop)


if __name__ == "__main__":
    sys.exit(main())
