"""One demo device: the real agent (``agent.service``) over simulated hardware whose world
is set to an evening, so the TV comes on during a short demo and credit accrues.

    python -m firmware_sim.demo_agent --config FILE --state-dir DIR [--seed S] [--tv-on-in SECONDS]

Everything else is ``edgeproof-agent run --config FILE --simulate --state-dir DIR``: the
same config loader with the same precedence (flags, then ``EDGEPROOF_*`` variables such as
``EDGEPROOF_MQTT_PASSWORD_FILE``, then the file), the same service, outbox, uplink and
drivers. The only difference is the simulated world's clock: the simulated TV follows
evening viewing sessions (19:00-23:00 UTC), so a demo run at noon on real time would show
no usage at all. Here the world runs ``--tv-on-in`` seconds before the start of this
household's first session of the day, and on from there at real speed. Only the world
moves; the agent's own clocks (wall time in records, monotonic time for usage) are real.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from agent.cli import build_run_config
from agent.clock import SystemClock
from agent.identity import ensure_state_dir, load_identity
from agent.service import AgentService, ServiceOptions
from firmware_sim.hardware import SimulatedHardware, TvSchedule
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the device until SIGTERM or SIGINT; return the exit code."""
    return run(argv, os.environ)


def run(argv: list[str] | None, environ: Mapping[str, str]) -> int:
    """:func:`main` with the environment passed in."""
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        return _run(args, environ, stop)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except EdgeproofError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, environ: Mapping[str, str], stop: threading.Event) -> int:
    run_args = argparse.Namespace(config=args.config, simulate=True, state_dir=args.state_dir,
                                  broker=None, gateway_key=None, log_level=None, seed=args.seed)
    config = build_run_config(run_args, environ)
    logging.basicConfig(stream=sys.stdout, level=config.log_level.upper(),
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    ensure_state_dir(config.state_dir)
    load_identity(config.key_file)  # fail fast, before any hardware is touched
    clock = SystemClock()
    sim = SimulatedHardware(seed=config.sim_seed, state_dir=config.state_dir, clock=clock)
    offset = world_offset_s(sim.tv, clock.wall_ms() / 1000, args.tv_on_in)
    logging.getLogger(PROG).info("simulated world runs %+.0f s from real time", offset)
    options = ServiceOptions(environ=dict(environ),
                             world_wall_s=lambda: time.time() + offset)
    service = AgentService(config, clock, sim=sim, options=options)
    try:
        service.start()
        service.run(stop)
    finally:
        sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
